"""Process-wide pools under several thread-mode calls at once."""

from threadpoolctl import threadpool_info

from budgeted import sharedpools


def blas_threads():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_pools_follow_the_smallest_live_demand_then_come_back():
    before = threadpool_info()
    sharedpools.demand("outer", 3, frozenset())
    sharedpools.demand("inner", 1, frozenset())
    assert blas_threads() == {1} and sharedpools.active()
    sharedpools.withdraw("outer")  # the first call to finish: no rise yet
    assert blas_threads() == {1}
    sharedpools.demand("inner", 2, frozenset())  # its tail: larger shares
    assert blas_threads() == {2}
    sharedpools.withdraw("inner")
    assert not sharedpools.active()
    assert threadpool_info() == before


def test_pinned_libraries_are_left_alone():
    before = blas_threads()
    sharedpools.demand("call", 1, frozenset({"openblas"}))
    try:
        assert blas_threads() == before
    finally:
        sharedpools.withdraw("call")


def test_withdrawing_twice_or_unknown_is_harmless():
    before = threadpool_info()
    sharedpools.withdraw("never-demanded")
    sharedpools.demand("x", 1, frozenset())
    sharedpools.withdraw("x")
    sharedpools.withdraw("x")
    assert threadpool_info() == before
