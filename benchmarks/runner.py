"""Run workloads under every variant, interleaved per repeat.

Each variant runs in its own :class:`~benchmarks.timed_child.TimedChild`
process, kept for the whole benchmark so its executor stays warm. For one
workload: every child builds the inputs (untimed), then ``warmup`` untimed
rounds start executors and load libraries (loky's start-up is not what is
measured), then ``repeats`` timed rounds, each running the variants one after
the other (round-robin), so machine noise is spread over all of them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .common import Timing
from .timed_child import ChildFailed, ChildHung, TimedChild
from .workloads import get_workload

__all__ = ["RunSettings", "run_workloads"]


@dataclass(frozen=True)
class RunSettings:
    """How long and how big.

    Attributes
    ----------
    scale : float
        Workload size factor (1: full size, 0.5-3 s sequentially on 2 cores).
    repeats : int
        Timed rounds per workload.
    warmup : int
        Untimed rounds before them.
    time_limit : float or None
        Seconds a single run may take before its child is declared hung.
        None: ``max(min_limit, limit_factor * slowest run so far)`` within the
        workload (``warmup_limit`` instead of ``min_limit`` in warm-up rounds,
        where fresh workers import their libraries; ``first_limit`` before any
        run finished).
    variants : tuple of str or None
        Run only these variants (None: each workload's own list).
    idle_limit : float or None
        A run whose child and descendants use no CPU this long is hung too
        (a fork-after-OpenMP deadlock sits at 0 % CPU); None: no such check.
    """

    scale: float = 1.0
    repeats: int = 5
    warmup: int = 1
    time_limit: float | None = None
    variants: tuple[str, ...] | None = None
    idle_limit: float | None = 15.0
    min_limit: float = 10.0
    warmup_limit: float = 120.0
    limit_factor: float = 5.0
    first_limit: float = 300.0


def run_workloads(
    names: Sequence[str],
    settings: RunSettings,
    on_result: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Run each named workload; return one result dict per workload.

    ``on_result(results_so_far)`` is called after each workload (e.g. to save
    partial results of a long run).
    """
    children: dict[str, TimedChild] = {}
    results = []
    try:
        for index, name in enumerate(names, 1):
            workload = get_workload(name)
            variants = _selected_variants(workload.variants, settings.variants)
            _progress(
                f"[{index}/{len(names)}] {name}: {workload.describe(settings.scale)}"
            )
            start = time.perf_counter()
            timings = _run_one(name, variants, settings, children)
            _progress(f"    done in {time.perf_counter() - start:.0f} s")
            results.append(_result(workload, timings, settings))
            if on_result is not None:
                on_result(results)
    finally:
        for child in children.values():
            child.ask_to_quit()  # all at once: they exit in parallel
        for child in children.values():
            child.close()
    return results


def _selected_variants(own: Sequence[str], chosen: Sequence[str] | None) -> list[str]:
    return [v for v in own if chosen is None or v in chosen]


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _result(workload, timings: list[Timing], settings: RunSettings) -> dict:
    return {
        "name": workload.name,
        "title": workload.describe(settings.scale),
        "scale": settings.scale,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "timings": timings,
    }


def _run_one(
    name: str, variants: list[str], settings: RunSettings, children: dict
) -> list[Timing]:
    timings = {v: Timing(v) for v in variants}
    for variant in variants:
        if variant not in children or not children[variant].alive:
            children[variant] = TimedChild(variant)  # all start at once
    for variant in variants:
        _guarded(timings[variant], children, None, 0, settings)
        _guarded(timings[variant], children, _setup(name, settings), 600, settings)
    observed: list[float] = []
    for round_ in range(settings.warmup + settings.repeats):
        for variant in variants:
            limit = _time_limit(settings, observed, warm=round_ < settings.warmup)
            run = {"cmd": "run"}
            answer = _guarded(timings[variant], children, run, limit, settings)
            if answer is not None:
                observed.append(answer["seconds"])
                if round_ >= settings.warmup:
                    timings[variant].times.append(answer["seconds"])
    return [timings[v] for v in variants]


def _setup(name: str, settings: RunSettings) -> dict:
    return {"cmd": "setup", "workload": name, "scale": settings.scale}


def _time_limit(settings: RunSettings, observed: list[float], warm: bool) -> float:
    """Warm-up runs import libraries in fresh workers: they get more time."""
    if settings.time_limit is not None:
        return settings.time_limit
    if not observed:
        return settings.first_limit
    lowest = settings.warmup_limit if warm else settings.min_limit
    return max(lowest, settings.limit_factor * max(observed))


def _guarded(
    timing: Timing,
    children: dict,
    message: dict | None,
    timeout: float,
    settings: RunSettings,
) -> dict | None:
    """Send ``message`` (None: wait until ready) unless the variant failed."""
    if "status" in timing.extra:
        return None
    child = children[timing.label]
    try:
        if message is None:
            child.wait_ready()
            return None
        return child.request(message, timeout, idle_timeout=settings.idle_limit)
    except ChildHung as exc:
        _fail(timing, "hung", str(exc), child)
    except ChildFailed as exc:
        _fail(timing, "error", str(exc), child)
    return None


def _fail(timing: Timing, status: str, detail: str, child: TimedChild) -> None:
    timing.extra.update(
        status=status,
        detail=detail,
        completed_times=list(timing.times),
        removed_leftovers=[str(p) for p in child.removed],
    )
    timing.times.clear()
    _progress(f"    {timing.label}: {status}: {detail.splitlines()[0]}")
