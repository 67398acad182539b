"""Parsing the make flags: pure, no descriptors, no processes."""

from __future__ import annotations

import doctest

import pytest

from budgeted.hostwide import makeflags
from budgeted.hostwide.makeflags import JobserverAuth, find_jobserver, parse_makeflags


def test_doctests():
    assert doctest.testmod(makeflags).failed == 0


@pytest.mark.parametrize(
    ("text", "auth", "jobs", "dry_run"),
    [
        ("", None, None, False),
        (" -j3 --jobserver-auth=3,4", "3,4", 3, False),  # make 4.3
        ("-j4 --jobserver-auth=fifo:/tmp/GMfifo1", "fifo:/tmp/GMfifo1", 4, False),
        ("--jobserver-fds=5,6 -j", "5,6", None, False),  # make 4.1, -j unlimited
        ("n -j3 --jobserver-auth=3,4", "3,4", 3, True),
        ("kns -j 5 --jobserver-auth=3,4", "3,4", 5, True),
        ("ks --jobs=6", None, 6, False),
        ("--jobserver-fds=3,4 --jobserver-auth=fifo:/f", "fifo:/f", None, False),
        ("--jobserver-auth=fifo:/f --jobserver-fds=3,4", "3,4", None, False),
        ("-j2 -j7 --jobserver-auth=-1,-1", "-1,-1", 7, False),
        ("-j2 -- X=--jobserver-auth=3,4 n", None, 2, False),  # variables after --
        ("--no-print-directory -j2", None, 2, False),  # no flag word: not -n
    ],
)
def test_parse_makeflags(text, auth, jobs, dry_run):
    flags = parse_makeflags(text)
    assert (flags.auth, flags.jobs, flags.dry_run) == (auth, jobs, dry_run)


def test_find_jobserver_styles():
    pipe = find_jobserver({"MAKEFLAGS": " -j3 --jobserver-auth=3,4"})
    assert pipe == JobserverAuth("MAKEFLAGS", "pipe", read_fd=3, write_fd=4, jobs=3)
    assert pipe.where() == "3,4"
    fifo = find_jobserver({"CARGO_MAKEFLAGS": "-j8 --jobserver-auth=fifo:/x/y"})
    assert fifo == JobserverAuth("CARGO_MAKEFLAGS", "fifo", path="/x/y", jobs=8)
    assert fifo.where() == "fifo:/x/y"


def test_the_first_variable_naming_a_jobserver_decides():
    environ = {
        "MAKEFLAGS": "-j2",  # names none: the next variable is read
        "CARGO_MAKEFLAGS": "--jobserver-auth=5,6",
        "MFLAGS": "--jobserver-auth=7,8",
    }
    assert find_jobserver(environ).variable == "CARGO_MAKEFLAGS"


@pytest.mark.parametrize(
    "text",
    ["n --jobserver-auth=3,4", "-j2 --jobserver-auth=-1,4", "--jobserver-fds=3,-1"],
)
def test_dry_run_and_negative_descriptors_mean_none(text):
    assert find_jobserver({"MAKEFLAGS": text}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--jobserver-auth=fifo:", "names no path"),
        ("--jobserver-auth=3", "neither 'fifo:PATH' nor 'R,W'"),
        ("--jobserver-auth=a,b", "neither 'fifo:PATH' nor 'R,W'"),
    ],
)
def test_unparsable_auth_names_the_variable(text, message):
    with pytest.raises(ValueError, match=f"MFLAGS.*{message}"):
        find_jobserver({"MFLAGS": text})
