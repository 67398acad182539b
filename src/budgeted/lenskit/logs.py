"""Log records emitted in worker processes, handled by the parent's loggers.

::

    worker process                              parent process
    ──────────────                              ──────────────
    root logger                                 LogForwarder
      └ QueueHandler ── record (message           Listener (AF_UNIX, authkey)
        over a Client     formatted, PID) ──>     one reader thread per worker
        connection                                  └> getLogger(record.name)
                                                       .handle(record)

A :class:`multiprocessing.connection.Listener` rather than a
``Manager().Queue()``: no extra server process, nothing that re-imports the
caller's ``__main__`` under ``spawn``, and only a small picklable
:class:`LogSetup` travels in the pool's ``initargs``. Workers take the
parent's logger levels (as they were when the pool started), so they send
only what the parent would emit; records keep the worker's ``process`` (PID)
and ``processName``, and the parent's handlers decide the rest.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import secrets
import socket
import threading
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener

__all__ = ["LogForwarder", "LogSetup", "install_worker_handler"]

#: A family whose address a raw socket can reach (see :func:`_wake`).
_FAMILY = "AF_UNIX" if hasattr(socket, "AF_UNIX") else "AF_INET"
#: How long closing waits for each reader thread to drain its worker.
JOIN_TIMEOUT = 10.0


@dataclass(frozen=True)
class LogSetup:
    """What a worker needs to send its records to the parent.

    Attributes
    ----------
    address : str
        Address of the parent's listener.
    authkey : bytes
        Key the connection is authenticated with.
    levels : dict of str to int
        The level of the parent's root logger (``""``) and of every logger
        given one, when the pool started: workers emit what the parent would.
    """

    address: str
    authkey: bytes
    levels: dict[str, int]


class LogForwarder:
    """Receive workers' log records and hand them to this process's loggers.

    Use :attr:`setup` in the workers (:func:`install_worker_handler`), and
    :meth:`close` after the workers have exited: every record they sent is
    handled before it returns.
    """

    def __init__(self) -> None:
        self._authkey = secrets.token_bytes(32)
        self._listener = Listener(family=_FAMILY, authkey=self._authkey)
        self.setup = LogSetup(self._listener.address, self._authkey, _levels())
        self._closing = False
        self._readers: list[threading.Thread] = []
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="budgeted-lenskit-logs", daemon=True
        )
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn = self._listener.accept()
            except Exception:  # a peer failed the handshake, or the wake-up
                continue
            reader = threading.Thread(target=_serve, args=(conn,), daemon=True)
            reader.start()
            self._readers.append(reader)

    def close(self) -> None:
        """Stop accepting, then wait for the readers to drain (idempotent)."""
        if self._closing:
            return
        self._closing = True
        _wake(self.setup.address)
        self._acceptor.join(JOIN_TIMEOUT)
        self._listener.close()
        for reader in self._readers:
            reader.join(JOIN_TIMEOUT)


def _wake(address) -> None:
    """Unblock ``accept()`` with a raw connection that fails the handshake.

    A raw socket, not a :func:`~multiprocessing.connection.Client`: a client's
    handshake would wait forever if the acceptor had already stopped.
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family) as sock:
        sock.connect(address)


def _serve(conn: Connection) -> None:
    """Handle every record sent on ``conn`` until the worker disconnects."""
    with conn:
        while True:
            try:
                fields = conn.recv()
            except (EOFError, OSError):
                return
            handle_record(logging.makeLogRecord(fields))


def handle_record(record: logging.LogRecord) -> None:
    """Hand a record to the logger it was emitted on, if it is enabled there."""
    name = record.name
    logger = logging.getLogger(None if name == "root" else name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def _levels() -> dict[str, int]:
    """The root logger's level and every level set on a named logger."""
    levels = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


class _ConnectionQueue:
    """The ``put_nowait`` a QueueHandler needs, sending over a connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def put_nowait(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._conn.send(dict(record.__dict__))


def install_worker_handler(setup: LogSetup) -> logging.Handler:
    """In a worker: copy the parent's levels, send the root's records to it.

    Parameters
    ----------
    setup : LogSetup

    Returns
    -------
    logging.Handler
        The handler added to the root logger.
    """
    conn = Client(setup.address, authkey=setup.authkey)
    handler = logging.handlers.QueueHandler(_ConnectionQueue(conn))
    for name, level in setup.levels.items():
        logging.getLogger(name or None).setLevel(level)
    logging.getLogger().addHandler(handler)
    return handler
