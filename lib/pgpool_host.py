"""pgpool's host as the steps, the failover scripts, the diagnosis, the drills and the bench use it: the
roles and files pgpool works with, the settings Step 30 writes (and the bounds they give), its service
(Step 33) and pcp. Sessions through pgpool are lib.pgpool_client."""
from __future__ import annotations

import re
import shlex
import time

from lib import facts, ops, pgpoolconf, postgres, tls

PGPOOL_ROLE = "pgpool"
#: an application's own role through pgpool (Step 31): it reads and adds employees, and nothing more
APP_ROLE = "app"
#: the roles pgpool logs in to the servers as, for its clients: each has a pool_passwd entry (Step 32)
POOL_PASSWD_ROLES = ("postgres", PGPOOL_ROLE, APP_ROLE)
HOME = "/var/lib/postgresql"                  # pgpool runs as postgres and reads its home's files
KEY_FILE = f"{HOME}/.pgpoolkey"
PCPPASS = f"{HOME}/.pcppass"
LOG_DIR = "/var/log/pgpool2"


def conf(params, name: str) -> str:
    return f"{params.pgpool['conf_dir']}/{name}"


#: how fast pgpool finds a server gone: a check every period; a failed one is tried again
#: max_retries times, retry_delay apart; each try gives up connecting after timeout
HEALTH_CHECK = {"health_check_period": 2, "health_check_timeout": 3, "health_check_max_retries": 2,
                "health_check_retry_delay": 1}


#: what brings a detached server back, and what keeps clients waiting while there is no primary
HEALING = {"sr_check_period": 5, "auto_failback": True, "auto_failback_interval": 10,
           "search_primary_node_timeout": 10, "detach_false_primary": True}


def detection_bounds(settings: dict = HEALTH_CHECK) -> dict[str, int]:
    """Seconds from a server's failure to pgpool's verdict, at worst, from the health-check settings:
    `refused` when its host answers (the server stopped or crashed: each try fails at once),
    `silent` when nothing answers (host or network down: each try waits out the timeout)."""
    period, timeout = settings["health_check_period"], settings["health_check_timeout"]
    retries, delay = settings["health_check_max_retries"], settings["health_check_retry_delay"]
    return {"refused": period + retries * delay, "silent": period + (retries + 1) * timeout + retries * delay}


def reattach_bound(healing: dict = HEALING) -> int:
    """Seconds, at worst, from a detached standby streaming again to pgpool using it again: the
    next replication check finds it in pg_stat_replication, unless a failback happened within
    auto_failback_interval."""
    return healing["sr_check_period"] + healing["auto_failback_interval"]


def backend_hosts(params, conf_text: str = "") -> list:
    """The servers in pgpool's node order: as pgpool.conf has them when it names the same servers
    (node ids are pgpool's identities, kept in pgpool_status, so a failover that swapped the roles in
    the parameters does not renumber them), else as the parameters list them, primary first."""
    found = dict(re.findall(r"^backend_hostname(\d+)\s*=\s*'([^']*)'", conf_text, re.M))
    addresses = [found[k] for k in sorted(found, key=int)]
    hosts = params.database_hosts
    if sorted(addresses) == sorted(h.address for h in hosts) and len(addresses) == len(hosts):
        return [params.host(a) for a in addresses]
    return hosts


#: where local clients find pgpool's socket: where psql looks by default on Debian and Ubuntu
SOCKET_DIR = "/var/run/postgresql"


def socket_setting(conf_text: str) -> str:
    """The setting's name in this pgpool: `socket_dir` up to 4.4 (its shipped file names it),
    `unix_socket_directories` from 4.5, whose compiled default is /tmp."""
    return "socket_dir" if re.search(r"^\s*#?\s*socket_dir\s*=", conf_text, re.M) else "unix_socket_directories"


