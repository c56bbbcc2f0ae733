"""Notebook 03, Steps 40-43: what the guide leaves out, so that the cluster survives its primary.

pgpool detects a failed server (its health check, lib.pgpool_host.HEALTH_CHECK) and detaches it. For a
standby that is all. For the primary, pgpool runs `failover_command`: our failover.sh, as postgres
on the pgpool host, waits for a clean stop's hand-over, promotes the most advanced standby over SSH
and fences the old primary. Afterwards `follow_primary_command` (follow_primary.sh) points every
other running standby at the new primary, and `failback_command` (failback.sh) keeps a node attached
only once the primary sees it caught up. The failed primary itself comes back later, through
lib.rejoin (provisioning runs it, lib.heal): pg_rewind, which needs wal_log_hints (Part 1, Step 2).
"""
from __future__ import annotations

import shlex
from functools import partial

from lib import facts, ops, part2, pgconf, pgpool_client, pgpool_host, pgpoolconf, postgres, remote_commands
from lib.failover_scripts import (FAILBACK_SCRIPT_NAME, FAILOVER_LOG, FAILOVER_SCRIPT_NAME, FOLLOW_SCRIPT_NAME, KEY,
                                   KNOWN_HOSTS, RESUME_SQL, SSH_DIR, SUSPENDED_SQL, failback_script, failover_script,
                                   failover_settings, follow_script, handover_watch, ssh_options)
from lib.ops import guide_step
from lib.part1 import REPLICATION_ROLE, pgpass_file
from lib.pgpool_host import conf
from lib.postgres import auth_method, conf_file, hba_type
from lib.roles import sql_literal
from lib.show import expect, prompt

KEY_COMMENT = "postgres@{}-pgguide"
AUTHORIZED_KEYS = f"{SSH_DIR}/authorized_keys"
#: what pg_rewind reads on its source server, granted so that replicator need not be a superuser
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text, boolean, boolean)", "pg_catalog.pg_stat_file(text, boolean)",
                    "pg_catalog.pg_read_binary_file(text)",
                    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)")


def database_remotes(env) -> list:
    return [env.primary, *env.standbys]


# --- Step 40 ---------------------------------------------------------------------------------------------
def peer_hba_lines(env, remote) -> list[str]:
    """On each server: replication and pg_rewind's session from each other server."""
    kind, method = hba_type(env.params), auth_method(env.params)
    return [f"{kind} {database} {REPLICATION_ROLE} {other.host.address}/32 {method}"
            for other in database_remotes(env) if other is not remote for database in ("replication", "postgres")]


@guide_step
def every_server_can_lead(env) -> ops.Step:
    step, p = ops.Step("ready to lead"), env.params
    wanted = postgres.primary_settings(p)
    for r in database_remotes(env):
        if r is not env.primary:
            postgres.edit_step(step, r, conf_file(r, "postgresql.conf"), lambda text: pgconf.set_settings(text, wanted))
        postgres.edit_step(step, r, conf_file(r, "pg_hba.conf"),
                           lambda text, r=r: pgconf.add_hba_records(text, peer_hba_lines(env, r)))
        pgpass_file(step, r)
    missing = [f for f in REWIND_FUNCTIONS if postgres.known(
        env.primary, f"SELECT has_function_privilege({sql_literal(REPLICATION_ROLE)}, {sql_literal(f)}, 'EXECUTE')").value != "t"]
    if missing:
        step.do(ops.Sql(env.primary, "postgres", statement=("\n".join(
            f"GRANT EXECUTE ON FUNCTION {f} TO {REPLICATION_ROLE};" for f in missing),),
            summary=f"{REPLICATION_ROLE} may run what pg_rewind reads"))
    else:
        step.note(env.primary, f"{REPLICATION_ROLE} may already run what pg_rewind reads")
    for r in database_remotes(env):
        hba_edited = any(isinstance(a, ops.FileChange) and a.remote is r and a.path == conf_file(r, "pg_hba.conf")
                         for a in step.actions)
        if hba_edited and not postgres.settings_differing(r, wanted):
            step.notify(ops.service(r, "reload", p.postgres["service"]))     # new pg_hba lines take effect
        else:
            postgres.settle(step, r, wanted)

    def shown():
        rows = []
        for r in database_remotes(env):
            found = {n: postgres.value(r, f"SHOW {n}") for n in ("wal_log_hints", "max_wal_senders", "listen_addresses")}
            expect(found["wal_log_hints"] == "on", f"{r.host.name} runs with wal_log_hints = {found['wal_log_hints']}.",
                   "pg_rewind cannot rewind a server without it: provision again (Step 2, Step 40), which restarts it.")
            rows.append(f"{prompt(r, 'postgres')}psql -c \"SHOW wal_log_hints\"  →  {found['wal_log_hints']}")
        return "\n".join(rows)
    return pgpool_host.guard_restarts(step, env).verify("every server logs hint bits for pg_rewind", shown)


