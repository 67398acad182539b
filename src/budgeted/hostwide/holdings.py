"""Holdings records: who holds how many jobserver bytes, and refilling the dead's.

Beside a ``budgeted run`` fifo (:mod:`budgeted.hostwide.server`), or in a
folder a budgeted program gives its workers, each jobserver client keeps a
file, locked for as long as the client lives, with the number of bytes it
holds. The kernel drops the lock of a client that dies, so a record whose lock
is free belongs to a dead client: :func:`refill_from_dead` writes its bytes
back into the jobserver and removes it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = [
    "HOLDERS_DIR",
    "IMPLICIT_LOCK",
    "SERVER_PREFIX",
    "HoldingsRecord",
    "refill_from_dead",
]

#: The folder, beside a ``budgeted run`` fifo, of the clients' holdings records.
HOLDERS_DIR = "holders"
#: How the folder of a ``budgeted run`` fifo is named.
SERVER_PREFIX = "budgeted-jobserver-"
#: The file, beside a ``budgeted run`` fifo, whose lock is CMD's implicit CPU.
IMPLICIT_LOCK = "implicit"


class HoldingsRecord:
    """A locked file saying how many bytes this process holds (for the server)."""

    def __init__(self, folder: Path) -> None:
        final = folder / f"{os.getpid()}-{os.urandom(4).hex()}"
        temporary = folder / f".{final.name}"
        self.fd = os.open(
            temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.rename(temporary, final)  # appears already locked: never looks dead
        self.path = final

    def write(self, count: int) -> None:
        os.pwrite(self.fd, b"%8d" % count, 0)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def refill_from_dead(holders: Path, write_fd: int) -> int:
    """Write back the bytes of clients that died; return how many.

    A record whose lock is free belongs to a client that is gone (the kernel
    dropped its lock); its count of bytes is written back and it is removed.
    """
    refilled = 0
    for record in holders.iterdir():
        if record.name.startswith("."):
            continue  # still being created, and locked already
        try:
            fd = os.open(record, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # its client closed it just now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # alive
        count = int(os.pread(fd, 16, 0).strip() or 0)
        record.unlink(missing_ok=True)
        os.close(fd)
        if count:
            os.write(write_fd, b"+" * count)
        refilled += count
    return refilled
