"""The budget arithmetic, with no processes at all."""

import pytest

from budgeted.budget import check_n_cpus, effective_n_jobs, split_budget, task_budget


@pytest.mark.parametrize(
    "n_cpus, n_jobs, expected",
    [
        (16, 6, (3, 3, 3, 3, 2, 2)),
        (2, 8, (1,) * 8),
        (2, 2, (1, 1)),
        (7, 3, (3, 2, 2)),
        (8, 1, (8,)),
        (1, 1, (1,)),
    ],
)
def test_split_budget_spreads_the_remainder(n_cpus, n_jobs, expected):
    assert split_budget(n_cpus, n_jobs) == expected


@pytest.mark.parametrize("n_cpus", range(1, 40))
@pytest.mark.parametrize("n_jobs", range(1, 12))
def test_split_budget_uses_every_cpu_and_never_more(n_cpus, n_jobs):
    budgets = split_budget(n_cpus, n_jobs)
    assert len(budgets) == n_jobs
    assert min(budgets) >= 1
    assert max(budgets) - min(budgets) <= 1
    assert sum(budgets) == max(n_cpus, n_jobs)


@pytest.mark.parametrize("bad", [0, -3, 1.5, "4", None, True])
def test_check_n_cpus_names_the_bad_value(bad):
    with pytest.raises(ValueError, match="n_cpus"):
        check_n_cpus(bad)


@pytest.mark.parametrize(
    "n_jobs, n_cpus, expected",
    [(None, 8, 1), (-1, 8, 8), (-2, 8, 7), (-20, 8, 1), (3, 8, 3), (12, 2, 12)],
)
def test_effective_n_jobs_follows_joblib(n_jobs, n_cpus, expected):
    assert effective_n_jobs(n_jobs, n_cpus) == expected


@pytest.mark.parametrize("bad", [0, 1.5, "four", 2.0, True])
def test_effective_n_jobs_rejects_with_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad) if bad != 0 else "n_jobs == 0"):
        effective_n_jobs(bad, 8)


def test_task_budget_static_and_dynamic():
    assert [task_budget(16, 6, s) for s in range(6)] == [3, 3, 3, 3, 2, 2]
    assert task_budget(8, 4, 0, running=1) == 8
    assert [task_budget(8, 4, r, running=4) for r in range(4)] == [2, 2, 2, 2]
    assert [task_budget(7, 4, r, running=2) for r in range(2)] == [4, 3]
    # more running than workers: still the pool's split, never above n_cpus
    assert task_budget(8, 4, 3, running=9) == 2


@pytest.mark.parametrize("n_cpus", [1, 2, 7, 16])
@pytest.mark.parametrize("n_workers", [1, 3, 6])
def test_dynamic_budgets_of_running_tasks_never_exceed_the_cpus(n_cpus, n_workers):
    for running in range(1, n_workers + 1):
        total = sum(task_budget(n_cpus, n_workers, r, running) for r in range(running))
        assert total <= max(n_cpus, running)
