"""The cluster lock (lib.lock) against a fake primary that runs its shell commands locally
in a temporary directory: acquire, refuse naming the holder, take over from a dead holder."""
import os
import subprocess

import pytest

from lib import lock as L


class FakePrimary:
    """Runs the lock's commands with bash, LOCK_DIR moved under tmp_path."""

    class host:
        name = "vm1"

    def __init__(self, tmp_path):
        self.dir = str(tmp_path / "pgguide.lock")

    def sudo(self, command, check=True, journaled=True):
        proc = subprocess.run(["bash", "-c", command.replace(L.LOCK_DIR, self.dir)], capture_output=True, text=True)

        class Result:
            stdout = proc.stdout
        return Result()


def test_first_holds_second_is_refused_naming_the_holder(tmp_path):
    primary = FakePrimary(tmp_path)
    first = L.ClusterLock(primary, "ci/provision lab")
    first.hold()
    first.hold()                                     # idempotent
    with pytest.raises(L.LockHeld, match=rf"ci/provision_lab \(machine .+, pid {os.getpid()}, since .+Z\) holds "):
        L.ClusterLock(primary, "another run").hold()
    first.release()
    first.release()                                  # safe twice
    second = L.ClusterLock(primary, "another run")
    second.hold()
    assert second.current().purpose == "another_run"
    second.release()


def test_a_lock_left_by_a_killed_run_on_this_machine_is_taken_over(tmp_path):
    primary = FakePrimary(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = L.Holder(L.me("x").machine, dead.pid, "2026-11-27T00:00:00Z", "killed")
    os.mkdir(primary.dir)
    with open(f"{primary.dir}/holder", "w") as f:
        f.write(gone.line() + "\n")
    taker = L.ClusterLock(primary, "next run")
    taker.hold()
    assert taker.took_over == gone and taker.current().purpose == "next_run"


def test_a_lock_held_elsewhere_is_never_taken_over(tmp_path):
    primary = FakePrimary(tmp_path)
    os.mkdir(primary.dir)
    with open(f"{primary.dir}/holder", "w") as f:
        f.write(L.Holder("other-machine", 1, "t", "ci/provision").line() + "\n")
    with pytest.raises(L.LockHeld, match="machine other-machine, pid 1"):
        L.ClusterLock(primary, "me").hold()


def held_by(primary, holder):
    os.mkdir(primary.dir)
    with open(f"{primary.dir}/holder", "w") as f:
        f.write(holder.line() + "\n")


def test_a_machine_with_the_same_host_name_never_takes_the_lock(tmp_path):
    """Cloned VMs and CI runners share host names: a dead-looking pid there is not our business."""
    name, machine_id, boot = L.this_machine().split(":")
    assert name and len(machine_id) == 12 and len(boot) == 12
    dead = subprocess.Popen(["true"])
    dead.wait()
    for machine in (f"{name}:{'0' * 12}:{boot}", name):          # another machine-id; an old line with no ids
        primary = FakePrimary(tmp_path / machine.replace(":", "_"))
        (tmp_path / machine.replace(":", "_")).mkdir()
        held_by(primary, L.Holder(machine, dead.pid, "t", "ci/provision"))
        with pytest.raises(L.LockHeld):
            L.ClusterLock(primary, "me").hold()


def test_a_lock_from_before_this_machines_last_boot_is_taken_over(tmp_path):
    name, machine_id, _ = L.this_machine().split(":")
    primary = FakePrimary(tmp_path)
    earlier = L.Holder(f"{name}:{machine_id}:{'f' * 12}", os.getpid(), "t", "before the reboot")   # a live pid, another boot
    held_by(primary, earlier)
    taker = L.ClusterLock(primary, "next run")
    taker.hold()
    assert taker.took_over == earlier


def test_the_notebooks_of_a_run_use_its_lock(tmp_path, monkeypatch):
    primary = FakePrimary(tmp_path)
    parent = L.ClusterLock(primary, "ci/provision lab")
    parent.hold()
    monkeypatch.setenv(L.ENV_VARIABLE, parent.holder.line())
    child = L.ClusterLock(primary, "a notebook run")
    child.hold()                                     # no error: the parent's lock
    assert child.holder is None and child.current() == parent.holder


def test_a_notebook_holds_the_lock_only_while_a_step_changes_something(tmp_path):
    primary = FakePrimary(tmp_path)
    notebook = L.ClusterLock(primary, "a notebook run", per_step=True)
    with notebook.changing():
        assert notebook.current().purpose == "a_notebook_run"
    assert notebook.current() is None
    whole = L.ClusterLock(primary, "ci/provision lab")
    with whole.changing():
        pass
    assert whole.current().purpose == "ci/provision_lab"
    whole.release()
