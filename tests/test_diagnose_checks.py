"""The diagnosis's checks without a lab: how they read pg_hba rules, how a finding is printed, and
that they reach the hosts through the read-only gateway only."""
import ast
import inspect

from lib import params as P, pgpool_host
from lib.diagnose import checks, exit_status, report
from lib.diagnose.checks import access, model
from lib.diagnose.checks import pgpool as pgpool_checks
from lib.diagnose.checks import FAIL, OK, WARN, Finding, allows

#: every check's source, and what they share
SOURCE = "".join(inspect.getsource(m) for m in (model, *checks.MODULES))

RULES = [["local", "all", "postgres", "", "", "peer", ""],
         ["host", "replication", "replicator", "10.0.0.133", "255.255.255.255", "scram-sha-256", ""],
         ["host", "all", "all", "10.0.0.134", "255.255.255.255", "scram-sha-256", ""],
         ["host", "all", "all", "0.0.0.0", "0.0.0.0", "reject", ""]]


def test_the_first_matching_tcp_rule_decides():
    assert allows(RULES, "replication", "replicator", "10.0.0.133")[-1] == "scram-sha-256"
    assert allows(RULES, "replication", "replicator", "10.0.0.140") is None       # "all" is not replication
    assert allows(RULES, "postgres", "pgpool", "10.0.0.134")[3] == "10.0.0.134"
    assert allows(RULES, "postgres", "pgpool", "10.0.0.9")[-1] == "reject"


def test_a_finding_shows_evidence_cause_fix_step_and_the_guides_row():
    f = Finding("listen_addresses", FAIL, "vm2", "listen_addresses = 'localhost'", symptom="refused",
                evidence=["SHOW listen_addresses → localhost"], cause="localhost only",
                fix=["sudo sed …", "sudo systemctl restart postgresql"], step="Step 28",
                guide_row="connection refused 5432")
    text = f.details()
    for part in ("evidence: SHOW listen_addresses", "cause:    localhost only", "fix:      sudo sed",
                 "            sudo systemctl restart", "step:     Step 28",
                 "`listen_addresses = localhost` on VM2"):
        assert part in text, part
    assert f.line().split() [:3] == ["FAIL", "listen_addresses", "vm2"]


def test_exit_status_and_the_summary_line():
    ok, warn, fail = Finding("a", OK, "vm1", "x"), Finding("b", WARN, "vm1", "y"), Finding("c", FAIL, "vm1", "z")
    assert exit_status([ok, warn]) == 0 and exit_status([ok, fail]) == 1
    assert report([ok, warn, fail], 1.23).endswith("diagnosis in 1.2 s: 1 OK, 1 WARN, 1 FAIL; nothing was changed on any host.")


def test_the_checks_reach_hosts_only_through_the_read_only_gateway():
    """No check calls a Remote (run, sudo, psql) or reaches behind ReadOnlyHost."""
    tree = ast.parse(SOURCE)
    called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert not called & {"run", "sudo", "postgres", "psql", "write_file", "read_file", "execute_many"}, called
    assert "_remote" not in SOURCE


def test_every_guide_troubleshooting_row_is_checked():
    for key in checks.GUIDE_ROWS:
        assert SOURCE.count(f'"{key}"') >= 2, key          # defined once, used by a check at least once


class _Named:
    def __init__(self, name):
        self.host = type("H", (), {"name": name})()


class _Cluster:
    pgpool = _Named("vm3")


def test_all_pgpool_children_busy_is_a_warning():
    rows = [{"status": "Execute command"}] * 31 + [{"status": "Wait for connection"}]
    assert pgpool_checks.children_free(_Cluster, rows).status == OK
    busy = pgpool_checks.children_free(_Cluster, [{"status": "Execute command"}] * 32)
    assert busy.status == WARN and "all 32 children are busy" in busy.summary
    assert pgpool_checks.children_free(_Cluster, [{"database": "x"}]).status == OK      # an older pgpool: no status column


class _FileHost(_Named):
    def __init__(self, name, files):
        super().__init__(name)
        self.files = files

    def file(self, path):
        return self.files.get(path)


class _TrustCluster:
    def __init__(self, pool_hba, server_rules):
        self.params = P.load("params/lab.yaml")
        self.pgpool = _FileHost("vm3", {"/etc/pgpool2/pool_hba.conf": pool_hba})
        self.servers = [_Named("vm1")]
        self.pgpool_conf = {}
        self.rules = server_rules

    def conf_dir(self):
        return "/etc/pgpool2"

    def hba_rules(self, host):
        return self.rules

    service = checks.Cluster.service


