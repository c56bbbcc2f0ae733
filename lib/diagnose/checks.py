"""The checks of a diagnosis: each reads the hosts (lib.diagnose.readonly only) and returns
findings that say what is wrong, show the evidence quoted from the host, name the cause, the fix as
commands, and the guide step (and troubleshooting row) that sets it right.

The checks run in the order of CHECKS; each is one function of a Cluster, which caches what
several checks read (a file, a query) so that a diagnosis stays fast.
"""
from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from functools import cached_property

import psycopg

from lib import part1, part2, pgconf, pgpool_host, pgpoolconf
from lib.diagnose.readonly import ReadOnlyHost
from lib.part1 import REPLICATION_ROLE, parse_conninfo
from lib.pgpool_host import KEY_FILE, LOG_DIR, PCPPASS, PGPOOL_ROLE, POOL_PASSWD_ROLES
from lib.postgres import md5_mode

OK, WARN, FAIL = "OK", "WARN", "FAIL"
#: replay lag beyond this is reported (bytes of WAL the standby has not replayed)
LAG_WARN_BYTES = 16 * 1024 * 1024

#: the guide's two troubleshooting tables, row by row (what the reader looks up)
GUIDE_ROWS = {
    "pg_stat_replication empty": "`pg_stat_replication` is empty | Check Slave logs",
    "wrong master ip": "Wrong Master IP in backup | Re-run `pg_basebackup` with correct IP",
    "firewall 5432": "Firewall blocking port 5432 | `sudo ufw allow 5432/tcp` on Master",
    "wrong ip in pg_hba": "Wrong IP in `pg_hba.conf` | Add correct Slave IP to Master's `pg_hba.conf`",
    "not in recovery": "`pg_is_in_recovery()` returns `f` | `standby.signal` missing",
    "active (exited)": "`active (exited)` in systemctl | Normal on Ubuntu — check `sudo pg_lsclusters` instead",
    "valid password not found": "`valid password not found` | `pool_passwd` setting commented out in pgpool.conf",
    "failed to authenticate using SCRAM": "`failed to authenticate using SCRAM` | PostgreSQL using scram-sha-256, "
                                          "PgPool uses md5",
    "no pg_hba.conf entry": "`no pg_hba.conf entry for host` | VM3 IP not in pg_hba.conf of VM1 or VM2",
    "connection refused 5432": "`Connection refused` on port 5432 | `listen_addresses = localhost` on VM2",
    "SHOW pool_nodes error": "`SHOW pool_nodes` returns error | PgPool cannot reach backends",
}


@dataclass
class Finding:
    check: str
    status: str
    host: str
    summary: str                                  # one line, for the OK/WARN/FAIL list
    symptom: str = ""
    evidence: list[str] = field(default_factory=list)
    cause: str = ""
    fix: list[str] = field(default_factory=list)  # commands, as typed
    step: str = ""                                # the guide step that sets it right
    guide_row: str = ""                           # a key of GUIDE_ROWS

    def line(self) -> str:
        return f"  {self.status:<4}  {self.check:<32} {self.host:<6} {self.summary}"

    def details(self) -> str:
        out = [f"{self.status} {self.check} on {self.host}: {self.summary}"]
        if self.symptom:
            out.append(f"  symptom:  {self.symptom}")
        out += [f"  evidence: {e}" for e in self.evidence[:1]] + [f"            {e}" for e in self.evidence[1:]]
        if self.cause:
            out.append(f"  cause:    {self.cause}")
        out += [f"  fix:      {c}" for c in self.fix[:1]] + [f"            {c}" for c in self.fix[1:]]
        if self.step:
            out.append(f"  step:     {self.step}")
        if self.guide_row:
            out.append(f"  guide:    Troubleshooting: {GUIDE_ROWS[self.guide_row]}")
        return "\n".join(out)


class Cluster:
    """The hosts, read-only, and what the checks share."""

    def __init__(self, env):
        self.params = env.params
        self.primary = ReadOnlyHost(env.primary)
        self.standbys = [ReadOnlyHost(s) for s in env.standbys]
        self.pgpool = ReadOnlyHost(env.pgpool)
        self.servers = [self.primary, *self.standbys]
        self._queries: dict = {}
        self.reached: dict = {}          # pg_isready answers, by (from, to address, port)

    @property
    def hosts(self) -> list[ReadOnlyHost]:
        return [*self.servers, self.pgpool]

    def query(self, host: ReadOnlyHost, sql: str, superuser_only: str = "") -> list[list[str]] | None:
        key = (host.host.name, sql)
        if key not in self._queries:
            self._queries[key] = host.query(sql, superuser_only=superuser_only)
        return self._queries[key]

    def value(self, host: ReadOnlyHost, sql: str) -> str | None:
        rows = self.query(host, sql)
        return rows[0][0] if rows else None

    def state(self, host: ReadOnlyHost) -> str:
        """pg_lsclusters' status: online, online,recovery, down, …"""
        p = self.params.postgres
        out = host.read(["pg_lsclusters", "--no-header", str(int(p["version"])), p["cluster"]]).stdout.split()
        return out[3] if len(out) > 3 else "absent"

    @cached_property
    def states(self) -> dict[str, str]:
        return {h.host.name: self.state(h) for h in self.servers}

    def log_tail(self, host: ReadOnlyHost, lines: int = 40) -> list[str]:
        out = host.read(["tail", "-n", str(lines), self.params.postgres["log_file"]])
        return out.stdout.splitlines() if out.ok else []

    def conf_dir(self) -> str:
        return self.params.pgpool["conf_dir"]

    def service(self, action: str, of: str) -> str:
        """`sudo systemctl ACTION UNIT` for the servers' (of="postgres") or pgpool's unit, as the parameters name it."""
        return f"sudo systemctl {action} {self.params.postgres['service'] if of == 'postgres' else self.params.pgpool['service']}"

    @cached_property
    def pgpool_wanted(self) -> dict:
        """pgpool.conf's settings as Step 30 writes them, for the nodes in the order pgpool has them."""
        text = self.pgpool_conf_text
        return pgpool_host.pgpool_settings(self.params, pgpool_host.backend_hosts(self.params, text), text)

    @cached_property
    def pcp_nodes(self) -> tuple[list[dict], str]:
        return _nodes_by_pcp(self)

    @cached_property
    def pgpool_conf_text(self) -> str:
        return self.pgpool.file(f"{self.conf_dir()}/pgpool.conf") or ""

    @cached_property
    def pgpool_conf(self) -> dict[str, str]:
        return pgpoolconf.active_settings(self.pgpool_conf_text)

    def hba_rules(self, host: ReadOnlyHost) -> list[list[str]] | None:
        """pg_hba.conf as the server parses it now (the file on disk, not what it has loaded)."""
        return self.query(host, "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','), "
                                "coalesce(address, ''), coalesce(netmask, ''), auth_method, coalesce(error, '') "
                                "FROM pg_hba_file_rules ORDER BY line_number",
                          superuser_only="pg_hba_file_rules: superusers only")

    def conf_path(self, name: str) -> str:
        """A server's configuration file: the same path on every server (postgres.conf_dir)."""
        return f"{self.params.postgres['conf_dir']}/{name}"


