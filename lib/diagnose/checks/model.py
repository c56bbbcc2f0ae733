"""What the checks share: a Finding, and the Cluster they read, which caches what several checks read
(a file, a query) so that a diagnosis stays fast."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property

from lib import pgpool_host, pgpoolconf
from lib.diagnose.readonly import ReadOnlyHost
from lib.pgpool_host import PGPOOL_ROLE, pcp_node
from lib.postgres import ClusterRow

OK, WARN, FAIL = "OK", "WARN", "FAIL"

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
        out = host.read(["pg_lsclusters", "--no-header", str(int(p["version"])), p["cluster"]])
        return ClusterRow.parse(out.stdout).state

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
        return nodes_by_pcp(self)

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


def passed(name, host, summary, **kw) -> Finding:
    """An OK finding."""
    return Finding(name, OK, host, summary, **kw)


def nodes_by_pcp(c: Cluster) -> tuple[list[dict], str]:
    """pcp_node_info of every node (the pcp password from ~postgres/.pcppass), or the error."""
    p = c.params.pgpool
    nodes = []
    for i in range(len(c.servers)):
        out = c.pgpool.read(["pcp_node_info", "-h", "localhost", "-p", str(p["pcp_port"]), "-U", PGPOOL_ROLE, "-w",
                             "-v", "-n", str(i)], user="postgres")
        if not out.ok:
            return [], (out.stderr or out.stdout).strip()
        nodes.append({**pcp_node(out.stdout, i), "node_id": i})
    return nodes, ""
