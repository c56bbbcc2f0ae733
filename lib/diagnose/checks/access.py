"""Who may connect where: pg_hba for the standbys and pgpool, the servers' listen_addresses, the ports
between the hosts, no `trust`, and pool_hba for pgpool's clients."""
from __future__ import annotations

import ipaddress

from lib import part1, part2, pgconf
from lib.diagnose.checks.model import FAIL, Cluster, Finding, allows, passed
from lib.diagnose.readonly import ReadOnlyHost
from lib.part1 import REPLICATION_ROLE
from lib.pgpool_host import PGPOOL_ROLE


def replication_allowed(c: Cluster) -> list[Finding]:
    rules = c.hba_rules(c.primary)
    if rules is None:
        return []
    out = []
    for h in c.standbys:
        rule = allows(rules, "replication", REPLICATION_ROLE, h.host.address)
        if rule and rule[-1] != "reject":
            out.append(passed("pg_hba: standby replicates", c.primary.host.name,
                           f"{h.host.name} matches `{' '.join(x for x in rule if x)}`", guide_row="wrong ip in pg_hba"))
            continue
        out.append(Finding("pg_hba: standby replicates", FAIL, c.primary.host.name,
                           f"no pg_hba.conf line lets {REPLICATION_ROLE} replicate from {h.host.address}",
                           symptom=f"{h.host.name}'s log: FATAL: no pg_hba.conf entry for replication connection",
                           evidence=[f"{c.conf_path('pg_hba.conf')}: no host line for replication "
                                     f"{REPLICATION_ROLE} {h.host.address}"],
                           cause="the standby's address is missing or wrong in the primary's pg_hba.conf",
                           fix=[f"echo '{part1.hba_replication_line(c.params, h.host.address)}' | sudo tee -a "
                                f"{c.conf_path('pg_hba.conf')}", c.service("reload", "postgres")],
                           step="Step 3", guide_row="wrong ip in pg_hba"))
    return out


def pgpool_allowed(c: Cluster) -> list[Finding]:
    out = []
    address = c.params.pgpool_host.address
    for h in c.servers:
        rules = c.hba_rules(h)
        if rules is None:
            continue
        rule = allows(rules, "postgres", PGPOOL_ROLE, address)
        if rule and rule[-1] != "reject":
            out.append(passed("pg_hba: pgpool connects", h.host.name, f"{address} matches `{' '.join(x for x in rule if x)}`",
                           guide_row="no pg_hba.conf entry"))
            continue
        out.append(Finding("pg_hba: pgpool connects", FAIL, h.host.name,
                           f"no pg_hba.conf line lets {PGPOOL_ROLE} in from the pgpool host {address}",
                           symptom="pgpool's log: FATAL: no pg_hba.conf entry for host",
                           evidence=[f"{c.conf_path('pg_hba.conf')}: no host line for {PGPOOL_ROLE} from {address}"],
                           cause="the pgpool host's address is missing from this server's pg_hba.conf",
                           fix=[*(f"echo '{line}' | sudo tee -a {c.conf_path('pg_hba.conf')}"
                                  for line in part2.pgpool_hba_records(c.params)), c.service("reload", "postgres")],
                           step="Step 23 (primary) / Step 26 (standby)", guide_row="no pg_hba.conf entry"))
    return out


def listen_addresses(c: Cluster) -> list[Finding]:
    out = []
    for h in c.servers:
        rows = c.query(h, "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = 'listen_addresses'")
        if not rows:
            continue
        value, source = rows[0]
        if value.strip() in ("*", "0.0.0.0") or h.host.address in value:
            out.append(passed("listen_addresses", h.host.name, f"listen_addresses = '{value}'",
                           guide_row="connection refused 5432"))
            continue
        # ALTER SYSTEM's postgresql.auto.conf overrides postgresql.conf: fix it where it is set
        fix = (["sudo -u postgres psql -c \"ALTER SYSTEM RESET listen_addresses\"   # it was set there"]
               if source.endswith("postgresql.auto.conf") else [])
        fix += [f"sudo sed -i \"s/^#\\?listen_addresses.*/listen_addresses = '*'/\" {c.conf_path('postgresql.conf')}",
                c.service("restart", "postgres")]
        out.append(Finding("listen_addresses", FAIL, h.host.name, f"listen_addresses = '{value}'",
                           symptom=f"`Connection refused` on port {c.params.postgres['port']} from the other hosts",
                           evidence=[f"SHOW listen_addresses → {value}" + (f"   (set in {source})" if source else "")],
                           cause="the server listens on localhost only", fix=fix,
                           step="Step 2 (primary) / Step 28 (standby)", guide_row="connection refused 5432"))
    return out


def isready(c: "Cluster", frm: ReadOnlyHost, to, port: int) -> tuple[int, str]:
    """pg_isready from one host to another, asked once per diagnosis and pair."""
    key = (frm.host.name, to.address, port)
    if key not in c.reached:
        out = frm.read(["pg_isready", "-h", to.address, "-p", str(port), "-t", "2"], user="postgres")
        c.reached[key] = (out.exit_code, (out.stdout or out.stderr).strip())
    return c.reached[key]


