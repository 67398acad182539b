"""Process-wide pools under several thread-mode calls at once."""

from threadpoolctl import threadpool_info

from budgeted import processwide


def blas_threads():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_pools_follow_the_smallest_live_demand_then_come_back():
    before = threadpool_info()
    processwide.demand("outer", 3, frozenset())
    processwide.demand("inner", 1, frozenset())
    assert blas_threads() == {1} and processwide.active()
    processwide.withdraw("outer")  # the first call to finish: no rise yet
    assert blas_threads() == {1}
    processwide.demand("inner", 2, frozenset())  # its tail: larger shares
    assert blas_threads() == {2}
    processwide.withdraw("inner")
    assert not processwide.active()
    assert threadpool_info() == before


def test_pinned_libraries_are_left_alone():
    before = blas_threads()
    processwide.demand("call", 1, frozenset({"openblas"}))
    try:
        assert blas_threads() == before
    finally:
        processwide.withdraw("call")


def test_withdrawing_twice_or_unknown_is_harmless():
    before = threadpool_info()
    processwide.withdraw("never-demanded")
    processwide.demand("x", 1, frozenset())
    processwide.withdraw("x")
    processwide.withdraw("x")
    assert threadpool_info() == before
