"""ci/lab up|down|status|ssh — the built-in three-host lab.

  ci/lab up [params/FILE.yaml]     clear what an earlier run of this lab left, then boot the hosts
                                   (a lab with another lab.name is left alone)
  ci/lab down [params/FILE.yaml]   power this lab's hosts off and remove every trace; repeatable
  ci/lab down --all                the same for every lab on this machine
  ci/lab status [params/FILE.yaml] what is running
  ci/lab ssh HOST [COMMAND...]     log in to a host (name or role) with the lab's key
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lib import params as P

from . import image, machines, network
from .machines import LabHost
from .sh import LabError, run


@dataclass
class Plan:
    lab: str
    subnet: str
    gateway: str
    interface: str
    user: str
    key_file: Path
    known_hosts: Path
    ssh_port: int
    hosts: list[LabHost]
    release: str            # the Debian release of the image (lab.debian)

    @property
    def bridge(self) -> str:
        return f"{self.lab}-br"


def plan_from(params_file: str) -> Plan:
    prm = P.load(params_file)
    if not prm.is_lab:
        raise LabError(f"{params_file} has no 'lab' section: it describes real machines, not the lab")
    lab = prm.lab["name"]
    hosts = [LabHost(lab, h.name, h.role, h.address) for h in prm.all_hosts]
    too_long = [h.machine for h in hosts + [LabHost(lab, "br", "", "")] if len(h.machine) > 15]
    if too_long:
        raise LabError(f"interface names must fit 15 characters: {', '.join(too_long)}; "
                       "shorten lab.name or the host names")
    return Plan(lab, prm.lab["subnet"], prm.lab["gateway"], prm.options["interface"], prm.ssh["user"],
                Path(prm.ssh["key_file"]), Path(prm.ssh["known_hosts"]), prm.ssh["port"], hosts,
                P.LAB_RELEASES[prm.lab["debian"]][0])


def ensure_lab_key(plan: Plan) -> str:
    if not plan.key_file.exists():
        plan.key_file.parent.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{plan.lab}-admin", "-f", str(plan.key_file))
    return plan.key_file.with_suffix(".pub").read_text()


def down(labs: set[str], quiet: bool = False) -> float:
    """Stop and remove these labs, whatever state an earlier run left; safe to repeat."""
    start = time.monotonic()
    for lab in labs:
        machines.stop_all(lab)
        machines.unmount_all(lab)
        network.remove(lab)
        machines.remove_cgroups(lab)
        machines.remove_disks(lab)
    left = [item for lab in labs for item in machines.leftovers(lab) + network.leftovers(lab)]
    if left:
        raise LabError("lab down left these behind:\n  " + "\n  ".join(left))
    took = time.monotonic() - start
    if not quiet:
        print(f"lab down: nothing of the lab is left ({took:.1f} s)")
    return took


def up(params_file: str) -> None:
    plan = plan_from(params_file)
    img = image.ensure_image(plan.release)
    cleared = down({plan.lab}, quiet=True)        # this lab only: a lab with another name stays up
    start = time.monotonic()
    public_key = ensure_lab_key(plan)
    network.create(plan)
    known = []
    for host in plan.hosts:
        machines.prepare(host, img)
        kind, key = machines.give_identity(host, plan.hosts, plan.user, public_key)
        where = host.address if plan.ssh_port == 22 else f"[{host.address}]:{plan.ssh_port}"
        known.append(f"{where} {kind} {key}\n")
    plan.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    plan.known_hosts.write_text("".join(known))
    pids = {host: machines.boot(host, plan.interface) for host in plan.hosts}
    with ThreadPoolExecutor(len(pids)) as pool:
        list(pool.map(lambda h: machines.wait_until_running(h, pids[h]), pids))
    took = time.monotonic() - start
    width = max(len(h.name) for h in plan.hosts)
    for host in plan.hosts:
        print(f"  {host.name:<{width}} {host.role:<8} {host.address:<15} running")
    print(f"lab up: {len(plan.hosts)} hosts running in {took:.1f} s "
          f"(clearing earlier state took {cleared:.1f} s). Log in with: ci/lab ssh {plan.hosts[0].name}")


def status(params_file: str) -> int:
    plan = plan_from(params_file)
    up_count, width = 0, max(len(h.name) for h in plan.hosts)
    for host in plan.hosts:
        pid = host.pid_file.read_text().strip() if host.pid_file.exists() else None
        alive = bool(pid) and Path(f"/proc/{pid}").exists()
        up_count += alive
        print(f"  {host.name:<{width}} {host.role:<8} {host.address:<15} {'running' if alive else 'stopped'}")
    print(f"lab {plan.lab}: {up_count} of {len(plan.hosts)} hosts running")
    return 0 if up_count == len(plan.hosts) else 3


def ssh(params_file: str, host_name: str, command: list[str]) -> None:
    plan_from(params_file)                           # a lab's parameters, not real machines'
    from lib import hosts as hostmod   # imported here: paramiko and fabric cost up and down 0.2 s for nothing
    prm = P.load(params_file)
    try:    # with the lab down, its address would be routed off this machine
        host = prm.host(host_name)
        hostmod.require_lab_route(prm, host)
    except hostmod.HostUnreachable as e:
        raise LabError(str(e)) from None
    os.execvp("ssh", hostmod.openssh_argv(prm, host) + command)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ci/lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "status", "down"):
        p = sub.add_parser(name)
        p.add_argument("params", nargs="?", default=str(P.DEFAULT_FILE))
    p.add_argument("--all", action="store_true", help="every lab this machine runs, whatever its name")
    p = sub.add_parser("ssh")
    p.add_argument("host")
    p.add_argument("remote_command", nargs=argparse.REMAINDER)
    p.add_argument("--params", default=str(P.DEFAULT_FILE))
    args = parser.parse_args(argv)
    if os.geteuid() != 0 and args.command != "ssh":
        print("ci/lab must run as root (it creates namespaces, mounts and containers)", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            up(args.params)
        elif args.command == "down":
            down(machines.known_labs() | {plan_from(args.params).lab} if args.all else {plan_from(args.params).lab})
        elif args.command == "status":
            return status(args.params)
        else:
            ssh(args.params, args.host, args.remote_command)
    except (LabError, P.ParamsError) as e:
        print(f"ci/lab {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
