"""May this host's cluster be stopped, cleared and cloned from the primary? (Steps 7-9)

Part 1 replaces a standby's data directory with a copy of the primary's. A parameter file's
word that a host is "the standby" is not proof: swapped or mistyped addresses would wipe the
real primary, or another server. So the hosts themselves must show that the clone loses
nothing. A host may be cloned when one of these holds, read from the host:

1. **Empty.** Its data directory holds nothing.
2. **Ours, interrupted.** An earlier run proved it clonable, stopped it, and left a marker
   beside the data directory (`<data_dir>.cloning`) naming the stopped cluster's system
   identifier and last checkpoint. The cluster is still down at that very checkpoint (nobody
   started it since), or it has no `global/pg_control` left (the run was killed while clearing
   it, or during the base backup, which copies pg_control last).
3. **A standby of this primary.** Same system identifier as the primary, in recovery, and not
   ahead of the primary's WAL position.
4. **Fresh.** Running, not in recovery, and holding nothing: no databases but `postgres`,
   `template0` and `template1`, no roles but the bootstrap superuser `postgres` and the
   built-in `pg_*` roles.
5. **Rebuild, and the primary is ahead.** `options.rebuild_standby: true`, the same system
   identifier, and the primary is at least as far as this host on both timeline and WAL
   position: it holds everything this host holds.

The primary must itself be a running primary (not in recovery). Everything else is refused,
before anything changes, with what was found and what to do.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from lib import postgres
from lib.show import CheckFailed, expect
from lib.wait import wait_until

MARKER_SUFFIX = ".cloning"
DEFAULT_DATABASES = {"postgres", "template0", "template1"}

FACTS = r"""
d={data_dir}; marker={marker}; fence={fence}
echo "machine_id=$(cat /etc/machine-id 2>/dev/null)"
echo "state=$(pg_lsclusters --no-header {cluster} 2>/dev/null | awk '{{print $4}}')"
if [ -d "$d" ]; then echo "entries=$(find "$d" -mindepth 1 -maxdepth 1 | wc -l)"; else echo "entries=0"; fi
[ -f "$d/global/pg_control" ] && echo "control=yes" || echo "control=no"
[ -f "$d/standby.signal" ] && echo "standby_signal=yes" || echo "standby_signal=no"
[ -f "$marker" ] && sed 's/^/marker_/' "$marker"
[ -f "$fence" ] && echo "fenced=yes"
if [ -f "$d/global/pg_control" ]; then
  LC_ALL=C runuser -u postgres -- {bindir}/pg_controldata -D "$d" 2>/dev/null | sed -n \
    -e 's/^Database system identifier: *\(.*\)/system_id=\1/p' \
    -e 's/^Database cluster state: *\(.*\)/control_state=\1/p' \
    -e "s/^Latest checkpoint location: *\(.*\)/checkpoint=\1/p" \
    -e "s/^Latest checkpoint's TimeLineID: *\(.*\)/timeline=\1/p"
