"""What ``MAKEFLAGS`` says about a jobserver: pure parsing, no file descriptors.

GNU make hands its jobserver to recipes through ``MAKEFLAGS`` (cargo through
``CARGO_MAKEFLAGS``; ``MFLAGS`` is make's older spelling)::

    MAKEFLAGS=" -j3 --jobserver-auth=3,4"           make 4.2 / 4.3: pipe R,W
    MAKEFLAGS="n -j3 --jobserver-fds=3,4"           make 4.1 and older, dry run
    MAKEFLAGS="-j4 --jobserver-auth=fifo:/tmp/GMf"  make 4.4+: a named pipe

The first variable that is set and names a jobserver is used. Within it the
last ``--jobserver-auth``/``--jobserver-fds`` wins; a negative descriptor
disables the jobserver; a first word without a leading ``-`` holds make's
single-letter flags, and an ``n`` there is a dry run (``make -n``), in which
no jobserver is used. Everything after a ``--`` word is variable assignments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MAKEFLAGS_VARIABLES",
    "JobserverAuth",
    "MakeFlags",
    "find_jobserver",
    "parse_makeflags",
]

MAKEFLAGS_VARIABLES = ("MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS")
_AUTH_OPTIONS = ("--jobserver-auth=", "--jobserver-fds=")


@dataclass(frozen=True)
class JobserverAuth:
    """A jobserver named in a make flags variable.

    Attributes
    ----------
    variable : str
        Where it was found (``"MAKEFLAGS"``, ...).
    style : str
        ``"fifo"`` (``path`` is set) or ``"pipe"`` (``read_fd``/``write_fd``).
    jobs : int or None
        make's ``-jN``, when the flags carry it.
    """

    variable: str
    style: str
    path: str | None = None
    read_fd: int | None = None
    write_fd: int | None = None
    jobs: int | None = None

    def where(self) -> str:
        """``fifo:PATH`` or ``R,W``, as make writes it."""
        if self.style == "fifo":
            return f"fifo:{self.path}"
        return f"{self.read_fd},{self.write_fd}"


@dataclass(frozen=True)
class MakeFlags:
    """What one flags variable says: the auth value, ``-j``, dry run."""

    auth: str | None
    jobs: int | None
    dry_run: bool


def _words(text: str) -> list[str]:
    words = text.split()
    return words[: words.index("--")] if "--" in words else words


def _jobs(words: list[str]) -> int | None:
    """The last ``-jN``, ``-j N`` or ``--jobs=N`` (None: absent or unlimited)."""
    jobs = None
    for i, word in enumerate(words):
        if word.startswith("--jobs="):
            value = word[len("--jobs=") :]
        elif word.startswith("-j") and not word.startswith("--"):
            value = word[2:] or (words[i + 1] if i + 1 < len(words) else "")
        else:
            continue
        jobs = int(value) if value.isdigit() and int(value) > 0 else None
    return jobs


def parse_makeflags(text: str) -> MakeFlags:
    """Parse one flags variable.

    >>> parse_makeflags(" -j3 --jobserver-auth=3,4")
    MakeFlags(auth='3,4', jobs=3, dry_run=False)
    >>> parse_makeflags("kn --jobserver-fds=5,6 --jobserver-auth=fifo:/t/f").auth
    'fifo:/t/f'
    >>> parse_makeflags("n -j2").dry_run
    True
    """
    words = _words(text)
    auth = None
    for word in words:
        for option in _AUTH_OPTIONS:
            if word.startswith(option):
                auth = word[len(option) :]
    dry_run = bool(words) and not words[0].startswith("-") and "n" in words[0]
    return MakeFlags(auth=auth, jobs=_jobs(words), dry_run=dry_run)


def _auth(variable: str, value: str, jobs: int | None) -> JobserverAuth | None:
    """A :class:`JobserverAuth` from an auth value; None when it is disabled.

    Raises
    ------
    ValueError
        When the value is neither ``fifo:PATH`` nor two integers.
    """
    if value.startswith("fifo:"):
        path = value[len("fifo:") :]
        if not path:
            raise ValueError(f"{variable}: --jobserver-auth=fifo: names no path")
        return JobserverAuth(variable, "fifo", path=path, jobs=jobs)
    read, _, write = value.partition(",")
    try:
        read_fd, write_fd = int(read), int(write)
    except ValueError:
        msg = f"{variable}: jobserver {value!r} is neither 'fifo:PATH' nor 'R,W'"
        raise ValueError(msg) from None
    if read_fd < 0 or write_fd < 0:
        return None
    return JobserverAuth(
        variable, "pipe", read_fd=read_fd, write_fd=write_fd, jobs=jobs
    )


def find_jobserver(environ: Mapping[str, str]) -> JobserverAuth | None:
    """The jobserver the environment names, or None.

    The first of :data:`MAKEFLAGS_VARIABLES` that names a jobserver decides;
    a dry run or a negative descriptor there means no jobserver.

    Raises
    ------
    ValueError
        When the auth value cannot be parsed (the message names the variable).
    """
    for variable in MAKEFLAGS_VARIABLES:
        flags = parse_makeflags(environ.get(variable, ""))
        if flags.auth is None:
            continue
        if flags.dry_run:
            return None
        return _auth(variable, flags.auth, flags.jobs)
    return None