def test_a_trust_line_anywhere_fails_the_diagnosis():
    peer = [["local", "all", "postgres", "", "", "peer", ""]]
    clean = access.no_trust(_TrustCluster("host all all 10.0.0.0/24 scram-sha-256\n", peer))
    assert [f.status for f in clean] == [OK]
    shipped = access.no_trust(_TrustCluster("local all all trust\nhost all all 127.0.0.1/32 trust\n", peer))
    assert shipped[0].status == FAIL and len(shipped[0].evidence) == 2 and shipped[0].step == "Step 31"
    server = access.no_trust(_TrustCluster("", peer + [["host", "all", "all", "0.0.0.0", "0.0.0.0", "trust", ""]]))
    assert server[0].status == FAIL and server[0].evidence == ["vm1: pg_hba.conf: host all all 0.0.0.0 0.0.0.0 trust"]


class _PgpoolCluster:
    """What reads_spread reads: pgpool.conf's weights, pcp's nodes, the servers' addresses."""
    class params:
        pgpool_host = type("H", (), {"address": "10.0.0.134"})()
        pgpool = {"port": 9999}
    pgpool_conf = {"load_balance_mode": "on", "backend_weight0": "1", "backend_weight1": "2"}
    pcp_nodes = ([{"node_id": 0, "hostname": "10.0.0.132", "status": "up", "role": "primary"},
                  {"node_id": 1, "hostname": "10.0.0.133", "status": "up", "role": "standby"}], None)
    servers = [_Named("vm1"), _Named("vm2")]
    servers[0].host.address, servers[1].host.address = "10.0.0.132", "10.0.0.133"

    def __init__(self):
        self.pgpool = _Named("vm3")
        self.pgpool.transcript = []