def pgpool_settings(params, hosts: list | None = None, conf_text: str = "") -> dict:
    p = params.pgpool
    settings: dict = {
        "listen_addresses": "*", "port": p["port"], socket_setting(conf_text): SOCKET_DIR, "pcp_listen_addresses": "localhost", "pcp_port": p["pcp_port"],
        "backend_clustering_mode": "streaming_replication", "load_balance_mode": True,
        "num_init_children": p["num_init_children"], "max_pool": p["max_pool"],
        "child_life_time": 300, "connection_life_time": 600,
        **HEALTH_CHECK, "health_check_user": PGPOOL_ROLE, "health_check_password": "",
        "health_check_database": "postgres",
        **HEALING, "sr_check_user": PGPOOL_ROLE, "sr_check_password": "", "sr_check_database": "postgres",
        "enable_pool_hba": True, "pool_passwd": "pool_passwd",
        "logging_collector": True, "log_directory": LOG_DIR,
        "log_filename": "pgpool.log", "log_truncate_on_rotation": False, "log_rotation_age": 0,
    }
    if tls.on(params):      # TLS to clients (with this pair) and to the servers, whose certificates it checks
        settings.update({"ssl": True, "ssl_cert": params.postgres["tls_cert_file"],
                         "ssl_key": params.postgres["tls_key_file"], "ssl_ca_cert": params.postgres["tls_ca_file"]})
    for i, host in enumerate(hosts or params.database_hosts):
        settings.update({f"backend_hostname{i}": host.address, f"backend_port{i}": params.postgres["port"],
                         f"backend_weight{i}": host.lb_weight,
                         f"backend_data_directory{i}": params.postgres["data_dir"],
                         f"backend_flag{i}": "ALLOW_TO_FAILOVER", f"backend_application_name{i}": host.name})
    return settings


def service_state(remote, *, fresh: bool = True) -> list[str]:
    """['active', 'enabled'] when pgpool runs and starts at boot: asked now, or (fresh=False) as the
    planners know it (lib.facts)."""
    fact = facts.unit_state(remote.params.pgpool["service"])
    return (remote.facts.read(fact) if fresh else remote.facts.get(fact)).lines


#: the checksums of pgpool's configuration files as they were when this step last (re)started pgpool
LOADED = "/var/run/postgresql/pgpool.pgguide-loaded"
PID_FILE = "/var/run/postgresql/pgpool.pid"


def config_files(params) -> list[str]:
    return [conf(params, n) for n in ("pgpool.conf", "pool_hba.conf", "pool_passwd")]


def restart_pending_script(files: list[str], loaded: str = LOADED, pid: str = PID_FILE) -> str:
    """Shell that prints `newer` when pgpool runs with other configuration files than those on disk. After our own
    (re)start the checksums written then decide; without them (pgpool started by the package), a file written
    after pgpool's pid file."""
    quoted = " ".join(shlex.quote(f) for f in files)
    return (f"if test -f {loaded}; then sha256sum --quiet --status -c {loaded} 2>/dev/null || echo newer; "
            f"elif test -f {pid}; then started=$(date -r {pid} +%s%N); for f in {quoted}; do "
            f"[ $(date -r $f +%s%N) -gt $started ] && echo newer; done; fi; true")


def restart_pending(remote) -> bool:
    """pgpool runs with other configuration than the files on disk. The pid file's time alone once misled: after
    a crash drill and a heal on the Debian 13 lab, Step 30 changed a weight and Step 33 found nothing to restart."""
    return "newer" in remote.facts.get(facts.CommandFact(restart_pending_script(config_files(remote.params)))).stdout


#: a systemd drop-in for pgpool's unit. The packaged unit signals every pgpool process at once
#: (KillMode=control-group); pgpool's main process then signals its children too, and now and then a
#: child is left waiting on a lock (a futex) as it exits, and the stop hangs for systemd's whole 90 s (measured on the
#: lab: 9 of 700 restarts under sessions). With the main process alone signalled, 1 of 800 restarts
#: still hung (main and logger processes busy), so the stop is also bounded: after 10 s systemd kills
#: what is left, and the start goes on.
STOP_TIMEOUT_S = 10
STOP_DROPIN = f"""\
# Written by Step 33. pgpool stops its own children: on a stop, systemd sends SIGINT (pgpool's
# fast shutdown, as the packaged unit says) to the main process only, and kills whatever is
# left after {STOP_TIMEOUT_S} s, so that a stop that hangs (rare) delays a restart by {STOP_TIMEOUT_S} s, not 90.
[Service]
KillMode=mixed
TimeoutStopSec={STOP_TIMEOUT_S}
"""


def stop_dropin(params) -> str:
    return f"/etc/systemd/system/{params.pgpool['service']}.service.d/pgguide-stop.conf"


