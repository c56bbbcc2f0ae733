"""The preflight of notebook 00: can we reach every host, and is each as the guide expects?

Nothing here changes a host. Every problem is found before Part 1 changes anything.
"""
from __future__ import annotations

import socket
import shlex
from dataclasses import dataclass

from lib import clone_guard, postgres, secrets, system
from lib import hosts as hostmod
from lib.remote import Hosts, Remote
from lib.show import expect, fields

# One round trip per host: facts as key=value lines.
SURVEY = r"""
iface={iface}
echo "inet=$(ip -4 -o addr show dev "$iface" 2>/dev/null | awk '{{print $4}}' | head -1)"
. /etc/os-release; echo "os=$PRETTY_NAME"
pkg() {{ dpkg-query -W -f='${{Status}}|${{Version}}' "$1" 2>/dev/null | sed -n 's/^install ok installed|//p'; }}
echo "postgresql=$(pkg postgresql-{version})"
echo "postgresql_any=$(ls /usr/lib/postgresql 2>/dev/null | xargs)"
echo "pgpool=$(pkg {pgpool_package})"
echo "cluster=$(pg_lsclusters --no-header 2>/dev/null | awk '$1 == "{version}" && $2 == "{cluster}" {{print $4}}')"
echo "systemd=$(systemctl is-system-running 2>/dev/null)"
"""


@dataclass
class Facts:
    remote: Remote
    inet: str
    os: str
    postgresql: str          # package version, "" when not installed
    postgresql_any: str      # major versions present, e.g. "15"
    pgpool: str
    cluster: str             # "online", "down" or ""
    systemd: str

    @property
    def address(self) -> str:
        return self.inet.split("/")[0]


def survey(remote: Remote) -> Facts:
    p = remote.params
    # the values are validated names (lib.params), quoted all the same
    script = SURVEY.format(iface=shlex.quote(p.options["interface"]), version=int(p.postgres["version"]),
                           cluster=p.postgres["cluster"], pgpool_package=shlex.quote(p.pgpool["package"]))
    out = dict(line.split("=", 1) for line in remote.run(script, reads_only=True).lines if "=" in line)
    return Facts(remote, out["inet"], out["os"], out["postgresql"], out["postgresql_any"],
                 out["pgpool"], out["cluster"], out["systemd"])


def describe(f: Facts) -> str:
    p = f.remote.params
    v = p.postgres["version"]
    pg = (f"installed (package {f.postgresql}), cluster {v}/{p.postgres['cluster']} {f.cluster or 'absent'}"
          if f.postgresql else "not installed")
    pool = f"installed (package {f.pgpool})" if f.pgpool else "not installed"
    return f"{f.remote.host.name} ({f.remote.host.role})\n" + fields([
        (f"{p.options['interface']} inet", f.inet or "none"),
        ("os", f.os),
        ("systemd", f.systemd),
        (f"postgresql-{v}", pg),
        (p.pgpool["package"], pool),
    ])


def check_host(f: Facts) -> None:
    p, host = f.remote.params, f.remote.host
    iface = p.options["interface"]
    expect(f.inet != "", f"{host.name} has no IPv4 address on {iface}.",
           f"set options.interface to the interface that carries {host.address} (`ip a` on the host).")
    expect(f.address == host.address,
           f"{host.name}'s {iface} address is {f.address}, but the parameters say {host.address}.",
           "correct hosts.*.address in the parameter file (or options.interface).")
    expect(f.systemd in ("running", "degraded"),
           f"{host.name}: systemd says {f.systemd!r}; the guide's steps use systemctl.",
           "boot the host with systemd as init, and check `systemctl --failed`.")
    if host.role in ("primary", "standby"):
        v = p.postgres["version"]
        expect(f.postgresql != "",
               f"PostgreSQL {v} is not installed on {host.name} (versions there: {f.postgresql_any or 'none'}).",
               f"set postgres.version to the installed major version, or install postgresql-{v} on {host.name}.")
        expect(f.cluster in ("online", "down"),
               f"{host.name} has no cluster {v}/{p.postgres['cluster']}.",
               f"create it (pg_createcluster {v} {p.postgres['cluster']}) or set postgres.cluster.")


def check_sudo(remote: Remote) -> str:
    who = remote.sudo("id -un", reads_only=True).stdout.strip()
    expect(who == "root", f"sudo on {remote.host.name} runs as {who!r}, not root.",
           "give the admin user sudo rights (the guide runs every change with sudo).")
    return "works"