fi
"""

LIVE = """SELECT (SELECT system_identifier FROM pg_control_system()),
       pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery()
            THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
            ELSE pg_current_wal_lsn() END,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       (SELECT coalesce(string_agg(datname, ' ' ORDER BY datname), '') FROM pg_database
         WHERE datname NOT IN ('postgres', 'template0', 'template1')),
       (SELECT coalesce(string_agg(rolname, ' ' ORDER BY rolname), '') FROM pg_roles
         WHERE rolname !~ '^pg_' AND oid <> 10),
       (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname !~ '^pg_toast')"""

#: a cluster just made by initdb has written less WAL than this (the lab images: 0/1511B00 with PostgreSQL 15, 0/1500940 with 17)
FRESH_LSN_AT_MOST = "0/4000000"


def lsn_bytes(lsn: str | None) -> int | None:
    """'0/3000148' as a number, to compare WAL positions."""
    if not lsn:
        return None
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass
class Cluster:
    """What a host shows of its cluster, read without changing anything."""
    host: str
    machine_id: str = ""            # /etc/machine-id: two names for one host share it
    state: str = ""                 # pg_lsclusters: online, online,recovery, down, down,recovery, "" (none)
    entries: int = 0                # files and directories in the data directory
    control: bool = False           # global/pg_control is there
    standby_signal: bool = False
    fenced: bool = False            # failover.sh fenced it when it failed as the primary (fence_marker below)
    system_id: str | None = None
    in_recovery: bool | None = None
    lsn: str | None = None          # WAL position: current (primary), received/replayed (standby), checkpoint (down)
    timeline: int | None = None
    checkpoint: str | None = None   # pg_controldata's latest checkpoint (down)
    databases: list[str] = field(default_factory=list)   # beyond postgres/template0/template1 (online)
    roles: list[str] = field(default_factory=list)       # beyond postgres and pg_* (online)
    tables: int = 0                 # tables in the database postgres (online)
    marker: dict[str, str] = field(default_factory=dict)
    cluster: str = "VERSION CLUSTER"    # as pg_dropcluster takes it

    @property
    def online(self) -> bool:
        return self.state.startswith("online")

    def position(self) -> str:
        return f"timeline {self.timeline if self.timeline is not None else '?'} at {self.lsn or '?'}"


def marker_path(params) -> str:
    return params.postgres["data_dir"].rstrip("/") + MARKER_SUFFIX


def fence_marker(params) -> str:
    """Beside the data directory: failover.sh writes it when it fences a failed primary (standby.signal,
    so that it can start only as a standby); a rejoin removes it."""
    return params.postgres["data_dir"].rstrip("/") + ".fenced"


def fenced(remote) -> bool:
    return remote.run(f"test -f {shlex.quote(fence_marker(remote.params))}", user="root", check=False).ok


def read(remote) -> Cluster:
    """The facts of the cluster on `remote` (its data directory from the parameters)."""
    p = remote.params.postgres
    script = FACTS.format(data_dir=shlex.quote(p["data_dir"].rstrip("/")), marker=shlex.quote(marker_path(remote.params)),
                          fence=shlex.quote(fence_marker(remote.params)),
                          cluster=postgres.cluster_words(p), bindir=f"/usr/lib/postgresql/{int(p['version'])}/bin")
    out = dict(line.split("=", 1) for line in remote.sudo(script).lines if "=" in line)
    c = Cluster(remote.host.name, machine_id=out.get("machine_id", ""), cluster=postgres.cluster_words(p), state=out.get("state", ""), entries=int(out.get("entries", 0)),
                control=out.get("control") == "yes", standby_signal=out.get("standby_signal") == "yes",
                fenced=out.get("fenced") == "yes",
                system_id=out.get("system_id"), checkpoint=out.get("checkpoint"),
                timeline=int(out["timeline"]) if out.get("timeline") else None,
                marker={k[len("marker_"):]: v for k, v in out.items() if k.startswith("marker_")})
    if c.control and not c.online:
        # the fence's standby.signal does not make a former primary a standby: its WAL may run past the promotion
        c.in_recovery = "recovery" in (out.get("control_state", "")) or (c.standby_signal and not c.fenced)
        c.lsn = c.checkpoint
    if c.online:
        row = postgres.value(remote, LIVE).split("|")
        c.system_id, c.in_recovery, c.lsn = row[0], row[1] == "t", row[2] or None
        c.timeline = int(row[3]) if row[3] else c.timeline
        c.databases, c.roles, c.tables = row[4].split(), row[5].split(), int(row[6] or 0)
    return c


def primary_problem(primary: Cluster) -> str | None:
    """Why this host cannot be cloned from, or None."""
    if not primary.online:
        return f"{primary.host} is not running ({primary.state or 'no cluster'}): nothing can be cloned from it"
    if primary.in_recovery:
        return f"{primary.host} is in recovery: it is a standby, not a primary"
    return None


def may_clone(primary: Cluster, standby: Cluster, rebuild: bool) -> tuple[bool, str]:
    """(allowed, why): the proof that clearing `standby` loses nothing, or what was found instead."""
    same = standby.system_id is not None and standby.system_id == primary.system_id
    behind = (lsn_bytes(standby.lsn) or 0) <= (lsn_bytes(primary.lsn) or 0)
    marker = standby.marker
    if standby.machine_id and standby.machine_id == primary.machine_id:
        return False, (f"it is the same machine as {primary.host} (/etc/machine-id {standby.machine_id}): "
                       "its address in the parameter file reaches the primary's host")
    if not standby.control and standby.entries == 0:
        return True, "its data directory is empty"
    if marker and not standby.online:
        if not standby.control:
            return True, f"an earlier run began cloning it ({marker.get('started', '?')}) and cleared it"
        if marker.get("checkpoint") == standby.checkpoint and marker.get("system_id") == standby.system_id:
            return True, (f"an earlier run stopped it for cloning ({marker.get('started', '?')}); it has not run "
                          f"since (checkpoint {standby.checkpoint})")
    if not standby.control:
        return False, (f"its data directory holds {standby.entries} entries but no global/pg_control: not a cluster "
                       "that an earlier run of ours left; look at it and empty it yourself if it may go")
    if same and standby.in_recovery and behind and not standby.fenced:
        return True, f"a standby of {primary.host} (same system identifier, in recovery, {standby.position()})"
    if fresh(standby):
        return True, "a fresh cluster (no databases but postgres/template0/template1, no roles but postgres)"
    ahead = (primary.timeline or 0) >= (standby.timeline or 0) and behind
    if rebuild and same and ahead:
        return True, (f"options.rebuild_standby is set and {primary.host} is ahead of it "
                      f"({primary.position()} vs {standby.position()})")
    return False, describe_refusal(primary, standby, same, ahead, rebuild)


def fresh(c: Cluster) -> bool:
    """What initdb leaves and nothing more: running, not in recovery, on its first timeline, no database, role or
    table of anyone's, and hardly any WAL. A server that keeps its data in `postgres` as `postgres`, or has been
    promoted, or has written more, is not fresh (a mistyped address can reach a busy server)."""
    return (c.online and not c.in_recovery and not c.databases and not c.roles and not c.tables and c.timeline == 1
            and (lsn_bytes(c.lsn) or 0) <= lsn_bytes(FRESH_LSN_AT_MOST))


def former_primary(primary: Cluster, other: Cluster) -> bool:
    """`other` was this cluster's primary before a failover promoted past it: failover.sh fenced it, or
    it is down, not a standby, on an earlier timeline of the same cluster."""
    same = other.system_id is not None and other.system_id == primary.system_id
    return same and (other.fenced or (not other.online and not other.in_recovery
                                      and (primary.timeline or 0) > (other.timeline or 0)))


def describe_refusal(primary: Cluster, standby: Cluster, same: bool, ahead: bool, rebuild: bool) -> str:
    found = []
    former_primary_here = former_primary(primary, standby)
    if former_primary_here and standby.fenced:
        found.append(f"it is {'running in recovery' if standby.online else 'down'}, and a former primary: "
                     f"{primary.host} was promoted past it (a failover), and failover.sh fenced it (standby.signal), "
                     "so it can start only as a standby")
    elif former_primary_here:
        found.append(f"it is down, and a former primary: {primary.host} was promoted past it (a failover). Do not "
                     f"start it as it is, it would be a second primary")
    elif not standby.online:
        found.append(f"its cluster is {standby.state or 'down'}"
                     + ("" if standby.in_recovery else ", not in recovery, so it cannot be shown to be fresh "
                        "(start it, and provisioning examines it)"))
    elif not standby.in_recovery:
        held = ([f"databases {', '.join(standby.databases)}"] if standby.databases else []) + \
               ([f"roles {', '.join(standby.roles)}"] if standby.roles else []) + \
               ([f"{standby.tables} tables in postgres"] if standby.tables else []) + \
               ([f"timeline {standby.timeline}"] if (standby.timeline or 1) != 1 else []) + \
               ([f"WAL up to {standby.lsn}"] if (lsn_bytes(standby.lsn) or 0) > lsn_bytes(FRESH_LSN_AT_MOST) else [])
        found.append("it is a writable server, not a standby" + (f", holding {' and '.join(held)}" if held else ""))
    found.append(f"its system identifier is {'that of' if same else 'not that of'} {primary.host}"
                 + ("" if same else f" ({standby.system_id} vs {primary.system_id}): another cluster"))
    if same:
        found.append(f"it is at {standby.position()}, {primary.host} at {primary.position()}")
    if same and not ahead:
        way = (f"{primary.host} is not ahead of it, so it may hold writes {primary.host} lacks: if the roles in "
               "the parameter file are swapped, fix them; if its data may go, ")
    elif former_primary_here and not rebuild:
        way = (f"it may hold commits {primary.host} never received, which rejoining discards: ci/provision "
               f"rejoins it as a standby of {primary.host} before Part 1 runs, counting those commits and keeping "
               "its WAL from the switch point aside (lib.heal; options.refuse_diverged: it refuses instead); or set "
               "options.rebuild_standby: true, or ")
    elif same and not rebuild:
        way = "if its data may go, set options.rebuild_standby: true, or "
    else:
        way = "if its data may go, "
    return "; ".join(found) + (f". {way}make it a fresh cluster by hand first (on {standby.host}: "
                               f"pg_dropcluster --stop {standby.cluster} && pg_createcluster {standby.cluster} --start)")


# --- which standbys Part 1 clones ------------------------------------------------------------------
RECONNECT_S = 10   # a standby retries its primary every 5 s (wal_retrieve_retry_interval), so 10 s covers it


def streaming_from_primary(standby, primary) -> str:
    """'streaming' if this host already is a standby streaming from the primary, else its state.
    A standby configured for this primary but between connections (the primary just restarted)
    is given RECONNECT_S to stream again: it needs no new clone."""
    state = postgres.cluster_state(standby)
    if state != "online,recovery":
        return state
    wanted = f"streaming {primary.host.address}"

    def receiver():
        return postgres.value(standby, "SELECT coalesce((SELECT status || ' ' || sender_host FROM pg_stat_wal_receiver), '')")
    row = receiver()
    if row != wanted and f"host={primary.host.address} " in postgres.value(standby, "SHOW primary_conninfo") + " ":
        row = wait_until(lambda: (r := receiver()) == wanted and r, timeout=RECONNECT_S, interval=0.5)[0] or receiver()
    return "streaming" if row == wanted else f"recovery ({row or 'no WAL receiver'})"


@dataclass
class CloneDecision:
    """Step 7's decision, which Steps 8-11 follow: the standbys to clone, each with the hosts' proof that it may
    be cloned, or the refusal."""
    standbys: list = field(default_factory=list)
    proofs: dict[str, str] = field(default_factory=dict)
    refused: str = ""


class CloneRefused(CheckFailed):
    def __init__(self, hosts: list[str], message: str):
        super().__init__(message)
        self.hosts = hosts


FIX = ("check hosts.primary and hosts.standbys in the parameters, and clear a server by hand only if its data "
       "may go. Nothing was changed.")


def roles_swapped(env) -> tuple[str, str] | None:
    """After a failover the parameters' primary may be a standby, or down, while one of their
    standbys runs as the primary. Then (what is, the way out), instead of reporting each step of
    Part 1 as drift to be "fixed" by cloning over the new primary. None when the roles agree."""
    state = postgres.cluster_state(env.primary)
    if state == "online":
        return None
    promoted = [s for s in env.standbys if postgres.cluster_state(s) == "online"]
    if not promoted:
        return None
    new, old = promoted[0].host.name, env.primary.host.name
    is_fenced = fenced(env.primary)
    back = (f"rejoin {old}, then " if state != "online,recovery" or is_fenced else "") + f"stop {new} for a planned switchover"
    said = state + (", fenced by failover.sh: it can start only as a standby" if is_fenced else "")
    return (f"{new} runs as the primary: a failover promoted it, and the parameters still name {old} ({said}) as "
            "the primary. Nothing was changed.",
            f"provision with the same parameter file: it keeps {new} as the primary and rejoins {old} as its "
            f"standby, counting and keeping aside any commit only {old} held (options.refuse_diverged: refuse instead); "
            f"or switch back (notebook 04: {back}, and rejoin {new}).")


def choose(env) -> list[tuple[object, bool | None, str]]:
    """(standby, decision, why) per standby: True clone it (why: the proof), None leave it (it
    already streams from the primary), False refused (why: what was found and what to do)."""
    rebuild = env.params.options["rebuild_standby"]
    primary, rows = None, []
    for s in env.standbys:
        if not rebuild and streaming_from_primary(s, env.primary) == "streaming":
            rows.append((s, None, f"already a standby streaming from {env.primary.host.name}"))
            continue
        if primary is None:
            swapped = roles_swapped(env)
            expect(swapped is None, *(swapped or ("", "")))
            primary = read(env.primary)
            problem = primary_problem(primary)
            expect(problem is None, f"Refusing to clone anything: {problem}.",
                   f"check hosts.primary in the parameters and start PostgreSQL on {env.primary.host.name}; "
                   "nothing was changed.")
        allowed, why = may_clone(primary, read(s), rebuild)
        rows.append((s, allowed, why))
    return rows


def proven(env) -> list:
    """The standbys to clone, each proven clonable; stops before any change when one is not."""
    rows = choose(env)
    refused = [(s.host.name, why) for s, allowed, why in rows if allowed is False]
    if refused:
        raise CloneRefused([name for name, _ in refused], "Refusing to clear and clone "
                           + "; ".join(f"{name}: {why}" for name, why in refused) + f".\nLikely fix: {FIX}")
    return [(s, why) for s, allowed, why in rows if allowed]