def ports_reachable(c: Cluster) -> list[Finding]:
    """pg_isready: 0 accepting, 1 rejecting (starting/stopping), 2 no response, 3 no attempt."""
    port = int(c.params.postgres["port"])
    pairs = [(s, c.params.primary, "standby to primary", "firewall 5432") for s in c.standbys] + \
            [(c.pgpool, h.host, "pgpool to server", "SHOW pool_nodes error") for h in c.servers]
    out = []
    for frm, to, what, row in pairs:
        code, said = isready(c, frm, to, port)
        name = f"port {port}: {what}"
        if code in (0, 1):
            out.append(passed(name, frm.host.name, f"{to.name}:{port} answers ({said.split(' - ')[-1]})", guide_row=row))
            continue
        state = c.states.get(to.name, "")
        listen = c.value(next(h for h in c.servers if h.host.address == to.address),
                         "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = 'listen_addresses'") \
            if state.startswith("online") else None
        cause = (f"{to.name} is {state}" if not state.startswith("online") else
                 f"{to.name} listens on '{listen}' only" if listen and listen != "*" else
                 f"a firewall drops {frm.host.name} → {to.name}:{port}")
        out.append(Finding(name, FAIL, frm.host.name, f"{to.name}:{port} does not answer",
                           symptom="connections time out or are refused",
                           evidence=[f"{frm.host.name} $ pg_isready -h {to.address} -p {port} → {said} (exit {code})"],
                           cause=cause,
                           fix=[f"sudo ufw allow from {frm.host.address} to any port {port} proto tcp   # on {to.name}"
                                if "firewall" in cause else "see the server's finding above"],
                           step="Step 4" if "firewall" in cause else "Step 2 / Step 28" if "listens" in cause
                           else "Step 5 / Step 11", guide_row=row))
    return out


def _pool_hba_path(c: Cluster) -> str:
    path = f"{c.conf_dir()}/{c.pgpool_conf.get('pool_hba_file', 'pool_hba.conf') or 'pool_hba.conf'}"
    return path if path.startswith("/") else f"{c.conf_dir()}/pool_hba.conf"


def no_trust(c: Cluster) -> list[Finding]:
    """No line lets a client in without a credential: Debian ships pgpool's pool_hba.conf with `trust` for
    its socket and loopback, through which any account on that host is any role pool_passwd holds."""
    path, hosts = _pool_hba_path(c), [c.pgpool.host.name, *(s.host.name for s in c.servers)]
    found = [f"{c.pgpool.host.name}: {path}: {line}" for line in pgconf.trust_lines(c.pgpool.file(path) or "")]
    for s in c.servers:
        found += [f"{s.host.name}: pg_hba.conf: {' '.join(x for x in rule[:5] if x)} trust"
                  for rule in c.hba_rules(s) or [] if rule[5] == "trust"]
    if not found:
        return [passed("no trust", ", ".join(hosts), "no pool_hba.conf or pg_hba.conf line lets a client in without a "
                                                   "password")]
    return [Finding("no trust", FAIL, ", ".join(sorted({f.split(":")[0] for f in found})),
                    f"{len(found)} line(s) let a client in without any password", evidence=found,
                    symptom="anyone who can reach that socket or address logs in as any role, the superuser included",
                    cause="the line's method is trust (Debian's pgpool package ships three)",
                    fix=["provision again (Step 31 turns pool_hba.conf's trust into a password), or edit the line's "
                         "method to scram-sha-256", f"{c.service('reload', 'pgpool')}   # or {c.service('reload', 'postgres')}, on a server"],
                    step="Step 31")]


def pool_hba(c: Cluster) -> list[Finding]:
    """With enable_pool_hba, pgpool admits only clients that a line of pool_hba.conf matches."""
    if c.pgpool_conf.get("enable_pool_hba", "off") != "on":
        return [passed("pool_hba", c.pgpool.host.name, "enable_pool_hba = off: pgpool checks no client address")]
    path = _pool_hba_path(c)
    clients = ipaddress.ip_network(c.params.pgpool["allowed_clients"], strict=False)
    lines = [l.split() for l in (c.pgpool.file(path) or "").splitlines() if l.strip() and not l.lstrip().startswith("#")]
    for f in lines:
        if len(f) >= 5 and f[0].startswith("host") and f[-1] != "reject":
            try:
                if clients.subnet_of(ipaddress.ip_network(f[3], strict=False)):
                    return [passed("pool_hba", c.pgpool.host.name, f"clients from {clients} match `{' '.join(f)}`")]
            except (ValueError, TypeError):
                continue
    return [Finding("pool_hba", FAIL, c.pgpool.host.name, f"no pool_hba.conf line admits clients from {clients}",
                    symptom="clients get: pool_hba.conf: no pool_hba.conf entry for host",
                    evidence=[f"{path}: {len(lines)} lines, none for {clients}"],
                    cause="enable_pool_hba is on, and pool_hba.conf lacks a line for the clients' network",
                    fix=[f"echo '{part2.pool_hba_lines(c.params)[-1]}' | sudo tee -a {path}",
                         c.service("reload", "pgpool")], step="Step 31")]
