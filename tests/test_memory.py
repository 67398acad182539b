"""Where memory-mapped arrays go, observed from the workers that map them."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config

import budgeted.tempdir as tempdir
from budgeted import _compat
from budgeted.__main__ import main
from budgeted.tempdir import SHM, SHM_MARGIN, choose_temp_folder, remove_stale_folders


def seen_by_worker(a):
    """What a worker sees of the array it was sent."""
    folder = os.path.dirname(a.filename)
    return {
        "file": a.filename,
        "sum": float(a.sum()),
        "pid": os.getpid(),
        "folder_mode": stat.S_IMODE(os.stat(folder).st_mode),
        "file_mode": stat.S_IMODE(os.stat(a.filename).st_mode),
    }


def run(arrays, **config):
    with parallel_config("budgeted", n_jobs=2, n_cpus=2, max_nbytes="1K", **config):
        return Parallel()(delayed(seen_by_worker)(a) for a in arrays)


@pytest.fixture
def disk_tmp(tmp_path, monkeypatch):
    """The system temp dir, redirected to a private folder; no JOBLIB_TEMP_FOLDER."""
    disk = tmp_path / "disk"
    disk.mkdir()
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    return disk


def test_shm_too_small_for_one_array_sends_that_array_to_disk(
    disk_tmp, monkeypatch, caplog
):
    # /dev/shm "has" room for the 2 KB array plus the margin, not the 16 KB one
    monkeypatch.setattr(tempdir, "free_space", lambda path: SHM_MARGIN + 8192)
    small, big = np.arange(256.0), np.arange(2048.0)
    with caplog.at_level(logging.INFO, logger="budgeted"):
        seen = run([small, big])
    assert seen[0]["file"].startswith(f"{SHM}/joblib_memmapping_folder_")
    assert seen[1]["file"].startswith(f"{disk_tmp}/joblib_memmapping_folder_")
    assert [s["sum"] for s in seen] == [small.sum(), big.sum()]
    assert any("/dev/shm has 1073750016 bytes free" in m for m in caplog.messages)
    assert any("16384 to dump" in m for m in caplog.messages)
    assert os.listdir(disk_tmp) == []  # removed when the call returned


def test_folders_0700_and_files_0600_whatever_the_umask(disk_tmp, monkeypatch):
    monkeypatch.setattr(tempdir, "free_space", lambda path: 0)  # all to disk
    old = os.umask(0)
    try:
        seen = run([np.ones(1000), np.ones(1000)])
    finally:
        os.umask(old)
    for s in seen:
        assert Path(s["file"]).parent.parent == disk_tmp
        assert s["folder_mode"] == 0o700
        assert s["file_mode"] == 0o600
    # names hold 128 random bits besides the PID (joblib's uuid4s)
    folder = Path(seen[0]["file"]).parent.name
    assert len(folder.split("_")[-1]) == len(folder.split("_")[-2]) == 32


def test_explicit_folder_beats_environment_beats_shm(tmp_path, monkeypatch):
    env_folder, arg_folder = tmp_path / "env", tmp_path / "arg"
    env_folder.mkdir()
    arg_folder.mkdir()
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(env_folder))
    assert Path(run([np.ones(1000)])[0]["file"]).parent.parent == env_folder
    seen = run([np.ones(1000)], temp_folder=str(arg_folder))
    assert Path(seen[0]["file"]).parent.parent == arg_folder
    assert os.listdir(env_folder) == os.listdir(arg_folder) == []


def test_executor_still_reused_between_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path))
    first = {s["pid"] for s in run([np.ones(1000)] * 4)}
    executor = _compat.current_loky_executor()
    second = {s["pid"] for s in run([np.ones(1000)] * 4)}
    assert _compat.current_loky_executor() is executor
    assert first | second <= set(executor._processes)  # the same workers


@pytest.mark.parametrize("kind", ["file", "unwritable", "under-a-file"])
def test_bad_folder_fails_at_configure_before_any_task(tmp_path, monkeypatch, kind):
    """A missing folder is created, as joblib does; these cannot be."""
    folder = tmp_path / "folder"
    if kind == "under-a-file":
        (tmp_path / "a_file").write_text("")
        folder = tmp_path / "a_file" / "folder"
    if kind == "file":
        folder.write_text("")
    elif kind == "unwritable":
        folder.mkdir()
        real_access = os.access  # root may write anywhere: simulate the refusal
        monkeypatch.setattr(
            os, "access", lambda p, m: Path(p) != folder and real_access(p, m)
        )
    ran = tmp_path / "ran"
    error = {
        "under-a-file": NotADirectoryError,
        "file": NotADirectoryError,
        "unwritable": PermissionError,
    }
    for config in ({"temp_folder": str(folder)}, {"env": str(folder)}):
        if "env" in config:
            monkeypatch.setenv("JOBLIB_TEMP_FOLDER", config.pop("env"))
        with (
            pytest.raises(error[kind], match=str(folder)),
            parallel_config("budgeted", n_jobs=2, **config),
        ):
            Parallel()(delayed(ran.touch)() for _ in range(2))
        assert not ran.exists()
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER")
    assert len(run([np.ones(1000)] * 2)) == 2  # the backend still works


def test_choose_temp_folder_order_and_reasons(tmp_path):
    roomy = lambda path: SHM_MARGIN + 10_000  # noqa: E731
    assert choose_temp_folder(None, 10_000, free_bytes=roomy, environ={}) == (
        SHM,
        "/dev/shm has room",
    )
    folder, reason = choose_temp_folder(None, 10_001, free_bytes=roomy, environ={})
    assert folder == Path(tempfile.gettempdir()) and reason == "/dev/shm too small"
    env = {"JOBLIB_TEMP_FOLDER": str(tmp_path)}
    assert choose_temp_folder(None, free_bytes=roomy, environ=env) == (
        tmp_path,
        "JOBLIB_TEMP_FOLDER",
    )
    assert choose_temp_folder(tmp_path, environ=env)[1] == "temp_folder argument"


def test_stale_folders_removed_only_when_owner_is_gone(tmp_path):
    dead = tmp_path / "joblib_memmapping_folder_4242_aa_bb"
    live = tmp_path / "joblib_memmapping_folder_4343_aa_bb"
    other = tmp_path / "something_4242_else"
    for path in (dead, live, other):
        path.mkdir()
    (dead / "x.pkl").write_text("data")
    removed = remove_stale_folders([tmp_path], alive=lambda pid: pid == 4343)
    assert removed == [dead]
    assert not dead.exists() and live.is_dir() and other.is_dir()


def test_info_line_follows_the_real_choice(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JOBLIB_TEMP_FOLDER", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tempdir, "free_space", lambda path: SHM_MARGIN + 2**30)
    assert main(["info", "--n-cpus", "2"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "memmap" in x)
    assert line.startswith("memmap folder: /dev/shm (/dev/shm has room; 2.0 GiB free)")
    assert f"arrays up to 1.0 GiB go to /dev/shm, larger ones to {tmp_path}" in line
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path / "a_file"))
    assert main(["info", "--n-cpus", "2"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "memmap" in x)
    assert "unusable: JOBLIB_TEMP_FOLDER" in line and "is not a directory" in line


def test_a_killed_programs_holders_folder_is_removed(tmp_path):
    """budgeted.hostwide.lease's folder of jobserver holdings records."""
    dead = tmp_path / "budgeted-holders-4242-xyz"
    live = tmp_path / "budgeted-holders-4343-xyz"
    for path in (dead, live):
        path.mkdir()
    (dead / "4244-00aa").write_text("       2")
    removed = remove_stale_folders([tmp_path], alive=lambda pid: pid == 4343)
    assert removed == [dead]
    assert not dead.exists() and live.is_dir()