def test_a_session_pgpool_closes_is_a_finding_not_a_failed_check(monkeypatch):
    import psycopg
    from collections import Counter
    from lib import loadbalance
    closed = psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

    def sampled(connect, sessions, concurrent, survivable):
        assert psycopg.OperationalError in survivable
        return Counter({"10.0.0.132": sessions // 3, "10.0.0.133": sessions - sessions // 3 - 1}), [closed]
    monkeypatch.setattr(loadbalance, "sample_despite", sampled)
    nodes, _ = _PgpoolCluster.pcp_nodes
    detached = [nodes[0], {**nodes[1], "status": "down"}]
    monkeypatch.setattr(pgpool_checks, "nodes_by_pcp", lambda c: (detached, ""))
    found = pgpool_checks.reads_spread(_PgpoolCluster())
    assert [(f.check, f.status) for f in found] == [("sessions through pgpool", WARN), ("reads spread", OK)]
    assert "pgpool closed 1 of 35 read sessions" in found[0].summary
    assert "server closed the connection unexpectedly" in found[0].evidence[0]
    assert found[0].evidence[1] == "pcp_node_info -n 1 (vm2): up standby before, down standby after"
    assert "pgpool detached a node while the check ran" in found[0].cause
    monkeypatch.setattr(pgpool_checks, "nodes_by_pcp", lambda c: (nodes, ""))
    unchanged = pgpool_checks.reads_spread(_PgpoolCluster())[0]
    assert unchanged.evidence[1] == "pcp_node_info: no node changed" and "no change of node status" in unchanged.cause


def test_too_few_answered_sessions_judge_no_spread(monkeypatch):
    import psycopg
    from collections import Counter
    from lib import loadbalance
    closed = psycopg.OperationalError("server closed the connection unexpectedly")
    monkeypatch.setattr(loadbalance, "sample_despite",
                        lambda *a, **k: (Counter({"10.0.0.133": 5}), [closed] * 30))
    monkeypatch.setattr(pgpool_checks, "nodes_by_pcp", lambda c: _PgpoolCluster.pcp_nodes)
    found = pgpool_checks.reads_spread(_PgpoolCluster())
    assert [f.check for f in found] == ["sessions through pgpool"]      # 5 sessions cannot tell chance from a cause


def _careful_params():
    """The lab's parameters with TLS and units named otherwise than Debian's."""
    data = P.read_file("params/lab.yaml")
    data["postgres"] = {**data.get("postgres", {}), "tls": True, "service": "postgresql-15"}
    data["pgpool"] = {**data.get("pgpool", {}), "service": "pgpool-ii"}
    return P.validate(data)


class _Server(_FileHost):
    def __init__(self, host):
        super().__init__(host.name, {})
        self.host = host


class _DesiredCluster(checks.Cluster):
    """A Cluster over fake hosts: no pg_hba line lets anyone in, and pgpool.conf names vm2 as node 0
    (the roles were swapped by a failover; pgpool keeps its node numbers)."""
    def __init__(self, params):
        self.params = params
        self.primary = _Server(params.primary)
        self.standbys = [_Server(h) for h in params.standbys]
        self.servers = [self.primary, *self.standbys]
        vm1, vm2 = params.primary, params.standbys[0]
        conf = (f"backend_hostname0 = '{vm2.address}'\nbackend_weight0 = 0\n"
                f"backend_hostname1 = '{vm1.address}'\nbackend_weight1 = 1\n"
                "health_check_period = 0\nload_balance_mode = off\nenable_pool_hba = on\n")
        self.pgpool = _FileHost("vm3", {"/etc/pgpool2/pgpool.conf": conf, "/etc/pgpool2/pool_hba.conf": ""})
        self._queries, self.reached = {}, {}

    def hba_rules(self, host):
        return [["local", "all", "postgres", "", "", "peer", ""]]



def test_the_diagnosis_fixes_are_what_the_steps_write_with_tls_and_swapped_nodes():
    from lib import part1, part2
    p = _careful_params()
    c = _DesiredCluster(p)
    fixes = [line for check in (access.replication_allowed, access.pgpool_allowed, access.pool_hba, pgpool_checks.pgpool_settings)
             for f in check(c) if f.status != OK for line in f.fix]
    text = "\n".join(fixes)
    for line in [part1.hba_replication_line(p, p.standbys[0].address), *part2.pgpool_hba_records(p),
                 part2.pool_hba_lines(p)[-1]]:
        assert line.startswith("hostssl ") and f"echo '{line}' | sudo tee -a" in text, line
    assert not [l for l in fixes if l.startswith("echo 'host ")], "a fix writes a host line where the steps write hostssl"
    assert "sudo systemctl reload postgresql-15" in fixes and "sudo systemctl restart pgpool-ii" in fixes
    assert not [l for l in fixes if l.split()[:2] == ["sudo", "systemctl"] and l.split()[3] in ("postgresql", "pgpool2")]
    weights = {f.check: f for f in pgpool_checks.pgpool_settings(c) if f.check.startswith("backend_weight")}
    vm2 = p.standbys[0]
    assert weights["backend_weight0"].summary == f"backend_weight0 = 0: node 0 ({vm2.name}) gets no reads"
    assert f"backend_weight0 = {vm2.lb_weight:g}/" in weights["backend_weight0"].fix[0].replace(".0/", "/")
    assert weights["backend_weight1"].status == OK
    wanted = pgpool_host.pgpool_settings(p, pgpool_host.backend_hosts(p, c.pgpool.files["/etc/pgpool2/pgpool.conf"]))
    assert f"health_check_period = {wanted['health_check_period']}/" in text


def test_no_fix_names_a_unit_or_an_hba_line_of_its_own():
    """Units come from the parameters (Cluster.service), pg_hba and pool_hba lines from the steps' functions."""
    import re
    source = SOURCE
    assert not re.findall(r"systemctl (?:start|stop|restart|reload|status) (?:postgresql|pgpool2)\b", source)
    assert not re.findall(r"echo '(?:host|hostssl) ", source)


def test_every_check_in_the_modules_runs_in_the_diagnosis_once():
    """CHECKS is written out in order; a check added to a module and not to the list would never run."""
    defined = [fn for m in checks.MODULES for name, fn in vars(m).items()
               if inspect.isfunction(fn) and fn.__module__ == m.__name__ and not name.startswith("_")
               and list(inspect.signature(fn).parameters) == ["c"]
               and inspect.signature(fn).return_annotation == "list[Finding]"]
    assert len(defined) == 18 and sorted(f.__name__ for f in defined) == sorted(f.__name__ for f in checks.CHECKS)
    assert len(set(checks.CHECKS)) == len(checks.CHECKS)