def pgpool_service(env, verb: str) -> ops.Command:
    """A handler: pgpool started or restarted, then listening on its port. A restart, not a reload, after
    pgpool.conf changed: Step 43 restarts pgpool whenever the file is newer than the running pgpool."""
    vm3, p = env.pgpool, env.params.pgpool
    service, port = shlex.quote(p["service"]), p["port"]
    listening = ops.wait_for(f"listens {int(port)}", 30, f"pgpool does not listen on {port}")
    files = " ".join(shlex.quote(f) for f in config_files(env.params))
    loaded = f"sha256sum {files} > {LOADED}"       # what this pgpool read, for restart_pending
    return ops.Command(vm3, "root", f"systemctl {verb} {service} && {listening} && {loaded}", handler=True,
                       shown=f"systemctl {verb} {service}", summary=f"{service} {verb}ed",
                       hint=f"read {LOG_DIR}/pgpool.log and `journalctl -u {service}` on {vm3.host.name}")


def pcp(env, tool: str, *args: str) -> str:
    """A pcp command as postgres on the pgpool host (password from ~postgres/.pcppass; -w: never prompt)."""
    return " ".join([tool, "-h localhost", f"-p {env.params.pgpool['pcp_port']}", f"-U {PGPOOL_ROLE}", "-w", *args])


#: pcp_node_info -v's names (pgpool 4.3 and later) -> SHOW pool_nodes' columns
PCP_FIELDS = {"Hostname": "hostname", "Status Name": "status", "Backend Status Name": "pg_status", "Role": "role",
              "Backend Role": "pg_role", "Replication State": "replication_state", "Weight": "weight"}


def pcp_node(text: str, node_id: int) -> dict:
    """One node as pcp_node_info -v describes it, under SHOW pool_nodes' column names."""
    said = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if _}
    return {"node_id": str(node_id), **{column: said.get(name, "") for name, column in PCP_FIELDS.items()}}


def nodes_fact(env) -> facts.CommandFact:
    """Every node as pcp sees it, one block a node, as postgres on the pgpool host."""
    return facts.CommandFact("; ".join(f"{pcp(env, 'pcp_node_info', '-v', f'-n {i}')}; echo @@"
                                       for i in range(len(env.params.database_hosts))), user="postgres", live=True)


def known_nodes(env) -> list[dict] | None:
    """The nodes as the planners know them (lib.facts), or None when pcp does not answer (pgpool down)."""
    out = env.pgpool.facts.get(nodes_fact(env))
    blocks = out.stdout.split("@@\n")[:-1]
    if len(blocks) != len(env.params.database_hosts) or not all("Status Name" in b for b in blocks):
        return None
    return [pcp_node(b, i) for i, b in enumerate(blocks)]


def healthy_but_detached(env, nodes: list[dict]) -> list[tuple[int, str]]:
    """Nodes pgpool keeps down although the server answers in the role the cluster gives it: a
    standby streaming from the primary, or the primary itself. pgpool remembers a detached node
    (pgpool_status) and, for a primary, never re-attaches it by itself."""
    found = []
    for node in nodes:
        if node["status"] != "down" or node["pg_status"] != "up":
            continue
        name = env.params.host(node["hostname"]).name
        if node["pg_role"] == "standby" and node["replication_state"] == "streaming":
            found.append((int(node["node_id"]), f"{name} is down in pgpool, but it streams from the primary"))
        elif node["pg_role"] == "primary" and not any(
                n["pg_role"] == "primary" and n["status"] == "up" for n in nodes if n is not node):
            found.append((int(node["node_id"]), f"{name} is down in pgpool, but it is the only primary"))
    return found


def attach_healthy_nodes(step: ops.Step, env) -> ops.Step:
    """pcp_attach_node for each node pgpool keeps down though its server is healthy in its role."""
    for node_id, why in healthy_but_detached(env, known_nodes(env) or []):
        attach = pcp(env, "pcp_attach_node", f"-n {node_id}")
        # pcp returns once pgpool has the request: wait for its failback, so that a restart next keeps the node up
        done = ops.wait_for(f"{pcp(env, 'pcp_node_info', f'-n {node_id}')} | awk '{{exit $5 == \"down\"}}'", 10,
                            f"pgpool has not attached node {node_id}")
        step.do(ops.Command(env.pgpool, "postgres", f"{attach} && {done}", shown=f"{attach}    # {why}",
                            summary=f"node {node_id} attached again", hint="read pgpool's log: pcp refuses a node it cannot reach"))
    return step


def restart_pgpool(step: ops.Step, env) -> ops.Step:
    """pgpool restarted, every healthy node attached first. A restarted pgpool starts no health check for
    a node that its pgpool_status gives as down, and auto_failback runs in that check, so such a node would
    stay down for good (pgpool 4.3.5, measured: a standby restarted in Step 40 was detached, then kept down
    by Step 43's restart)."""
    return attach_healthy_nodes(step, env).notify(pgpool_service(env, "restart"))