def allows(rules: list[list[str]], database: str, user: str, address: str) -> list[str] | None:
    """The first pg_hba rule that matches a TCP connection, as fields, or None."""
    for kind, dbs, users, addr, mask, method, _ in rules:
        if not kind.startswith("host"):
            continue
        names = set(dbs.split(","))
        if database == "replication":                 # `all` does not match a replication connection
            if "replication" not in names:
                continue
        elif not ({database, "all", "sameuser"} & names):
            continue
        if not ({user, "all"} & set(users.split(","))):
            continue
        try:
            net = ipaddress.ip_network(f"{addr}/{mask}" if mask else addr, strict=False) if addr not in ("all", "") \
                else None
        except ValueError:
            continue
        if addr == "all" or (net is not None and ipaddress.ip_address(address) in net):
            return [kind, dbs, users, addr, mask, method]
    return None


# --- the checks ----------------------------------------------------------------------------------------
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def _ok(name, host, summary, **kw) -> Finding:
    return Finding(name, OK, host, summary, **kw)


@check
def servers_running(c: Cluster) -> list[Finding]:
    out = []
    for h in c.servers:
        state = c.states[h.host.name]
        if state.startswith("online"):
            out.append(_ok("server running", h.host.name, f"pg_lsclusters: {state} (systemctl's `active (exited)` "
                                                          "is normal for the postgresql umbrella unit)",
                           guide_row="active (exited)"))
            continue
        p = c.params.postgres
        out.append(Finding("server running", FAIL, h.host.name, f"the cluster is {state}",
                           symptom="clients and standbys cannot connect; systemctl may still say `active (exited)`",
                           evidence=[f"pg_lsclusters: {state}", *c.log_tail(h, 3)],
                           cause="PostgreSQL is stopped or failed to start (its log says why)",
                           fix=[f"sudo tail -30 {p['log_file']}", c.service("start", "postgres")],
                           step="Step 5 (primary) / Step 11 (standby)", guide_row="active (exited)"))
    return out


@check
def one_primary(c: Cluster) -> list[Finding]:
    writable = [h for h in c.servers if c.states[h.host.name] == "online"]
    if len(writable) <= 1:
        return [_ok("one primary", "-", f"{len(writable)} server not in recovery")]
    names = ", ".join(h.host.name for h in writable)
    return [Finding("one primary", FAIL, "-", f"{names} all accept writes: a split brain",
                    symptom="writes may land on either server; the standby no longer follows the primary",
                    evidence=[f"{h.host.name}: pg_lsclusters online (not in recovery)" for h in writable],
                    cause="a standby was promoted (or lost standby.signal) while the primary kept running",
                    fix=["keep the server with the writes you want; stop the other and rejoin it as a standby "
                         "(notebook 04: rejoin, pg_rewind)"],
                    step="Step 10 (standby.signal)")]


@check
def standbys_in_recovery(c: Cluster) -> list[Finding]:
    out = []
    data = c.params.postgres["data_dir"]
    for h in c.standbys:
        if not c.states[h.host.name].startswith("online"):
            continue
        in_recovery = c.value(h, "SELECT pg_is_in_recovery()")
        if in_recovery == "t":
            out.append(_ok("standby in recovery", h.host.name, "pg_is_in_recovery() = t", guide_row="not in recovery"))
            continue
        signal = h.read(["test", "-f", f"{data}/standby.signal"], user="postgres").ok
        out.append(Finding("standby in recovery", FAIL, h.host.name, "pg_is_in_recovery() = f: it runs as a primary",
                           symptom="it accepts writes and does not replay the primary's",
                           evidence=["pg_is_in_recovery() = f",
                                     f"{data}/standby.signal: {'present' if signal else 'missing'}"],
                           cause="standby.signal missing" if not signal else "it was promoted",
                           fix=[f"sudo -u postgres touch {data}/standby.signal",
                                c.service("restart", "postgres"),
                                "(if it took writes of its own: re-clone it, Steps 7-11)"],
                           step="Step 10", guide_row="not in recovery"))
    return out


