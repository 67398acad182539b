"""Progress of an invoker's items: a tqdm bar, or log lines without tqdm."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["InvokeProgress", "invoke_progress"]

_log = logging.getLogger(__name__)

#: Least seconds between two log lines when progress is logged.
LOG_INTERVAL = 5.0


class InvokeProgress:
    """Counts finished items; shows a tqdm bar or logs the count.

    Thread-safe: invokers update it from the thread that collects results.

    Parameters
    ----------
    logger : str or logging.Logger, optional
        Where progress goes without a bar (default: this module's logger).
        First, as in LensKit's ``invoke_progress(logger, label, total, unit)``.
    label : str, optional
        What is counted (the bar's description).
    total : int, optional
        Items expected; an invoker sets it from its input's length when unset.
    unit : str, optional
        Default ``"items"``.
    bar : bool, optional
        ``True`` requires tqdm, ``False`` logs, ``None`` (default) uses tqdm
        when it is installed.

    Attributes
    ----------
    n : int
        Items finished so far.
    total : int or None
        Items expected.
    tqdm : tqdm.tqdm or None
        The bar, when one is shown.
    """

    def __init__(
        self,
        logger: str | logging.Logger | None = None,
        label: str | None = None,
        total: int | None = None,
        unit: str | None = None,
        *,
        bar: bool | None = None,
    ) -> None:
        self.label = label or "progress"
        self.unit = unit or "items"
        unit = self.unit
        self.n = 0
        self.total = total
        self.tqdm = _make_bar(self.label, total, unit, bar)
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        self._logger = logger or _log
        self._lock = threading.Lock()
        self._last_log = time.monotonic()
        self._closed = False

    def set_label(self, label: str | None) -> None:
        """Change what is counted (progress_api's method)."""
        with self._lock:
            self.label = label or "progress"
            if self.tqdm is not None:
                self.tqdm.set_description(self.label, refresh=True)

    def set_total(self, total: int) -> None:
        """Set the number of items expected."""
        with self._lock:
            self.total = total
            if self.tqdm is not None:
                self.tqdm.total = total
                self.tqdm.refresh()

    def update(self, n: int = 1, state: str | None = None, src_state=None) -> None:
        """Count ``n`` more finished items.

        ``state``/``src_state`` are accepted for LensKit (progress_api) callers;
        only items reaching ``"finished"`` (or no state) are counted.
        """
        if state is not None and state != "finished":
            return
        with self._lock:
            self.n += n
            if self.tqdm is not None:
                self.tqdm.update(n)
            elif time.monotonic() - self._last_log >= LOG_INTERVAL:
                self._log_count("")

    def close(self) -> None:
        """Close the bar, or log the final count (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.tqdm is not None:
                self.tqdm.close()
            else:
                self._log_count(" (done)")

    def finish(self) -> None:
        """Same as :meth:`close` (progress_api's name, used by LensKit)."""
        self.close()

    def _log_count(self, suffix: str) -> None:
        self._last_log = time.monotonic()
        of = "" if self.total is None else f"/{self.total}"
        self._logger.info("%s: %d%s %s%s", self.label, self.n, of, self.unit, suffix)

    def __enter__(self) -> InvokeProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _make_bar(label: str, total: int | None, unit: str, bar: bool | None):
    if bar is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        if bar:
            raise ImportError(
                'a progress bar needs tqdm: pip install "budgeted[lenskit]"'
            ) from None
        return None
    return tqdm(desc=label, total=total, unit=unit, leave=False)


def invoke_progress(
    logger: str | logging.Logger | None = None,
    label: str | None = None,
    total: int | None = None,
    unit: str | None = None,
    *,
    bar: bool | None = None,
) -> InvokeProgress:
    """Create a progress counter to pass to :func:`invoker` (``progress=``).

    Parameters
    ----------
    label, total, unit, logger, bar
        See :class:`InvokeProgress`; the order is LensKit's.

    Returns
    -------
    InvokeProgress
        Close it (or use it in a ``with`` block) when done.
    """
    return InvokeProgress(logger, label, total, unit, bar=bar)