# --- Step 41 ---------------------------------------------------------------------------------------------
def host_key(remote) -> str:
    """The host's own ed25519 key (`ssh-ed25519 AAAA…`), read over our SSH connection, whose host
    key is already checked."""
    return " ".join((remote.facts.get(facts.FileFact("/etc/ssh/ssh_host_ed25519_key.pub")).text or "").split()[:2])


def make_key(step: ops.Step, remote) -> ops.Step:
    """A key pair for postgres on `remote`, made there: its private half never travels."""
    k = shlex.quote(KEY)
    if remote.facts.get(facts.CommandFact(f"test -f {k} && test -f {k}.pub")).ok:     # the private key is never read
        return step.note(remote, f"{KEY} exists")
    return step.do(ops.Command(remote, "postgres", f"install -d -m 700 {SSH_DIR} && "
                               f"ssh-keygen -q -t ed25519 -N '' -C {KEY_COMMENT.format(remote.host.name)} -f {k}",
                               summary=f"a key for postgres on {remote.host.name}"))


@guide_step
def postgres_key(env) -> ops.Step:
    """A key pair for postgres on the pgpool host."""
    return make_key(ops.Step("postgres key"), env.pgpool)


def trusted_line(source) -> str:
    """authorized_keys' options for the pgpool host's key: from its address only, nothing forwarded, and
    no shell: only the commands the scripts send (lib.remote_commands)."""
    return f'from="{source.host.address}",restrict,command="{remote_commands.PROGRAM}"'


def sent_commands(params) -> list[str]:
    """Every command postgres of the pgpool host sends to a server: the scripts' (Step 42), the hand-over
    watch, and the reachability and login checks."""
    scripts = [failover_script(params), follow_script(params), failback_script(params)]
    return remote_commands.patterns(scripts, [handover_watch(params), "true", "hostname"])


def _replace_lines(path: str, drop: str, prefix: str, owner: str, mode: str) -> str:
    """Shell: in `path`, lines matching the grep pattern `drop` replaced by `prefix` and the text on stdin,
    written whole, with owner and mode (replace_line, lib.host_functions)."""
    return " ".join(["replace_line", *map(shlex.quote, (path, drop, owner, mode, prefix))])


def pin_host_keys(step: ops.Step, on, remotes) -> None:
    """postgres's known_hosts on `on` pins each remote's host key, read over our own checked SSH
    connections, never trusted on first use."""
    known = (on.facts.get(facts.FileFact(KNOWN_HOSTS)).text or "").splitlines()
    for r in remotes:
        pinned = f"{r.host.address} {host_key(r)}"
        if pinned in known and not any(l.startswith(r.host.address + " ") and l != pinned for l in known):
            step.note(on, f"{KNOWN_HOSTS} pins {r.host.name}'s host key")
            continue
        step.do(ops.Relay(on, "root", source=r, read="cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub",
                          write=_replace_lines(KNOWN_HOSTS, f"^{r.host.address} ", f"{r.host.address} ",
                                               "postgres:postgres", "644"),
                          summary=f"{KNOWN_HOSTS}: {r.host.name}'s host key pinned"))


