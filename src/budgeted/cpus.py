"""How many CPUs this process may really use.

The answer is the smallest of several independent limits::

    os.cpu_count() ─────────┐
    CPU affinity mask ──────┤
    cgroup v2 cpu.max ──────┼──> min ──> max(1, .) ──> usable_cpus()
    cgroup v1 CFS quota ────┤
    LOKY_MAX_CPU_COUNT ─────┘

Unlike loky, the cgroup quota is read for *this process's own* cgroup (from
``/proc/self/cgroup``) and for each of its ancestors, since a parent group's
quota also binds its children. Fractional quotas are rounded up, as loky does.
Every file system path is a parameter so tests can use fake cgroup trees.
The real tree's reading is reused for :data:`CGROUP_TTL` seconds: every
budgeted ``Parallel`` call asks, and reading it costs about 0.3 ms.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .budget import positive_int_from_env

__all__ = ["CpuLimits", "cpu_limits", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
MAX_CPU_COUNT_VAR = "LOKY_MAX_CPU_COUNT"
# Directory names under which cgroup v1 mounts the CPU controller.
_V1_CPU_MOUNTS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")
#: Seconds a reading of the real cgroup tree is reused (quotas change only
#: when the container is resized).
CGROUP_TTL = 1.0
_cgroup_reading: tuple[float, int | None] | None = None
_cgroup_lock = threading.Lock()


@dataclass(frozen=True)
class CpuLimits:
    """Each limit on the CPUs this process may use (``None`` where absent).

    Attributes
    ----------
    cpu_count : int
        CPUs in the machine, from :func:`os.cpu_count`.
    affinity : int or None
        CPUs in this process's affinity mask.
    cgroup : int or None
        CPU quota of this process's cgroup (v2 or v1), rounded up.
    env : int or None
        Value of ``LOKY_MAX_CPU_COUNT``.
    """

    cpu_count: int
    affinity: int | None
    cgroup: int | None
    env: int | None

    def as_dict(self) -> dict[str, int | None]:
        """Return the limits by name, in the order they are checked."""
        return {
            "cpu_count": self.cpu_count,
            "affinity": self.affinity,
            "cgroup": self.cgroup,
            "env": self.env,
        }

    @property
    def usable(self) -> int:
        """The smallest limit, never below 1."""
        present = [v for v in self.as_dict().values() if v is not None]
        return max(1, min(present))

    @property
    def limited_by(self) -> str:
        """Name of the limit that sets :attr:`usable` (the first on ties)."""
        for name, value in self.as_dict().items():
            if value is not None and max(1, value) == self.usable:
                return name
        return "cpu_count"  # pragma: no cover - usable always matches one


def cpu_limits(
    *,
    cgroup_root: str | os.PathLike = CGROUP_ROOT,
    proc_self_cgroup: str | os.PathLike = PROC_SELF_CGROUP,
    environ: Mapping[str, str] | None = None,
) -> CpuLimits:
    """Read every limit on the CPUs this process may use.

    Parameters
    ----------
    cgroup_root : path-like, default="/sys/fs/cgroup"
        Where the cgroup file systems are mounted.
    proc_self_cgroup : path-like, default="/proc/self/cgroup"
        The file naming this process's cgroups.
    environ : mapping, optional
        Environment to read ``LOKY_MAX_CPU_COUNT`` from (default: ``os.environ``).

    Returns
    -------
    CpuLimits
    """
    environ = os.environ if environ is None else environ
    root, proc_self_cgroup = Path(cgroup_root), Path(proc_self_cgroup)
    if (root, proc_self_cgroup) == (CGROUP_ROOT, PROC_SELF_CGROUP):
        cgroup = _real_cgroup_cpus()
    else:
        cgroup = _cgroup_cpus(root, proc_self_cgroup)
    return CpuLimits(
        cpu_count=os.cpu_count() or 1,
        affinity=_affinity_cpus(),
        cgroup=cgroup,
        env=_env_cpus(environ),
    )


def _cgroup_cpus(root: Path, proc_self_cgroup: Path) -> int | None:
    """The tightest cgroup v1 or v2 quota on this process, in CPUs."""
    own_paths = _own_cgroup_paths(proc_self_cgroup)
    return _min_or_none(
        _cgroup_v2_cpus(root, own_paths.get("")),
        _cgroup_v1_cpus(root, own_paths.get("cpu")),
    )


def _real_cgroup_cpus() -> int | None:
    """:func:`_cgroup_cpus` of the real tree, re-read every :data:`CGROUP_TTL` s."""
    global _cgroup_reading
    with _cgroup_lock:
        now = time.monotonic()
        if _cgroup_reading is None or now - _cgroup_reading[0] > CGROUP_TTL:
            _cgroup_reading = (now, _cgroup_cpus(CGROUP_ROOT, PROC_SELF_CGROUP))
        return _cgroup_reading[1]


def usable_cpus(**kwargs) -> int:
    """Return the number of CPUs this process may really use (at least 1).

    Parameters
    ----------
    **kwargs
        Passed to :func:`cpu_limits` (fake cgroup trees, environment).

    Returns
    -------
    int
    """
    return cpu_limits(**kwargs).usable


def _min_or_none(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _affinity_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return None


def _env_cpus(environ: Mapping[str, str]) -> int | None:
    return positive_int_from_env(environ, MAX_CPU_COUNT_VAR)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _own_cgroup_paths(proc_self_cgroup: Path) -> dict[str, str]:
    """Map each controller (``""`` for the v2 unified tree) to this process's path."""
    paths: dict[str, str] = {}
    for line in (_read_text(proc_self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(","):
            paths.setdefault(controller, path)
    return paths


def _own_and_ancestor_dirs(mount: Path, own_path: str | None) -> list[Path]:
    """The cgroup directory of this process and each ancestor up to the mount.

    Inside a container without a cgroup namespace the path named in
    ``/proc/self/cgroup`` may not exist under the mount: only the mount itself
    is then read.
    """
    relative = Path((own_path or "/").lstrip("/"))
    dirs = [mount / relative, *(mount / p for p in relative.parents)]
    return [d for d in dirs if d.is_dir()] or [mount]


def _quota_cpus(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return math.ceil(quota / period)


def _parse_cpu_max(text: str) -> int | None:
    """Parse cgroup v2 ``cpu.max`` ("max 100000" or "150000 100000")."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        period = int(fields[1]) if len(fields) > 1 else 100_000
        return _quota_cpus(int(fields[0]), period)
    except ValueError:
        return None


def _cgroup_v2_cpus(root: Path, own_path: str | None) -> int | None:
    # Pure v2 mounts at the root; hybrid hosts mount it at <root>/unified.
    mount = next(
        (m for m in (root, root / "unified") if (m / "cgroup.controllers").exists()),
        None,
    )
    if own_path is None or mount is None:
        return None
    limits = (
        _parse_cpu_max(_read_text(d / "cpu.max") or "max")
        for d in _own_and_ancestor_dirs(mount, own_path)
    )
    return _min_or_none(*limits)


def _cgroup_v1_cpus(root: Path, own_path: str | None) -> int | None:
    mount = next((root / m for m in _V1_CPU_MOUNTS if (root / m).is_dir()), None)
    if mount is None:
        return None
    limits = []
    for directory in _own_and_ancestor_dirs(mount, own_path):
        quota = _read_text(directory / "cpu.cfs_quota_us")
        period = _read_text(directory / "cpu.cfs_period_us")
        try:
            limits.append(_quota_cpus(int(quota or -1), int(period or -1)))
        except ValueError:
            continue
    return _min_or_none(*limits)
