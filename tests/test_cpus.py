"""Usable CPU detection on fake cgroup trees (never the machine's)."""

import os

import pytest

from budgeted.cpus import cpu_limits, usable_cpus


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(tmp_path, own="/", limits=None):
    """A cgroup v2 mount with ``cpu.max`` files; ``limits`` maps dir -> text."""
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory\n")
    for directory, text in (limits or {}).items():
        write(root / directory.lstrip("/") / "cpu.max", text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return {"cgroup_root": root, "proc_self_cgroup": proc, "environ": {}}


def v1_tree(tmp_path, own="/", quotas=None, mount="cpu,cpuacct"):
    root = tmp_path / "cgroup"
    (root / mount).mkdir(parents=True)
    for directory, (quota, period) in (quotas or {}).items():
        base = root / mount / directory.lstrip("/")
        write(base / "cpu.cfs_quota_us", f"{quota}\n")
        write(base / "cpu.cfs_period_us", f"{period}\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"4:memory:{own}\n3:cpu,cpuacct:{own}\n0::/\n")
    return {"cgroup_root": root, "proc_self_cgroup": proc, "environ": {}}


def test_v2_max_means_no_limit(tmp_path):
    limits = cpu_limits(**v2_tree(tmp_path, limits={"/": "max 100000\n"}))
    assert limits.cgroup is None


@pytest.mark.parametrize(
    "text, expected", [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1)]
)
def test_v2_quota_rounds_up(tmp_path, text, expected):
    assert cpu_limits(**v2_tree(tmp_path, limits={"/": text})).cgroup == expected


def test_v2_reads_own_nested_cgroup_and_its_ancestors(tmp_path):
    tree = v2_tree(
        tmp_path,
        own="/user.slice/job/task",
        limits={
            "/": "max 100000",
            "/user.slice": "300000 100000",  # binds the descendants too
            "/user.slice/job": "max 100000",
            "/user.slice/job/task": "500000 100000",
        },
    )
    assert cpu_limits(**tree).cgroup == 3


def test_v2_own_cgroup_only_not_siblings(tmp_path):
    tree = v2_tree(
        tmp_path,
        own="/a",
        limits={"/a": "max 100000", "/b": "100000 100000"},
    )
    assert cpu_limits(**tree).cgroup is None


def test_v2_missing_cgroup_dir_falls_back_to_the_mount(tmp_path):
    tree = v2_tree(tmp_path, own="/not/here", limits={"/": "100000 100000"})
    assert cpu_limits(**tree).cgroup == 1


def test_hybrid_unified_mount(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "unified" / "cgroup.controllers", "cpu\n")
    write(root / "unified" / "cpu.max", "250000 100000\n")
    proc = tmp_path / "proc"
    proc.write_text("1:cpu:/\n0::/\n")
    assert cpu_limits(cgroup_root=root, proc_self_cgroup=proc, environ={}).cgroup == 3


def test_v1_quota_rounds_up_and_minus_one_is_unlimited(tmp_path):
    tree = v1_tree(
        tmp_path, own="/docker/abc", quotas={"/docker/abc": (150000, 100000)}
    )
    assert cpu_limits(**tree).cgroup == 2
    tree = v1_tree(tmp_path / "x", quotas={"/": (-1, 100000)})
    assert cpu_limits(**tree).cgroup is None


def test_v1_cpu_only_mount_name(tmp_path):
    tree = v1_tree(tmp_path, quotas={"/": (100000, 100000)}, mount="cpu")
    assert cpu_limits(**tree).cgroup == 1


def test_missing_files_mean_no_cgroup_limit(tmp_path):
    limits = cpu_limits(
        cgroup_root=tmp_path / "nothing",
        proc_self_cgroup=tmp_path / "no_proc",
        environ={},
    )
    assert limits.cgroup is None
    assert limits.usable == min(os.cpu_count(), limits.affinity or os.cpu_count())


def test_usable_is_the_minimum_and_names_its_limit(tmp_path):
    tree = v2_tree(tmp_path, limits={"/": "100000 100000"})
    limits = cpu_limits(**tree)
    assert limits.usable == 1
    assert limits.limited_by in ("cgroup", "cpu_count", "affinity")
    tree["environ"] = {"LOKY_MAX_CPU_COUNT": "1"}
    assert usable_cpus(**tree) == 1


def test_loky_max_cpu_count_caps(tmp_path):
    tree = v2_tree(tmp_path)
    tree["environ"] = {"LOKY_MAX_CPU_COUNT": "1"}
    limits = cpu_limits(**tree)
    assert limits.env == 1 and limits.usable == 1


@pytest.mark.parametrize("bad", ["zero", "0", "-2", "1.5"])
def test_loky_max_cpu_count_unparsable_names_the_variable(tmp_path, bad):
    tree = v2_tree(tmp_path)
    tree["environ"] = {"LOKY_MAX_CPU_COUNT": bad}
    with pytest.raises(ValueError, match="LOKY_MAX_CPU_COUNT"):
        cpu_limits(**tree)


def test_affinity_is_read(tmp_path):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity API on this platform")
    tree = v2_tree(tmp_path)
    assert cpu_limits(**tree).affinity == len(os.sched_getaffinity(0))


def test_the_real_cgroup_tree_is_reread_once_its_reading_is_old(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from budgeted import cpus

    reads = []

    def fake_read(root, proc_self_cgroup):
        reads.append(root)
        return 3

    clock = [1000.0]
    monkeypatch.setattr(cpus, "_cgroup_cpus", fake_read)
    monkeypatch.setattr(cpus, "_cgroup_reading", None)
    monkeypatch.setattr(cpus, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    assert cpu_limits().cgroup == 3
    clock[0] += cpus.CGROUP_TTL / 2
    assert cpu_limits().cgroup == 3
    assert reads == [cpus.CGROUP_ROOT]  # reused within the TTL
    clock[0] += cpus.CGROUP_TTL
    cpu_limits()
    assert len(reads) == 2  # re-read after it
    cpu_limits(**v2_tree(tmp_path, limits={"/": "max 100000"}))
    cpu_limits(**v2_tree(tmp_path / "again", limits={"/": "max 100000"}))
    assert len(reads) == 4  # fake trees are never cached
