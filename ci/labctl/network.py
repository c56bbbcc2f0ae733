"""The lab network: one bridge holding the gateway address, a namespace per host.

No default route and no forwarding: lab traffic cannot leave the lab's subnet.
"""
from __future__ import annotations

import ipaddress
import json

from .sh import LabError, ok, run


def create(plan) -> None:
    net = ipaddress.IPv4Network(plan.subnet)
    conflict = _routes_overlapping(net)
    if conflict:
        raise LabError(f"lab.subnet {net} overlaps a route this machine already has ({conflict}); "
                       "choose another subnet in the parameter file")
    run("ip", "link", "add", plan.bridge, "type", "bridge")
    run("ip", "addr", "add", f"{plan.gateway}/{net.prefixlen}", "dev", plan.bridge)
    run("ip", "link", "set", plan.bridge, "up")
    for host in plan.hosts:
        run("ip", "netns", "add", host.netns)
        run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", plan.interface,
            "netns", host.netns)
        run("ip", "link", "set", host.veth, "master", plan.bridge, "up")
        run("ip", "-n", host.netns, "addr", "add", f"{host.address}/{net.prefixlen}", "dev", plan.interface)
        run("ip", "-n", host.netns, "link", "set", plan.interface, "up")
        run("ip", "-n", host.netns, "link", "set", "lo", "up")


def remove(lab_name: str) -> None:
    """Delete every namespace, veth and bridge named for this lab; safe to repeat."""
    for ns in run("ip", "netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith(f"{lab_name}-"):
            ok("ip", "netns", "delete", name)   # takes the inner veth end, and so the pair
    for link in json.loads(run("ip", "-j", "link", "show", check=False).stdout or "[]"):
        if link["ifname"].startswith(f"{lab_name}-"):
            ok("ip", "link", "delete", link["ifname"])


def leftovers(lab_name: str) -> list[str]:
    found = [f"netns {n.split(' ')[0]}" for n in run("ip", "netns", "list", check=False).stdout.split("\n")
             if n.startswith(f"{lab_name}-")]
    found += [f"link {l['ifname']}" for l in json.loads(run("ip", "-j", "link", "show", check=False).stdout or "[]")
              if l["ifname"].startswith(f"{lab_name}-")]
    return found


def _routes_overlapping(net: ipaddress.IPv4Network) -> str | None:
    for route in json.loads(run("ip", "-j", "route", "show", check=False).stdout or "[]"):
        dst = route.get("dst")
        if not dst or dst == "default":
            continue
        if ipaddress.IPv4Network(dst, strict=False).overlaps(net):
            return f"{dst} dev {route.get('dev')}"
    return None