def authorize(step: ops.Step, target, source, options: str, said: str) -> None:
    """postgres on `target` lets postgres of `source` in with its key, under authorized_keys' `options`.
    The key goes from the host that has it to the host that trusts it (ops.Relay), so the run record's
    commands.sh works on other hosts too."""
    public = source.facts.get(facts.FileFact(f"{KEY}.pub")).text
    expect(public is not None, f"{source.host.name} has no {KEY}.pub.", "the key is made just before: run that cell first")
    public = public.strip()
    have = target.facts.get(facts.FileFact(AUTHORIZED_KEYS)).text or ""
    if f"{options} {public}" in have.splitlines():
        step.note(target, f"{AUTHORIZED_KEYS} lets postgres of {source.host.name} in, {said}")
        return
    step.do(ops.Relay(target, "root", source=source, source_user="root", read=f"cat {KEY}.pub",
                      write=f"install -d -o postgres -g postgres -m 700 {SSH_DIR} && " + _replace_lines(
                          AUTHORIZED_KEYS, f"{KEY_COMMENT.format(source.host.name)}$",
                          options + " ", "postgres:postgres", "600"),
                      summary=f"{AUTHORIZED_KEYS}: postgres of {source.host.name} may log in, {said}"))


@guide_step
def ssh_trust(env) -> ops.Step:
    """postgres on the pgpool host may log in as postgres on each server with that key, from the
    pgpool host's address only, to servers whose host keys are pinned."""
    vm3, step = env.pgpool, ops.Step("ssh trust")
    pin_host_keys(step, vm3, database_remotes(env))
    allowed = remote_commands.program(sent_commands(env.params))
    for r in database_remotes(env):
        postgres.ensure_file(step, r, remote_commands.PROGRAM, allowed, owner="root:root", mode="755", make_dir=True)
        authorize(step, r, vm3, trusted_line(vm3), "from its address only, for the failover scripts' commands only")

    def logs_in():
        lines = []
        for r in database_remotes(env):
            command = f"ssh {ssh_options()} postgres@{r.host.address} hostname"
            out = vm3.run(command, user="postgres", check=False, reads_only=True)
            expect(out.ok, f"postgres on {vm3.host.name} cannot log in to {r.host.name}: "
                           f"{out.stderr.strip() or out.stdout.strip()}",
                   f"check {AUTHORIZED_KEYS} on {r.host.name} and {KNOWN_HOSTS} on {vm3.host.name} (provision again).")
            lines.append(f"{prompt(vm3, 'postgres')}{command}\n{out.stdout.strip()}")
        return "\n".join(lines)
    return step.verify("postgres on the pgpool host logs in to each server", logs_in)


# --- Step 42 ---------------------------------------------------------------------------------------------


@guide_step
def failover_commands(env) -> ops.Step:
    vm3, p, step = env.pgpool, env.params, ops.Step("failover commands")
    d = p.pgpool["conf_dir"]
    for name, text in ((FAILOVER_SCRIPT_NAME, failover_script(p)), (FOLLOW_SCRIPT_NAME, follow_script(p)),
                       (FAILBACK_SCRIPT_NAME, failback_script(p))):
        postgres.ensure_file(step, vm3, f"{d}/{name}", text, owner="root:postgres", mode="750")
    if not vm3.facts.get(facts.CommandFact(f"test -f {FAILOVER_LOG}")).ok:
        step.do(ops.Command(vm3, "root", f"install -o postgres -g postgres -m 640 /dev/null {FAILOVER_LOG}",
                            summary=f"created {FAILOVER_LOG}"))
    postgres.edit_step(step, vm3, conf(p, "pgpool.conf"),
                       lambda text: pgpoolconf.set_settings(text, failover_settings(p)))
    return step


