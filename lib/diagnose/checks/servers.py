"""The servers' own checks: running, one primary, the standbys in recovery, pointed at the primary and
streaming, and the WAL kept for their lag."""
from __future__ import annotations

import re

from lib.diagnose.checks.model import FAIL, WARN, Cluster, Finding, passed
from lib.conninfo import parse_conninfo
from lib.part1 import REPLICATION_ROLE


#: replay lag beyond this is reported (bytes of WAL the standby has not replayed)
LAG_WARN_BYTES = 16 * 1024 * 1024


def servers_running(c: Cluster) -> list[Finding]:
    out = []
    for h in c.servers:
        state = c.states[h.host.name]
        if state.startswith("online"):
            out.append(passed("server running", h.host.name, f"pg_lsclusters: {state} (systemctl's `active (exited)` "
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


def one_primary(c: Cluster) -> list[Finding]:
    writable = [h for h in c.servers if c.states[h.host.name] == "online"]
    if len(writable) <= 1:
        return [passed("one primary", "-", f"{len(writable)} server not in recovery")]
    names = ", ".join(h.host.name for h in writable)
    return [Finding("one primary", FAIL, "-", f"{names} all accept writes: a split brain",
                    symptom="writes may land on either server; the standby no longer follows the primary",
                    evidence=[f"{h.host.name}: pg_lsclusters online (not in recovery)" for h in writable],
                    cause="a standby was promoted (or lost standby.signal) while the primary kept running",
                    fix=["keep the server with the writes you want; stop the other and rejoin it as a standby "
                         "(notebook 04: rejoin, pg_rewind)"],
                    step="Step 10 (standby.signal)")]


def standbys_in_recovery(c: Cluster) -> list[Finding]:
    out = []
    data = c.params.postgres["data_dir"]
    for h in c.standbys:
        if not c.states[h.host.name].startswith("online"):
            continue
        in_recovery = c.value(h, "SELECT pg_is_in_recovery()")
        if in_recovery == "t":
            out.append(passed("standby in recovery", h.host.name, "pg_is_in_recovery() = t", guide_row="not in recovery"))
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


def standby_points_at_primary(c: Cluster) -> list[Finding]:
    out = []
    for h in c.standbys:
        if c.states[h.host.name] != "online,recovery":
            continue
        conninfo = c.value(h, "SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'") or ""
        fields = parse_conninfo(conninfo)
        host = fields.get("host", "")
        if host == c.params.primary.address:
            out.append(passed("standby points at primary", h.host.name, f"primary_conninfo host={host}",
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
                out.append(passed("standby streams", h.host.name,
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
            out.append(passed("wal_keep_size", c.primary.host.name,
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