@check
def standby_points_at_primary(c: Cluster) -> list[Finding]:
    out = []
    for h in c.standbys:
        if c.states[h.host.name] != "online,recovery":
            continue
        conninfo = c.value(h, "SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'") or ""
        fields = parse_conninfo(conninfo)
        host = fields.get("host", "")
        if host == c.params.primary.address:
            out.append(_ok("standby points at primary", h.host.name, f"primary_conninfo host={host}",
                           guide_row="wrong master ip"))
            continue
        out.append(Finding("standby points at primary", FAIL, h.host.name,
                           f"primary_conninfo names host={host or '(none)'}, the primary is {c.params.primary.address}",
                           symptom="the standby does not stream; pg_stat_replication on the primary lacks it",
                           evidence=[f"SHOW primary_conninfo: host={host or '(none)'} user={fields.get('user', '')}"],
                           cause="the base backup (pg_basebackup -R) was taken with another address",
                           fix=[f"sudo -u postgres psql -c \"ALTER SYSTEM SET primary_conninfo = 'host="
                                f"{c.params.primary.address} port={c.params.postgres['port']} user={REPLICATION_ROLE} "
                                f"application_name={h.host.name} passfile=/var/lib/postgresql/.pgpass'\"",
                                c.service("restart", "postgres")],
                           step="Steps 9-10", guide_row="wrong master ip"))
    return out


#: what a standby's log says when it cannot stream, and what it means
LOG_CAUSES = [
    ("no pg_hba.conf entry", "the primary's pg_hba.conf has no replication line for this standby",
     "wrong ip in pg_hba", "Step 3"),
    ("password authentication failed", "the replication password differs from the one the standby sends",
     "pg_stat_replication empty", "Step 1 / Step 10"),
    ("has already been removed", "the primary removed WAL the standby still needs (wal_keep_size too small "
     "for the lag); the standby must be cloned again", "pg_stat_replication empty", "Steps 7-11"),
    ("Connection refused", "nothing listens on the primary's port for this address (listen_addresses, or the "
     "server is down)", "firewall 5432", "Step 2"),
    ("timeout expired", "the primary's port does not answer: a firewall drops it, or the host is down",
     "firewall 5432", "Step 4"),
    ("No route to host", "the primary's address is unreachable: a firewall rejects it, or a wrong address",
     "firewall 5432", "Step 4"),
]


def streaming_rows(c: Cluster) -> list[list[str]]:
    """The primary's pg_stat_replication: address, application_name, state, replay lag in bytes."""
    if c.states[c.primary.host.name] != "online":
        return []
    return c.query(c.primary, "SELECT host(client_addr), application_name, state, "
                              "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint "
                              "FROM pg_stat_replication") or []


@check
def standbys_stream(c: Cluster) -> list[Finding]:
    if c.states[c.primary.host.name] != "online":
        return []
    rows = streaming_rows(c)
    by_addr = {r[0]: r for r in rows}
    out = []
    for h in c.standbys:
        row = by_addr.get(h.host.address)
        if row and row[2] == "streaming":
            lag = int(row[3])
            if lag > LAG_WARN_BYTES:
                out.append(Finding("standby streams", WARN, h.host.name, f"streaming, {lag // 1024} kB behind in replay",
                                   evidence=[f"{c.primary.host.name}: pg_stat_replication: {'|'.join(row)}"],
                                   cause="the standby replays slower than the primary writes, or a long query "
                                         "on it holds replay back", fix=["watch replay_lag in pg_stat_replication"],
                                   step="Step 12"))
            else:
                out.append(_ok("standby streams", h.host.name,
                               f"streaming, replay less than {LAG_WARN_BYTES // 1024 // 1024} MB behind",
                               guide_row="pg_stat_replication empty"))
            continue
        log = c.log_tail(h)
        errors = [l for l in log if re.search(r"FATAL|ERROR", l)][-3:]
        cause, row_key, step = "the standby's log below says why", "pg_stat_replication empty", "Steps 7-12"
        for needle, meaning, key, where in LOG_CAUSES:
            if any(needle in l for l in errors):
                cause, row_key, step = meaning, key, where
                break
        out.append(Finding("standby streams", FAIL, h.host.name,
                           f"not in {c.primary.host.name}'s pg_stat_replication"
                           + (f" (state {row[2]})" if row else ""),
                           symptom="pg_stat_replication on the primary is empty (or lacks this standby)",
                           evidence=[f"{c.primary.host.name}: pg_stat_replication has {len(rows)} row(s)",
                                     *[f"{h.host.name}: {l[-160:]}" for l in errors]],
                           cause=cause, fix=[f"sudo tail -30 {c.params.postgres['log_file']}   # on {h.host.name}"],
                           step=step, guide_row=row_key))
    return out


