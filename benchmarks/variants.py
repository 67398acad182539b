"""The variants: how a workload is run (which joblib backend, which mode).

Each variant is applied with :func:`joblib.parallel_config` around one run,
in a process of its own (see :mod:`benchmarks.child`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

from .common import lookup

__all__ = ["VARIANTS", "Variant", "get_variant"]


@dataclass(frozen=True)
class Variant:
    """One way of running a workload.

    Attributes
    ----------
    name : str
        Label in tables, JSON and the plot.
    backend : str
        joblib backend name given to ``parallel_config``.
    prefer : str or None
        ``prefer`` hint given to ``parallel_config``.
    omp_threads_per_task : int or None
        When set, the workload limits OpenMP to this many threads inside each
        task by hand (threadpoolctl): the physical target of thread mode.
    description : str
        What the variant is, for the README and the results page.
    """

    name: str
    backend: str
    prefer: str | None = None
    omp_threads_per_task: int | None = None
    description: str = ""

    def config(self) -> AbstractContextManager:
        """The ``parallel_config`` context that selects this variant."""
        from joblib import parallel_config

        if self.backend == "budgeted":
            import budgeted  # noqa: F401  (registers the backend)
        kwargs = {} if self.prefer is None else {"prefer": self.prefer}
        return parallel_config(backend=self.backend, **kwargs)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("sequential", "sequential", description="no joblib workers"),
        Variant("loky", "loky", description="joblib's default process backend"),
        Variant("threading", "threading", description="joblib threads, pools as-is"),
        Variant(
            "multiprocessing",
            "multiprocessing",
            description="joblib's fork-based pool (may hang after OpenMP)",
        ),
        Variant("budgeted", "budgeted", description="budgeted, process mode"),
        Variant(
            "budgeted-threads",
            "budgeted",
            prefer="threads",
            description='budgeted, thread mode (prefer="threads")',
        ),
        Variant(
            "threading-omp1",
            "threading",
            omp_threads_per_task=1,
            description="joblib threads, each limited to 1 OpenMP thread by hand",
        ),
    )
}


def get_variant(name: str) -> Variant:
    """Return the variant called ``name`` (a :class:`ValueError` if unknown)."""
    return lookup(VARIANTS, name, "variant")
