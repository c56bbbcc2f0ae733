"""SSH connections to the hosts: one fabric Connection per host, host keys checked."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import paramiko
from fabric import Config, Connection

from lib.params import Host, Params


KEEPALIVE_S = 5


class HostUnreachable(ConnectionError):
    """SSH to a host failed before any command ran."""


def connect(params: Params, host: Host) -> Connection:
    """An open SSH connection to `host` as the parameters' admin user.

    Host keys must already be in ssh.known_hosts (the lab writes that file); an unknown
    or changed key is refused rather than trusted.
    """
    ssh = params.ssh
    if params.is_lab:
        require_lab_route(params, host)
    known_hosts = Path(ssh["known_hosts"])
    key_file = Path(ssh["key_file"])
    if not known_hosts.is_file():
        raise HostUnreachable(f"ssh.known_hosts {known_hosts} does not exist. "
                              + ("Run `ci/lab up`, which writes it." if params.is_lab else
                                 f"Add the hosts' keys first, e.g. ssh-keyscan {host.address} >> {known_hosts} "
                                 "(then compare the fingerprints with the hosts' own)."))
    if not key_file.is_file():
        raise HostUnreachable(f"ssh.key_file {key_file} does not exist"
                              + (": run `ci/lab up`, which creates it." if params.is_lab else "."))
    conn = Connection(host.address, user=ssh["user"], port=ssh["port"],
                      connect_timeout=ssh["connect_timeout"],
                      config=Config(ssh_config=paramiko.SSHConfig()),  # the parameters, not ~/.ssh/config, decide
                      connect_kwargs={"key_filename": str(key_file), "look_for_keys": False,
                                      "allow_agent": False, "banner_timeout": ssh["connect_timeout"],
                                      "auth_timeout": ssh["connect_timeout"]})
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.load_host_keys(str(known_hosts))
    try:
        conn.open()
    except paramiko.BadHostKeyException as e:
        raise HostUnreachable(f"{host.label}: its SSH host key does not match {known_hosts} ({e}). "
                              "If the host was rebuilt, remove its old line from known_hosts.") from None
    except paramiko.SSHException as e:
        if "not found in known_hosts" in str(e):
            raise HostUnreachable(f"{host.label}: its SSH host key is not in {known_hosts}; "
                                  "add it (ssh-keyscan) after checking the fingerprint.") from None
        raise HostUnreachable(f"{host.label}: SSH as {ssh['user']} failed: {e}. Check that "
                              f"{key_file} is a key that {ssh['user']} accepts (authorized_keys).") from None
    except (OSError, TimeoutError) as e:
        raise HostUnreachable(f"{host.label}: cannot reach SSH port {ssh['port']}: {e}. Check the address, "
                              "that the host is up and that sshd runs and no firewall drops port "
                              f"{ssh['port']}.") from None
    # keeps the session alive through NAT and firewalls; a host that stops answering is caught
    # by each command's own bound (ssh.command_timeout), which names the host
    conn.client.get_transport().set_keepalive(KEEPALIVE_S)
    no_nagle(conn.client.get_transport().sock)
    return conn


def openssh_argv(params: Params, host: Host) -> list[str]:
    """OpenSSH's command line that logs in to `host` as the parameters' admin user, with the same key
    and known_hosts as connect(): what `ci/lab ssh` runs, and what the lab tests run without it."""
    ssh = params.ssh
    return ["ssh", "-i", str(ssh["key_file"]), "-o", f"UserKnownHostsFile={ssh['known_hosts']}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-p", str(ssh["port"]),
            f"{ssh['user']}@{host.address}"]


def no_nagle(sock) -> None:
    """Send each SSH packet at once. Opening a channel is two small writes; with Nagle's algorithm
    the second waits for the ACK of the first, which the server delays 40 ms: every command paid
    that (48 ms for `true` on the lab, 5 ms without)."""
    if isinstance(sock, socket.socket):         # not through a proxy command
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: how long a route found through the lab's bridge is taken as still there: `ip route get` costs about 7 ms,
#: and a drill's clients open up to a hundred sessions a second
ROUTE_SEEN_S = 1.0
_routes_seen: dict[tuple[str, str], float] = {}


def require_lab_route(params: Params, host: Host) -> None:
    """Lab addresses exist only behind the lab's bridge. If the lab is down, the same
    address would be routed out of this machine to someone else's network: refuse."""
    bridge = f"{params.lab['name']}-br"
    seen = _routes_seen.get((bridge, host.address))
    if seen is not None and time.monotonic() - seen < ROUTE_SEEN_S:
        return
    try:
        route = json.loads(subprocess.run(["ip", "-j", "route", "get", host.address],
                                          capture_output=True, text=True).stdout or "[]")
    except (OSError, json.JSONDecodeError):
        route = []
    dev = route[0].get("dev") if route else None
    if dev != bridge:
        raise HostUnreachable(f"the lab is not up: {host.address} is not routed through the lab bridge "
                              f"{bridge} (route: {dev or 'none'}). Run `ci/lab up` first.")
    _routes_seen[(bridge, host.address)] = time.monotonic()
