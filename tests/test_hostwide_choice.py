"""A jobserver named in the make flags that cannot be used: a warning, local
budgets, no hang. Each case runs in a fresh interpreter with real descriptors."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from _hostwide import PYTHON, TIMEOUT, clean_env

_PROBE = textwrap.dedent(
    """
    import json, warnings
    from budgeted import hostwide
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = hostwide.tokens_for_this_process()
        got = None if source is None else source.acquire(1, block=True, timeout=5)
    print(json.dumps({
        "kind": None if source is None else source.kind,
        "got": got,
        "warnings": [str(w.message) for w in caught],
    }))
    """
)


def _probe(env: dict[str, str], pass_fds=()) -> dict:
    done = subprocess.run(
        [PYTHON, "-c", _PROBE],
        env=clean_env(BUDGETED_LEDGER="off", **env),
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _unusable(report: dict, *words: str) -> None:
    assert report["kind"] is None
    assert len(report["warnings"]) == 1, report
    assert all(word in report["warnings"][0] for word in words), report


@pytest.mark.parametrize("variable", ["MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS"])
def test_missing_fifo(tmp_path, variable):
    flags = f"-j4 --jobserver-auth=fifo:{tmp_path / 'nothing'}"
    _unusable(_probe({variable: flags}), variable, "No such file")


def test_fifo_that_is_a_regular_file(tmp_path):
    (tmp_path / "f").write_text("++")
    flags = f"-j4 --jobserver-auth=fifo:{tmp_path / 'f'}"
    _unusable(_probe({"MAKEFLAGS": flags}), "MAKEFLAGS", "not a fifo")


def test_closed_descriptors():
    _unusable(_probe({"MAKEFLAGS": "-j3 --jobserver-auth=97,98"}), "fd 97 is closed")


def test_descriptors_that_are_not_a_pipe(tmp_path):
    with open(tmp_path / "file", "w+") as file:
        fd = file.fileno()
        flags = f"-j3 --jobserver-fds={fd},{fd}"
        _unusable(_probe({"MAKEFLAGS": flags}, (fd,)), f"fd {fd} is not a pipe")


def test_two_different_pipes():
    first, second = os.pipe(), os.pipe()
    try:
        flags = f"-j3 --jobserver-auth={first[0]},{second[1]}"
        report = _probe({"MAKEFLAGS": flags}, (first[0], second[1]))
        _unusable(report, "two different pipes")
    finally:
        for fd in (*first, *second):
            os.close(fd)


def test_garbage_auth():
    _unusable(_probe({"MAKEFLAGS": "--jobserver-auth=x,y"}), "neither")


def test_negative_descriptors_mean_no_jobserver():
    assert _probe({"MAKEFLAGS": "-j3 --jobserver-auth=-2,-2"}) == {
        "kind": None,
        "got": None,
        "warnings": [],
    }


def test_a_live_pipe_is_used_and_make_s_blocking_mode_kept():
    read, write = os.pipe()
    try:
        os.write(write, b"+")
        flags = f"-j2 --jobserver-auth={read},{write}"
        report = _probe({"MAKEFLAGS": flags}, (read, write))
        assert report == {"kind": "jobserver", "got": 1, "warnings": []}
        assert os.get_blocking(read)  # our reads never made it non-blocking
        assert os.read(read, 1) == b"+"  # and the token came back at exit
    finally:
        os.close(read)
        os.close(write)


def test_an_empty_pipe_does_not_hang_a_timed_wait():
    read, write = os.pipe()
    try:
        report = _probe(
            {"MAKEFLAGS": f"-j2 --jobserver-auth={read},{write}"}, (read, write)
        )
        assert report == {"kind": "jobserver", "got": 0, "warnings": []}
    finally:
        os.close(read)
        os.close(write)


def test_minus_j1_has_no_token_to_wait_for():
    from budgeted import hostwide

    read, write = os.pipe()
    try:
        environ = {"MAKEFLAGS": f"-j1 --jobserver-auth={read},{write}"}
        source = hostwide.choose_source(environ)
        assert source.acquire(1, block=True) == 0  # returns: never waits forever
        source.close()
    finally:
        os.close(read)
        os.close(write)