@check
def replication_allowed(c: Cluster) -> list[Finding]:
    rules = c.hba_rules(c.primary)
    if rules is None:
        return []
    out = []
    for h in c.standbys:
        rule = allows(rules, "replication", REPLICATION_ROLE, h.host.address)
        if rule and rule[-1] != "reject":
            out.append(_ok("pg_hba: standby replicates", c.primary.host.name,
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


@check
def pgpool_allowed(c: Cluster) -> list[Finding]:
    out = []
    address = c.params.pgpool_host.address
    for h in c.servers:
        rules = c.hba_rules(h)
        if rules is None:
            continue
        rule = allows(rules, "postgres", PGPOOL_ROLE, address)
        if rule and rule[-1] != "reject":
            out.append(_ok("pg_hba: pgpool connects", h.host.name, f"{address} matches `{' '.join(x for x in rule if x)}`",
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


@check
def listen_addresses(c: Cluster) -> list[Finding]:
    out = []
    for h in c.servers:
        rows = c.query(h, "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = 'listen_addresses'")
        if not rows:
            continue
        value, source = rows[0]
        if value.strip() in ("*", "0.0.0.0") or h.host.address in value:
            out.append(_ok("listen_addresses", h.host.name, f"listen_addresses = '{value}'",
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


def _isready(c: "Cluster", frm: ReadOnlyHost, to, port: int) -> tuple[int, str]:
    """pg_isready from one host to another, asked once per diagnosis and pair."""
    key = (frm.host.name, to.address, port)
    if key not in c.reached:
        out = frm.read(["pg_isready", "-h", to.address, "-p", str(port), "-t", "2"], user="postgres")
        c.reached[key] = (out.exit_code, (out.stdout or out.stderr).strip())
    return c.reached[key]


@check
def ports_reachable(c: Cluster) -> list[Finding]:
    """pg_isready: 0 accepting, 1 rejecting (starting/stopping), 2 no response, 3 no attempt."""
    port = int(c.params.postgres["port"])
    pairs = [(s, c.params.primary, "standby to primary", "firewall 5432") for s in c.standbys] + \
            [(c.pgpool, h.host, "pgpool to server", "SHOW pool_nodes error") for h in c.servers]
    out = []
    for frm, to, what, row in pairs:
        code, said = _isready(c, frm, to, port)
        name = f"port {port}: {what}"
        if code in (0, 1):
            out.append(_ok(name, frm.host.name, f"{to.name}:{port} answers ({said.split(' - ')[-1]})", guide_row=row))
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


@check
def pool_passwd_configured(c: Cluster) -> list[Finding]:
    conf = c.pgpool_conf
    name = conf.get("pool_passwd", "")
    path = f"{c.conf_dir()}/pgpool.conf"
    if not name:
        return [Finding("pool_passwd configured", FAIL, c.pgpool.host.name, "pool_passwd is not set in pgpool.conf",
                        symptom="clients get `valid password not found`",
                        evidence=[f"{path}: no uncommented `pool_passwd = …` line"],
                        cause="the pool_passwd setting is commented out (or empty)",
                        fix=[f"sudo sed -i \"s/^#\\?pool_passwd.*/pool_passwd = 'pool_passwd'/\" {path}",
                             c.service("restart", "pgpool")],
                        step="Step 30 / Step 32", guide_row="valid password not found")]
    entries = (c.pgpool.file(f"{c.conf_dir()}/{name}") or "").splitlines()
    users = {e.split(":", 1)[0]: e.split(":", 1)[1] if ":" in e else "" for e in entries if e.strip()}
    out = [_ok("pool_passwd configured", c.pgpool.host.name, f"pool_passwd = '{name}'",
               guide_row="valid password not found")]
    prefix = "md5" if md5_mode(c.params) else "AES"
    for user in POOL_PASSWD_ROLES:
        stored = users.get(user)
        if stored is None:
            out.append(Finding("pool_passwd entry", FAIL, c.pgpool.host.name, f"{user} is missing from {name}",
                               symptom=f"`valid password not found` when {user} connects through pgpool",
                               evidence=[f"{c.conf_dir()}/{name}: users {', '.join(sorted(users)) or '(none)'}"],
                               cause=f"pool_passwd has no entry for {user}",
                               fix=[f"sudo pg_enc -m -k {KEY_FILE} -f {path} -u {user} -p" if prefix == "AES"
                                    else f"sudo pg_md5 -m -f {path} -u {user} -p"],
                               step="Step 32", guide_row="valid password not found"))
        elif not stored.startswith(prefix):
            out.append(Finding("pool_passwd entry", FAIL, c.pgpool.host.name,
                               f"{user}'s entry is {stored[:3]}…, this cluster needs {prefix} entries",
                               symptom="`failed to authenticate using SCRAM` (or md5) through pgpool",
                               evidence=[f"{c.conf_dir()}/{name}: {user}:{stored[:3]}…"],
                               cause=f"auth_method {c.params.postgres['auth_method']} needs {prefix} entries in pool_passwd",
                               fix=["provision again (Step 32), or pg_enc/pg_md5 as the guide shows"],
                               step="Step 32", guide_row="failed to authenticate using SCRAM"))
        else:
            out.append(_ok("pool_passwd entry", c.pgpool.host.name, f"{user}: {prefix} entry",
                           guide_row="valid password not found"))
    if prefix == "AES":
        key = c.pgpool.read(["stat", "-c", "%U %a", KEY_FILE])
        if not key.ok or key.stdout.split() != ["postgres", "600"]:
            out.append(Finding(".pgpoolkey", FAIL, c.pgpool.host.name,
                               f"{KEY_FILE} is {'missing' if not key.ok else key.stdout.strip()}",
                               symptom="pgpool cannot decrypt the AES entries: `failed to authenticate using SCRAM`",
                               evidence=[f"stat {KEY_FILE} → {key.stdout.strip() or key.stderr.strip()}"],
                               cause="the key that decrypts pool_passwd is missing or not postgres's alone (600)",
                               fix=[f"sudo chown postgres:postgres {KEY_FILE} && sudo chmod 600 {KEY_FILE}",
                                    "or provision again (Step 32)"], step="Step 32",
                               guide_row="failed to authenticate using SCRAM"))
        else:
            out.append(_ok(".pgpoolkey", c.pgpool.host.name, f"{KEY_FILE}: postgres, 600"))
    return out


def _nodes_by_pcp(c: Cluster) -> tuple[list[dict], str]:
    """pcp_node_info of every node (the pcp password from ~postgres/.pcppass), or the error."""
    p = c.params.pgpool
    nodes = []
    for i in range(len(c.servers)):
        out = c.pgpool.read(["pcp_node_info", "-h", "localhost", "-p", str(p["pcp_port"]), "-U", PGPOOL_ROLE, "-w",
                             "-v", "-n", str(i)], user="postgres")
        if not out.ok:
            return [], (out.stderr or out.stdout).strip()
        # -v: "Name : value" lines, the same names in pgpool 4.3 and later
        info = {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in out.stdout.splitlines()) if v}
        nodes.append({"node_id": i, "hostname": info.get("Hostname", ""), "status": info.get("Status Name", ""),
                      "role": info.get("Role", ""), "pg_role": info.get("Backend Role", ""),
                      "pg_status": info.get("Backend Status Name", ""), "weight": info.get("Weight", "")})
    return nodes, ""


@check
def pgpool_nodes(c: Cluster) -> list[Finding]:
    nodes, error = c.pcp_nodes
    if error:
        said = " / ".join(l.strip() for l in error.splitlines() if l.strip())[-240:]
        auth = "authentication" in said.lower() or "password" in said.lower()
        return [Finding("pcp", FAIL, c.pgpool.host.name, "pcp_node_info fails",
                        evidence=[f"pcp_node_info → {said}"],
                        cause=("the pcp password in ~postgres/.pcppass does not match pcp.conf" if auth
                               else "pgpool is not running, or pcp listens elsewhere"),
                        fix=[f"check {c.conf_dir()}/pcp.conf (user:md5 of the password) and {PCPPASS} "
                             "(host:port:user:password, mode 600)" if auth else c.service("status", "pgpool")],
                        step="Step 32" if auth else "Step 33", guide_row="" if auth else "SHOW pool_nodes error")]
    out = []
    by_address = {h.host.address: h for h in c.servers}
    for n in nodes:
        server = by_address.get(n["hostname"])
        name = server.host.name if server else n["hostname"]
        state = c.states.get(name, "")
        actual = "primary" if state == "online" else "standby" if state == "online,recovery" else "down"
        if n["status"] == "down" and actual != "down":
            reachable = server is None or _isready(c, c.pgpool, server.host, int(c.params.postgres["port"]))[0] in (0, 1)
            streams = actual != "standby" or server is None or any(
                r[0] == server.host.address and r[2] == "streaming" for r in streaming_rows(c))
            if not reachable:
                cause, fix = (f"pgpool cannot reach {name} (the port finding above), so it detached it",
                              ["fix what keeps pgpool from reaching it; auto_failback then attaches it again"])
            elif not streams:
                cause, fix = (f"{name} does not stream from the primary (the standby-streams finding above)",
                              ["fix its replication first; auto_failback then attaches it again"])
            else:
                cause, fix = ("pgpool detached it (a failure or a restart) and keeps it down (pgpool_status)",
                              [f"sudo -u postgres pcp_attach_node -h localhost -p {c.params.pgpool['pcp_port']} "
                               f"-U {PGPOOL_ROLE} -w -n {n['node_id']}"])
            out.append(Finding("pgpool node status", FAIL, c.pgpool.host.name,
                               f"node {n['node_id']} ({name}) is down in pgpool while its server runs ({actual})",
                               symptom="load balancing skips it; SHOW pool_nodes: status down, pg_status up",
                               evidence=[f"pcp_node_info -n {n['node_id']}: status {n['status']}, role {n['role']}",
                                         f"{name}: pg_lsclusters {state}"],
                               cause=cause, fix=fix, step="Step 34"))
        elif n["status"] != "down" and actual != "down" and n["role"] != actual:
            out.append(Finding("pgpool node role", FAIL, c.pgpool.host.name,
                               f"pgpool takes node {n['node_id']} ({name}) for the {n['role']}; it is the {actual}",
                               evidence=[f"pcp_node_info -n {n['node_id']}: role {n['role']}", f"{name}: {state}"],
                               cause="pgpool has not found the primary again after a change of roles",
                               fix=[c.service("restart", "pgpool")], step="Step 33"))
        else:
            status = "up" if n["status"] == "waiting" else n["status"]       # waiting: up, no session used it yet
            out.append(_ok("pgpool node status", c.pgpool.host.name,
                           f"node {n['node_id']} ({name}): {status}, {n['role']}", guide_row="SHOW pool_nodes error"))
    return out


@check
def pgpool_settings(c: Cluster) -> list[Finding]:
    """The settings without which pgpool fails its job, against the values Step 30 writes."""
    conf, path, out = c.pgpool_conf, f"{c.conf_dir()}/pgpool.conf", []
    host, wanted = c.pgpool.host.name, c.pgpool_wanted

    def as_step_30(name) -> list[str]:
        return [f"sudo sed -i \"s/^#\\?{name}\\s*=.*/{name} = {pgpoolconf.render(wanted[name])}/\" {path}",
                c.service("restart", "pgpool")]

    def setting(name, ok, summary_bad, cause, fix, step, status=FAIL):
        value = conf.get(name, "")
        if ok(value):
            out.append(_ok(name, host, f"{name} = {value or repr('')}"))
        else:
            out.append(Finding(name, status, host, summary_bad.format(value=value or "''"),
                               evidence=[f"{path}: {name} = {value or '(not set)'}"], cause=cause, fix=fix, step=step))
    setting("health_check_period", lambda v: v.isdigit() and int(v) > 0,
            "health_check_period = {value}: no health check",
            "a server that stops while no client uses it is never noticed, so no failover happens",
            as_step_30("health_check_period"), "Step 30")
    setting("failover_command", bool, "no failover_command: a stopped primary is never replaced",
            "pgpool detaches the primary and promotes nothing; every client is refused",
            ["provision again (notebook 03, Steps 40-43)"], "Step 42")
    setting("load_balance_mode", lambda v: v == "on", "load_balance_mode = {value}: every read goes to the primary",
            "load balancing is off", as_step_30("load_balance_mode"), "Step 30", status=WARN)
    # node i is the server pgpool.conf names as node i, whichever role it has now
    for i, server in enumerate(pgpool_host.backend_hosts(c.params, c.pgpool_conf_text)):
        name = f"backend_weight{i}"
        if not wanted[name]:
            continue                    # the parameters give it no reads
        setting(name, lambda v: v not in ("0", "0.0"), f"{name} = {{value}}: node {i} ({server.name}) gets no reads",
                "its weight is 0", as_step_30(name), "Step 30", status=WARN)
    return out


@check
def capacity(c: Cluster) -> list[Finding]:
    conf = c.pgpool_conf
    try:
        children, pool = int(conf.get("num_init_children", "32")), int(conf.get("max_pool", "4"))
    except ValueError:
        return []
    out = []
    for h in c.servers:
        rows = c.query(h, "SELECT current_setting('max_connections')::int - "
                          "current_setting('superuser_reserved_connections')::int")
        if not rows:
            continue
        room = int(rows[0][0])
        if children * pool <= room:
            out.append(_ok("capacity", h.host.name, f"num_init_children × max_pool = {children * pool} ≤ {room}"))
        else:
            out.append(Finding("capacity", WARN, h.host.name,
                               f"num_init_children × max_pool = {children} × {pool} = {children * pool} > {room}",
                               symptom="under load: FATAL: sorry, too many clients already",
                               evidence=[f"pgpool.conf: num_init_children = {children}, max_pool = {pool}",
                                         f"{h.host.name}: max_connections - superuser_reserved_connections = {room}"],
                               cause="pgpool may open more backend connections than the server allows",
                               fix=["lower max_pool (pgpool.parameters) or raise max_connections"], step="Step 30"))
    return out


@check
def clients_get_in(c: Cluster) -> list[Finding]:
    """What a client sees: a login through pgpool and `SHOW pool_nodes`, the guide's first command."""
    from lib import db
    from lib.diagnose.readonly import check_sql
    from lib.pgpool_client import pool_nodes, pool_show
    from lib.secrets import secret
    p, sql = c.params, "SHOW pool_nodes"
    check_sql(sql)
    shown = f"psql -h {p.pgpool_host.address} -p {p.pgpool['port']} -U postgres -c \"{sql}\""
    c.pgpool.transcript.append(f"this machine (a client) $ {shown}")
    try:
        with db.connect(p, p.pgpool_host, user="postgres", password=secret("postgres", p), port=p.pgpool["port"]) as conn:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            nodes = pool_nodes(conn)
            check_sql("SHOW pool_processes")
            c.pgpool.transcript.append(f"this machine (a client) $ {shown.replace(sql, 'SHOW pool_processes')}")
            processes = pool_show(conn, "pool_processes")
    except ConnectionError as e:
        said = str(e)
        row = ("valid password not found" if "valid password not found" in said else
               "failed to authenticate using SCRAM" if "authenticat" in said else
               "no pg_hba.conf entry" if "pg_hba" in said else "SHOW pool_nodes error")
        return [Finding("client through pgpool", FAIL, c.pgpool.host.name, "a client cannot log in through pgpool",
                        symptom=said.split(": ", 1)[-1][:200], evidence=[f"this machine $ {shown}", said[-300:]],
                        cause="see the findings above: pool_passwd, pg_hba, the servers, or pgpool itself",
                        fix=["fix the FAIL findings above; then: sudo journalctl -u pgpool2 --no-pager | tail -30"],
                        step="Steps 30-34", guide_row=row)]
    up = sum(n["status"] in ("up", "waiting") for n in nodes)
    return [_ok("client through pgpool", c.pgpool.host.name, f"{shown}: {up} of {len(nodes)} nodes up",
                guide_row="SHOW pool_nodes error"), children_free(c, processes)]


def children_free(c: Cluster, processes: list[dict]) -> Finding:
    """SHOW pool_processes: each pgpool child serves one client at a time; when none waits for a
    connection, a new client waits in the listen queue (num_init_children)."""
    host = c.pgpool.host.name
    if not processes or "status" not in processes[0]:
        return _ok("pgpool children", host, "SHOW pool_processes has no status column here: not judged")
    free = sum(1 for row in processes if (row["status"] or "").startswith("Wait for connection"))
    if free:
        return _ok("pgpool children", host, f"{free} of {len(processes)} children wait for a client")
    return Finding("pgpool children", WARN, host, f"all {len(processes)} children are busy: new clients wait",
                   symptom="connecting through pgpool hangs, then succeeds (or times out) under load",
                   evidence=[f"SHOW pool_processes: 0 of {len(processes)} in 'Wait for connection'"],
                   cause="more clients at once than num_init_children",
                   fix=["raise num_init_children (pgpool.num_init_children) within the servers' max_connections, "
                        "or pool connections in the application"], step="Step 30")


#: a server with a share p of the weights gets none of n sessions with probability (1 - p)^n; the
#: spread check opens enough sessions that this stays below 1e-6 (35 sessions at a share of 1/3)
SPREAD_FALSE_ALARM = 1e-6
#: the settings that send reads away from a server, at the values (pgpool's defaults) that do not;
#: user_redirect_preference_list and delay_threshold_by_time are in 4.6, not in 4.3
SPREAD_SETTINGS = {"database_redirect_preference_list": "", "app_name_redirect_preference_list": "",
                   "user_redirect_preference_list": "", "delay_threshold": "0", "delay_threshold_by_time": "0",
                   "disable_load_balance_on_write": "transaction"}


def spread_sessions(shares: dict[str, float]) -> int:
    smallest = min(s for s in shares.values() if s > 0)
    return 1 if smallest >= 1 else math.ceil(math.log(SPREAD_FALSE_ALARM) / math.log(1 - smallest))


@check
def reads_spread(c: Cluster) -> list[Finding]:
    """Reads go where pgpool.conf's weights send them: sessions of its own through pgpool, each
    asking which server answered (Step 38's way), judged only by a server that got none."""
    from lib import db, loadbalance
    from lib.diagnose.readonly import check_sql
    from lib.secrets import secret
    p, conf, host = c.params, c.pgpool_conf, c.pgpool.host.name
    nodes, error = c.pcp_nodes
    if conf.get("load_balance_mode") != "on" or error or not all(n["status"] in ("up", "waiting") for n in nodes):
        return []                       # the findings above say why reads cannot spread
    weights = {n["hostname"]: float(conf.get(f"backend_weight{n['node_id']}", "1") or 0) for n in nodes}
    total = sum(weights.values())
    if total <= 0:
        return []
    shares = {address: w / total for address, w in weights.items()}
    sessions, sql = spread_sessions(shares), "SELECT inet_server_addr()"
    check_sql(sql)
    c.pgpool.transcript.append(f"this machine (a client) $ psql -h {p.pgpool_host.address} -p {p.pgpool['port']} "
                               f"-U postgres -c \"{sql}\"   # × {sessions} sessions")

    def connect():
        conn = db.connect(p, p.pgpool_host, user="postgres", password=secret("postgres", p), port=p.pgpool["port"])
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        return conn
    try:
        counts, closed = loadbalance.sample_despite(connect, sessions, loadbalance.CONCURRENT,
                                                    survivable=(psycopg.OperationalError,))
    except ConnectionError:
        return []                       # clients_get_in reports a login that fails
    found = [_sessions_closed(c, closed, sessions)] if closed else []
    names = {h.host.address: h.host.name for h in c.servers}
    seen = ", ".join(f"{names.get(a, a)} {counts.get(a, 0)}" for a in shares)
    answered = sessions - len(closed)
    idle = [a for a, share in shares.items() if share > 0 and counts.get(a, 0) == 0]
    if not idle:
        return found + [_ok("reads spread", host, f"{sql} × {answered} sessions: every server with a weight served some")]
    if any((1 - shares[a]) ** answered > SPREAD_FALSE_ALARM for a in idle):
        return found                    # too few sessions answered to tell chance from a cause
    set_here = [f"pgpool.conf: {k} = {conf[k]}" for k, harmless in SPREAD_SETTINGS.items() if conf.get(k, harmless) != harmless]
    return found + [Finding("reads spread", WARN, host, f"{', '.join(names.get(a, a) for a in idle)} served none of "
                    f"{answered} read sessions", symptom="load balancing does nothing: the reads all land elsewhere",
                    evidence=[f"{sql} × {answered} sessions: {seen}",
                              *[f"{names.get(a, a)}: backend_weight {weights[a]:g} (a share of {shares[a]:.2f}; none of "
                                f"{answered} by chance: p = {(1 - shares[a]) ** answered:.0e})" for a in idle],
                              *set_here],
                    cause=("pgpool sends these reads elsewhere: the settings above" if set_here else
                           "no setting in pgpool.conf sends them elsewhere now: pgpool may still act on an earlier "
                           "configuration (seen after a change was undone with only a reload)"),
                    fix=([f"edit {c.conf_dir()}/pgpool.conf (compare with Step 30)"] if set_here else [])
                        + [c.service("restart", "pgpool")], step="Step 38")]


def _sessions_closed(c: Cluster, closed: list[Exception], sessions: int) -> Finding:
    """pgpool closed sessions that had logged in. Read the nodes again: a node pgpool detached while
    the check ran is the usual cause (its sr_check or health check found the node wrong or gone)."""
    errors = sorted({str(e).strip().splitlines()[0] for e in closed})
    before, _ = c.pcp_nodes
    after, error = _nodes_by_pcp(c)
    names = {h.host.address: h.host.name for h in c.servers}
    changed = [f"pcp_node_info -n {b['node_id']} ({names.get(b['hostname'], b['hostname'])}): "
               f"{b['status']} {b['role']} before, {a['status']} {a['role']} after"
               for b, a in zip(before, after) if (b["status"], b["role"]) != (a["status"], a["role"])]
    return Finding("sessions through pgpool", WARN, c.pgpool.host.name,
                   f"pgpool closed {len(closed)} of {sessions} read sessions after login",
                   symptom="statements fail with `server closed the connection unexpectedly`; a new session works",
                   evidence=[f"psycopg: {e}" for e in errors] + (changed or [f"pcp_node_info: {error}" if error else
                                                                         "pcp_node_info: no node changed"]),
                   cause=("pgpool detached a node while the check ran, and restarted the children that used it "
                          "(the findings above, read before, say what was wrong with the node)" if changed else
                          "pgpool restarted children while the check ran, with no change of node status"),
                   fix=["run the diagnosis again: it reads the nodes as pgpool now has them",
                        f"sudo grep -E 'degenerate|failover' {LOG_DIR}/pgpool.log | tail   "
                        f"# on {c.pgpool.host.name}"] if changed else
                       [f"sudo tail -50 {LOG_DIR}/pgpool.log   # on {c.pgpool.host.name}"],
                   step="Step 34")


def _pool_hba_path(c: Cluster) -> str:
    path = f"{c.conf_dir()}/{c.pgpool_conf.get('pool_hba_file', 'pool_hba.conf') or 'pool_hba.conf'}"
    return path if path.startswith("/") else f"{c.conf_dir()}/pool_hba.conf"


@check
def no_trust(c: Cluster) -> list[Finding]:
    """No line lets a client in without a credential: Debian ships pgpool's pool_hba.conf with `trust` for
    its socket and loopback, through which any account on that host is any role pool_passwd holds."""
    path, hosts = _pool_hba_path(c), [c.pgpool.host.name, *(s.host.name for s in c.servers)]
    found = [f"{c.pgpool.host.name}: {path}: {line}" for line in pgconf.trust_lines(c.pgpool.file(path) or "")]
    for s in c.servers:
        found += [f"{s.host.name}: pg_hba.conf: {' '.join(x for x in rule[:5] if x)} trust"
                  for rule in c.hba_rules(s) or [] if rule[5] == "trust"]
    if not found:
        return [_ok("no trust", ", ".join(hosts), "no pool_hba.conf or pg_hba.conf line lets a client in without a "
                                                   "password")]
    return [Finding("no trust", FAIL, ", ".join(sorted({f.split(":")[0] for f in found})),
                    f"{len(found)} line(s) let a client in without any password", evidence=found,
                    symptom="anyone who can reach that socket or address logs in as any role, the superuser included",
                    cause="the line's method is trust (Debian's pgpool package ships three)",
                    fix=["provision again (Step 31 turns pool_hba.conf's trust into a password), or edit the line's "
                         "method to scram-sha-256", f"{c.service('reload', 'pgpool')}   # or {c.service('reload', 'postgres')}, on a server"],
                    step="Step 31")]


@check
def pool_hba(c: Cluster) -> list[Finding]:
    """With enable_pool_hba, pgpool admits only clients that a line of pool_hba.conf matches."""
    if c.pgpool_conf.get("enable_pool_hba", "off") != "on":
        return [_ok("pool_hba", c.pgpool.host.name, "enable_pool_hba = off: pgpool checks no client address")]
    path = _pool_hba_path(c)
    clients = ipaddress.ip_network(c.params.pgpool["allowed_clients"], strict=False)
    lines = [l.split() for l in (c.pgpool.file(path) or "").splitlines() if l.strip() and not l.lstrip().startswith("#")]
    for f in lines:
        if len(f) >= 5 and f[0].startswith("host") and f[-1] != "reject":
            try:
                if clients.subnet_of(ipaddress.ip_network(f[3], strict=False)):
                    return [_ok("pool_hba", c.pgpool.host.name, f"clients from {clients} match `{' '.join(f)}`")]
            except (ValueError, TypeError):
                continue
    return [Finding("pool_hba", FAIL, c.pgpool.host.name, f"no pool_hba.conf line admits clients from {clients}",
                    symptom="clients get: pool_hba.conf: no pool_hba.conf entry for host",
                    evidence=[f"{path}: {len(lines)} lines, none for {clients}"],
                    cause="enable_pool_hba is on, and pool_hba.conf lacks a line for the clients' network",
                    fix=[f"echo '{part2.pool_hba_lines(c.params)[-1]}' | sudo tee -a {path}",
                         c.service("reload", "pgpool")], step="Step 31")]


@check
def wal_kept_for_lag(c: Cluster) -> list[Finding]:
    """A standby further behind than the WAL the primary keeps needs that WAL to be still there."""
    if c.states[c.primary.host.name] != "online":
        return []
    keep = c.value(c.primary, "SELECT setting::bigint * 1024 * 1024 FROM pg_settings WHERE name = 'wal_keep_size'")
    lag_rows = c.query(c.primary, "SELECT application_name, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), "
                                  "flush_lsn), 0)::bigint FROM pg_stat_replication") or []
    out = []
    for name, behind in lag_rows:
        if keep is None or int(behind) <= int(keep) // 2:
            out.append(_ok("wal_keep_size", c.primary.host.name,
                           f"{name} is within half of wal_keep_size ({int(keep or 0) // 1024 // 1024} MB)"))
        else:
            out.append(Finding("wal_keep_size", WARN, c.primary.host.name,
                               f"{name} is {int(behind) // 1024 // 1024} MB behind; wal_keep_size keeps "
                               f"{int(keep) // 1024 // 1024} MB",
                               evidence=[f"pg_stat_replication: {name} flush {behind} bytes behind"],
                               cause="if the lag grows past wal_keep_size the primary removes WAL the standby "
                                     "needs, and it must be cloned again",
                               fix=["raise wal_keep_size (Step 2) or use a replication slot"], step="Step 2"))
    return out
