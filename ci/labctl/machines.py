"""The lab's hosts: a copy-on-write overlay over the image, an identity, a booted systemd."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .sh import LabError, ok, run

STATE = Path(os.environ.get("LAB_STATE_DIR", "/var/lib/pgpool-guide-lab/labs"))
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class LabHost:
    lab: str
    name: str
    role: str
    address: str

    @property
    def machine(self) -> str:       # also the prefix of its netns and veth
        return f"{self.lab}-{self.name}"

    netns = machine
    veth = machine

    @property
    def dir(self) -> Path:
        return STATE / self.lab / self.name

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def pid_file(self) -> Path:
        return self.dir / "nspawn.pid"

    @property
    def layers(self) -> list[str]:
        """Database hosts start with PostgreSQL installed; the pgpool host without it."""
        return ["db", "base"] if self.role in ("primary", "standby") else ["base"]


def cgroup_dirs(lab: str, host: str | None = None) -> list[Path]:
    """Where a lab's containers live. On a cgroup v1/hybrid machine without systemd as
    PID 1, nspawn needs a cgroup of its own in both the named systemd and the unified
    hierarchy, or systemd inside cannot manage its services (see shared lab notes)."""
    parts = [lab] + ([host] if host else [])
    if (CGROUP_ROOT / "cgroup.controllers").exists():        # pure cgroup v2
        bases = [CGROUP_ROOT]
    else:
        bases = [b for b in (CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified") if b.is_dir()]
    return [b.joinpath(*parts) for b in bases]


# --- bringing a host up -------------------------------------------------------------------
def prepare(host: LabHost, image: Path) -> None:
    for d in ("upper", "work", "root"):
        (host.dir / d).mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(image / layer) for layer in host.layers)
    run("mount", "-t", "overlay", "overlay", "-o",
        f"lowerdir={lower},upperdir={host.dir / 'upper'},workdir={host.dir / 'work'}", str(host.root))


def give_identity(host: LabHost, hosts: list[LabHost], user: str, public_key: str) -> str:
    """Hostname, /etc/hosts, machine-id, SSH host key and the admin user; returns the
    host's public SSH key for known_hosts."""
    etc = host.root / "etc"
    (etc / "hostname").write_text(host.name + "\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                               + "".join(f"{h.address}\t{h.name}\n" for h in hosts))
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    key = etc / "ssh" / "ssh_host_ed25519_key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", str(key))
    (etc / "ssh" / "sshd_config.d").mkdir(exist_ok=True)
    (etc / "ssh" / "sshd_config.d" / "lab.conf").write_text(
        "# Each lab host has its own key, made by ci/lab up.\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PasswordAuthentication no\n")
    run("chroot", str(host.root), "useradd", "--create-home", "--shell", "/bin/bash",
        "--groups", "sudo", user)
    sudoers = etc / "sudoers.d" / "lab-admin"
    sudoers.write_text(f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    run("chroot", str(host.root), "sh", "-c",
        f"install -d -m 700 -o {user} -g {user} ~{user}/.ssh && "
        f"cat > ~{user}/.ssh/authorized_keys && chown {user}: ~{user}/.ssh/authorized_keys",
        input=public_key)
    return key.with_suffix(".pub").read_text().split()[0:2]


def boot(host: LabHost, interface: str) -> int:
    """Start systemd-nspawn in the background in the host's own cgroup; return its pid."""
    for d in cgroup_dirs(host.lab, host.name):
        d.mkdir(parents=True, exist_ok=True)
    join = "; ".join(f"echo $$ > {d}/cgroup.procs" for d in cgroup_dirs(host.lab, host.name))
    nspawn = ["systemd-nspawn", "--quiet", "--boot", f"--directory={host.root}",
              f"--machine={host.machine}", f"--hostname={host.name}",
              f"--network-namespace-path=/run/netns/{host.netns}",
              "--register=no", "--keep-unit", "--console=passive", "--link-journal=no",
              "--resolv-conf=off", "--timezone=off",
              # its own network namespace only: a drill takes the host's interface down and up again
              "--capability=CAP_NET_ADMIN"]
    log = open(host.dir / "console.log", "w")
    proc = subprocess.Popen(["sh", "-c", f'{join}; exec "$@"', "sh", *nspawn],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    host.pid_file.write_text(str(proc.pid))
    return proc.pid


def wait_until_running(host: LabHost, nspawn_pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        init = _container_init(nspawn_pid)
        state = ""
        if init:
            left = max(1, int(deadline - time.monotonic()))
            state = run("timeout", str(left), "nsenter", "-t", str(init), "-a", "systemctl",
                        "is-system-running", "--wait", check=False).stdout.strip()
            if state in ("running", "degraded", "maintenance"):
                break
        if not _alive(nspawn_pid):
            raise LabError(f"{host.name}: systemd-nspawn exited during boot; {host.dir / 'console.log'} says:\n"
                           + (host.dir / "console.log").read_text()[-1500:])
        if time.monotonic() > deadline:
            raise LabError(f"{host.name}: not booted after {timeout:.0f} s (state {state or 'unknown'!r})")
        time.sleep(0.05)
    if state != "running":
        failed = run("nsenter", "-t", str(init), "-a", "systemctl", "--failed", "--no-legend", "--plain",
                     check=False).stdout.strip()
        raise LabError(f"{host.name}: system state is {state!r}, not 'running'. Failed units:\n{failed}\n"
                       f"Look inside with: ci/lab ssh {host.name}, then journalctl -b")


def _container_init(nspawn_pid: int) -> int | None:
    """The container's PID 1: nspawn's child that runs systemd in a PID namespace of its own."""
    mine = os.readlink("/proc/self/ns/pid")
    for child in run("pgrep", "-P", str(nspawn_pid), check=False).stdout.split():
        try:
            if (os.readlink(f"/proc/{child}/ns/pid") != mine
                    and Path(f"/proc/{child}/comm").read_text().strip() == "systemd"):
                return int(child)
        except OSError:
            continue
    return None


# --- taking hosts down --------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_lab_nspawn(pid: int, lab: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"systemd-nspawn" in argv[0] and f"--machine={lab}-".encode() in b" ".join(argv)


def _pids_in(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for base in dirs:
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def stop_all(lab: str, timeout: float = 5) -> None:
    """Power every host of the lab off (SIGTERM to nspawn shuts the container down
    cleanly), then kill whatever is still in the lab's cgroups. Safe to repeat."""
    nspawns = set()
    for pid_file in (STATE / lab).glob("*/nspawn.pid"):
        try:
            nspawns.add(int(pid_file.read_text()))
        except ValueError:
            pass
    nspawns |= {int(p) for p in run("pgrep", "-f", f"systemd-nspawn .*--machine={lab}-", check=False).stdout.split()}
    nspawns = {p for p in nspawns if _is_lab_nspawn(p, lab)}   # a stale pid file may name another process
    # A booted host powers off cleanly on SIGTERM in about 2 s. One still booting (a run
    # killed half way) queues the power-off behind its boot and can take 10 s or more:
    # it is a throwaway host whose disk is deleted next, so it is killed outright.
    for pid in nspawns:
        init = _container_init(pid)
        state = run("nsenter", "-t", str(init), "-a", "systemctl", "is-system-running",
                    check=False).stdout.strip() if init else ""
        try:
            os.kill(pid, signal.SIGTERM if state in ("running", "degraded") else signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in nspawns) and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(50):
        stragglers = _pids_in(cgroup_dirs(lab)) | {p for p in nspawns if _alive(p)}
        if not stragglers:
            break
        for pid in stragglers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    for pid_file in (STATE / lab).glob("*/nspawn.pid"):
        pid_file.unlink()


def unmount_all(lab: str) -> None:
    base = STATE / lab
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(base) + "/")]
    for target in sorted(mounts, key=len, reverse=True):   # nested mounts first
        if not ok("umount", target):
            ok("umount", "-l", target)


def remove_cgroups(lab: str) -> None:
    for top in cgroup_dirs(lab):
        if top.is_dir():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                d.rmdir()
            top.rmdir()


def remove_disks(lab: str) -> None:
    shutil.rmtree(STATE / lab, ignore_errors=True)


def leftovers(lab: str) -> list[str]:
    found = [f"cgroup {d}" for d in cgroup_dirs(lab) if d.exists()]
    found += [f"mount {line.split()[1]}" for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(STATE / lab) + "/")]
    found += [f"process {p}" for p in run("pgrep", "-f", f"systemd-nspawn .*--machine={lab}-", check=False).stdout.split()]
    if (STATE / lab).exists():
        found.append(f"directory {STATE / lab}")
    return found


def known_labs() -> set[str]:
    """Labs that left state behind, whatever parameter file made them."""
    return {p.name for p in STATE.glob("*") if p.is_dir()}