def running_commands(env) -> str:
    """pgpool runs with our commands (PGPOOL SHOW, through pgpool)."""
    lines = []
    with pgpool_client.via_pgpool(env)() as conn:
        for name, wanted in failover_settings(env.params).items():
            res = conn.pgconn.exec_(f"PGPOOL SHOW {name}".encode())
            value = res.get_value(0, 0).decode() if res.ntuples else ""
            expect(value == wanted, f"pgpool runs with {name} = {value!r}.",
                   "restart pgpool (Step 43) so that it reads pgpool.conf again.")
            lines.append(f"{name} = '{value}'")
    return f"{pgpool_client.through_pgpool_prompt(env)}PGPOOL SHOW …\n" + "\n".join(lines)


@guide_step
def failover_ready(env) -> ops.Step:
    return ops.Step("failover ready").verify("pgpool runs with the failover commands", partial(running_commands, env)) \
        .verify("every node up", partial(part2.nodes_as_wanted, env))


# --- Step 44 ---------------------------------------------------------------------------------------------
def synchronous_settings(params) -> dict:
    """postgresql.conf on every server. With postgres.synchronous a commit is acknowledged once any
    one standby has flushed it (ANY 1 of the servers' application names, the same list everywhere,
    so that whichever server leads waits for the others); otherwise once the primary has it, as
    the guide builds it."""
    names = ", ".join(f'"{name}"' for name in sorted(h.name for h in params.database_hosts))  # whatever the roles
    return {"synchronous_standby_names": f"ANY 1 ({names})" if params.postgres["synchronous"] else "",
            "synchronous_commit": "on"}


#: how many standbys stream from a server
STREAMING_SQL = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"


@guide_step
def commit_acknowledgement(env) -> ops.Step:
    step, p = ops.Step("when a commit is acknowledged"), env.params
    wanted = synchronous_settings(p)
    for r in database_remotes(env):
        path = conf_file(r, "postgresql.conf")
        postgres.edit_step(step, r, path, lambda text: pgconf.set_settings(text, wanted))
        if postgres.known(r, SUSPENDED_SQL, live=True).value != "0":     # failover.sh suspended synchronous commit
            expect(r is not env.primary or int(postgres.known(r, STREAMING_SQL, live=True).value) > 0,
                   f"failover.sh suspended synchronous commit on {r.host.name} when no standby was left, and still "
                   f"no standby streams from it: making commits wait now would stop every write.",
                   "bring a standby back (notebook 04: rejoin); attaching it resumes synchronous commit (failback.sh).")
            step.do(ops.Sql(r, "postgres", statement=(f"{RESUME_SQL};\nSELECT pg_reload_conf();",),
                            summary=f"synchronous commit resumed on {r.host.name} (failover.sh had suspended it)"))
        elif any(isinstance(a, ops.FileChange) and a.remote is r for a in step.actions) \
                or postgres.settings_differing(r, wanted):
            step.notify(ops.service(r, "reload", p.postgres["service"]))     # both settings take a reload
        else:
            step.note(r, "configuration unchanged and in effect: no reload needed")

    def shown():
        primary = env.primary
        names = postgres.value(primary, "SHOW synchronous_standby_names")
        expect(names == wanted["synchronous_standby_names"],
               f"{primary.host.name} runs with synchronous_standby_names = '{names}'.",
               "provision again (Step 44), which reloads it.")
        rows = postgres.psql_read(primary, "SELECT application_name, state, sync_state FROM pg_stat_replication "
                                           "ORDER BY application_name")
        states = [l.split("|")[-1].strip() for l in rows.splitlines()[3:-1]]
        want = "quorum" if p.postgres["synchronous"] else "async"
        expect(states and all(s == want for s in states), f"the standbys' sync_state is {states}, not {want}.",
               "check that each standby's application_name (primary_conninfo) is its host name.")
        return (f"{prompt(primary, 'postgres')}psql -c \"SHOW synchronous_standby_names\"  →  '{names}'\n{rows}")
    return step.verify("commits wait for a standby" if p.postgres["synchronous"] else
                       "commits are acknowledged by the primary alone", shown)