def guard_restarts(step: ops.Step, env) -> ops.Step:
    """The step's planned restarts of database servers, each server's node flagged DISALLOW_TO_FAILOVER in
    pgpool around them, when pgpool runs with a failover command. Otherwise pgpool takes a planned restart for a
    failure as soon as a client's session through it ends: on the lab, a restart of the primary with one idle
    session open made failover.sh promote the standby and fence the primary (measured Dec 8); with the flag
    loaded, the session ended and both nodes stayed up. Should a run stop between (the restart failed, or the run was
    killed), the flag stays until Step 30 writes it back; the failed restart's hint says so."""
    unit = shlex.quote(env.params.postgres["service"])
    servers = {r.host.name for r in [env.primary, *env.standbys]}
    restarts = [h for h in step.handlers if h.host in servers and getattr(h, "shown", "") == f"systemctl restart {unit}"]
    if not restarts or service_state(env.pgpool, fresh=False)[:1] != ["active"]:
        return step
    path = conf(env.params, "pgpool.conf")
    text = env.pgpool.facts.get(facts.FileFact(path)).text or ""
    if not pgpoolconf.active_settings(text).get("failover_command"):
        return step
    nodes = [i for i, h in enumerate(backend_hosts(env.params, text)) if h.name in {r.host for r in restarts}]
    ids = ", ".join(map(str, nodes))

    def flag(value: str, why: str) -> list[ops.Command]:
        edit = " ".join(f"-e \"s/^backend_flag{i} = .*/backend_flag{i} = '{value}'/\"" for i in nodes)
        return [ops.Command(env.pgpool, "root", f"sed -i {edit} {shlex.quote(path)}", handler=True,
                            shown=f"sed -i {edit} {path}    # {why}", summary=f"pgpool: node {ids} {value}"),
                ops.Command(env.pgpool, "postgres", pcp(env, "pcp_reload_config"), handler=True,
                            summary="pgpool read pgpool.conf again")]
    for h in restarts:      # a restart that fails stops the step before the flag is written back
        flags = ", ".join(f"backend_flag{i}" for i in nodes)
        h.hint = (f"{h.hint or 'read the server log'}. Until {flags} in {path} say ALLOW_TO_FAILOVER again, pgpool "
                  f"will not fail over from node {ids}: provision again (Step 30 writes it), or "
                  f"edit the file and run `{pcp(env, 'pcp_reload_config')}` as postgres there")
    first = step.handlers.index(restarts[0])
    last = step.handlers.index(restarts[-1])
    step.handlers[last + 1:last + 1] = flag("ALLOW_TO_FAILOVER", "as Step 30 writes it")
    step.handlers[first:first] = flag("DISALLOW_TO_FAILOVER", "a planned restart, not a failure to fail over from")
    return step


def pgpool_log(env, lines: int = 5) -> str:
    """The guide's `journalctl -u pgpool2 | tail`: with logging_collector on (Step 30) pgpool
    writes its own log file instead."""
    return postgres.read(env.pgpool, f"tail -n {lines} {LOG_DIR}/pgpool.log")


def journal(env, lines: int = 5) -> str:
    """The guide's log command: with logging_collector on, systemd's journal keeps only what
    pgpool printed before its log file took over."""
    return postgres.read(env.pgpool, f"journalctl -u {shlex.quote(env.params.pgpool['service'])} --no-pager | tail -n {lines}")


#: where the kernel shows a process blocked in a socket read (tcp_recvmsg waits there)
IN_A_READ = "wait_woken"


def health_check_in_a_read(env, node: int) -> bool:
    """Whether pgpool's health check of `node` waits in a socket read now. Outside a read it sleeps
    between checks, or waits in connect() or poll(), each bounded by health_check_timeout. A read is
    bounded by it only on pgpool 4.3 without TLS: with ssl = on (4.3 and 4.6), and on 4.6 without it, pgpool
    retries the read its timer interrupted (measured: tests/test_guide_variants.py, test_debian13.py), so a
    check whose server goes silent mid-read waits until the network returns, unless the guard of Step 33 ends
    it (lib.health_check_guard). Sampled twice, half a second apart: one sample can catch a normal check's
    short read."""
    title = shlex.quote(f"health check process\\({int(node)}\\)")
    probe = f"for p in $(pgrep -f {title}); do cat /proc/$p/wchan; echo; done"

    def reading() -> bool:
        return IN_A_READ in env.pgpool.run(probe, user="root", reads_only=True).stdout.split()
    if not reading():
        return False
    time.sleep(0.5)
    return reading()