# --- reachability ------------------------------------------------------------------------
def probe_from_host(remote: Remote, address: str, port: int) -> str:
    r = remote.run(f"timeout 3 bash -c '</dev/tcp/{address}/{port}' 2>&1", check=False, reads_only=True)
    if r.ok:
        return "listening"
    if "refused" in r.stdout:
        return "reachable, not listening yet"
    if r.exit_code == 124:
        return "FILTERED (timed out)"
    return f"UNREACHABLE ({r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.exit_code})"


def probe_from_here(env: Hosts, address: str, port: int) -> str:
    host = env.params.host(address)
    if env.params.is_lab:
        hostmod.require_lab_route(env.params, host)
    try:
        with socket.create_connection((address, port), timeout=3):
            return "listening"
    except ConnectionRefusedError:
        return "reachable, not listening yet"
    except TimeoutError:
        return "FILTERED (timed out)"
    except OSError as e:
        return f"UNREACHABLE ({e.strerror})"


def paths_needed(env: Hosts) -> list[tuple[str, Remote | None, Remote, int, str]]:
    """(why, from, to, port, the step that opens the port where ufw is active). from=None: this machine."""
    pg, pool = env.params.postgres["port"], env.params.pgpool["port"]
    paths = [("base backup and WAL streaming", s, env.primary, pg, "Step 4") for s in env.standbys]
    paths += [("pgpool to its backends", env.pgpool, env.primary, pg, "Step 4")]
    paths += [("pgpool to its backends", env.pgpool, s, pg, "Step 26") for s in env.standbys]
    paths += [("clients to pgpool", None, env.pgpool, pool, "Step 33")]
    return paths


def check_paths(env: Hosts) -> list[tuple[str, str, str, str]]:
    rows = []
    for why, src, dst, port, opener in paths_needed(env):
        state = (probe_from_here(env, dst.host.address, port) if src is None
                 else probe_from_host(src, dst.host.address, port))
        if state.startswith("FILTERED") and system.ufw_state(dst) == "active":
            state = f"filtered by ufw ({opener} opens it)"
        rows.append((src.host.name if src else "this machine", f"{dst.host.name}:{port}", state, why))
        expect(not state.startswith(("FILTERED", "UNREACHABLE")),
               f"{rows[-1][0]} cannot reach {dst.host.label} on port {port}: {state}.",
               f"open port {port} on {dst.host.name} (the guide's Step 4: `sudo ufw allow {port}/tcp`) "
               "and check the routing between the hosts.")
    return rows


# --- what Part 1 may clone ---------------------------------------------------------------------
def check_clones(env: Hosts) -> list[tuple[str, str, str]]:
    """Per standby: will Part 1 clone it, and the proof read from the hosts (lib.clone_guard).
    A standby that may not be cloned stops the run here, before Part 1 changes anything."""
    rows = clone_guard.choose(env)
    for s, allowed, why in rows:
        expect(allowed is not False, f"Part 1 would clear and clone {s.host.name}, but: {why}.", clone_guard.FIX)
    return [(s.host.name, "kept" if allowed is None else f"cloned from {env.primary.host.name}", why)
            for s, allowed, why in rows]


# --- secrets ------------------------------------------------------------------------------------
def check_secrets(env: Hosts) -> list[tuple[str, str, str]]:
    """Every secret is set, and where a role already has a password, the secret is that
    password: a run never silently replaces a password other clients use (unless
    options.reset_passwords). Reads only; no value is ever shown."""
    p = env.params
    sources = secrets.require_all(p)
    rows = []
    online = postgres.cluster_state(env.primary).startswith("online")
    for name in secrets.REQUIRED:
        variable = secrets.SECRETS[name][0]
        state = "(pool_passwd's key)"
        if name in secrets.ROLES:
            role, attributes = secrets.ROLES[name]
            if not online:
                state = f"{role}: not checked ({env.primary.host.name} is down)"
            else:
                differences = postgres.role_differences(env.primary, role, secrets.secret(name, p), attributes)
                wrong = differences is not None and "has another password" in differences
                expect(not wrong or p.options["reset_passwords"],
                       f"{variable} is not the password role {role} has on {env.primary.host.name}.",
                       f"set {variable} to the role's current password, or set options.reset_passwords: true "
                       "to replace it (clients using the old one will fail).")
                state = (f"{role}: not created yet" if differences is None else
                         f"{role}: will be replaced (options.reset_passwords)" if wrong else
                         f"{role}: no password yet" if "has no password" in differences else
                         f"{role}: matches")
        rows.append((variable, sources[variable], state))
    needs = [r.host.name for r in env.all if r.sudo_password_needed()]
    rows.append((secrets.SECRETS["sudo"][0], "needed on " + ", ".join(needs) if needs else "not needed",
                 "sudo works" if needs else "(sudo asks for none)"))
    return rows
