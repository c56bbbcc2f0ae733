"""How the notebook side opens PostgreSQL sessions: through lib.db.connect only, which refuses a lab
address that is not routed through the lab's bridge (else it would leave this machine)."""
import re
import subprocess

import pytest

from lib import REPO, hosts
from lib import params as P


@pytest.fixture
def routes(monkeypatch):
    """`ip route get` answered from a dict (address -> device); the calls counted."""
    table, calls = {}, []

    def run(argv, **kw):
        calls.append(argv[-1])
        dev = table.get(argv[-1])
        out = f'[{{"dst":"{argv[-1]}","dev":"{dev}"}}]' if dev else "[]"
        return subprocess.CompletedProcess(argv, 0, out, "")
    monkeypatch.setattr(hosts.subprocess, "run", run)
    hosts._routes_seen.clear()
    return table, calls


def test_a_lab_address_not_routed_through_the_bridge_is_refused_and_a_seen_route_is_trusted_briefly(
        routes, monkeypatch):
    table, calls = routes
    params = P.load()
    pool = params.pgpool_host
    with pytest.raises(hosts.HostUnreachable, match="the lab is not up"):
        hosts.require_lab_route(params, pool)
    table[pool.address] = f"{params.lab['name']}-br"
    now = [1000.0]
    monkeypatch.setattr(hosts.time, "monotonic", lambda: now[0])
    hosts.require_lab_route(params, pool)
    hosts.require_lab_route(params, pool)
    assert len(calls) == 2                              # the second within ROUTE_SEEN_S: not asked again
    table[pool.address] = "eth0"                        # the lab went down: the address leads elsewhere
    now[0] += hosts.ROUTE_SEEN_S + 0.1
    with pytest.raises(hosts.HostUnreachable, match="route: eth0"):
        hosts.require_lab_route(params, pool)


def test_no_module_opens_a_session_but_lib_db():
    """psycopg.connect elsewhere would skip the route guard and the timeouts (the drills once did)."""
    found = [f"{p.relative_to(REPO)}" for p in sorted((REPO / "lib").rglob("*.py"))
             if p.name != "db.py" and re.search(r"psycopg\.(Async)?Connection\.connect|psycopg\.connect\(", p.read_text())]
    assert not found, found


def test_the_drills_open_their_sessions_through_lib_db(monkeypatch):
    from lib import db, drills
    seen = {}

    def connect(params, host, **kw):
        seen.update(kw, host=host.name)
        return "a session"
    monkeypatch.setattr(db, "connect", connect)
    monkeypatch.setenv("PGGUIDE_POSTGRES_PASSWORD", "x")
    env = type("Env", (), {"params": P.load()})()
    assert drills.Traffic(env)._connect() == "a session"
    assert seen["host"] == "vm3" and seen["connect_timeout"] == 2 and seen["application_name"] == "pgguide-drill"
    assert seen["statement_timeout_s"] == drills.STATEMENT_TIMEOUT_S


def test_the_transcript_prompt_is_built_in_one_place():
    """`host (user) $ ` comes from lib.show.prompt."""
    allowed = {"lib/show.py", "lib/transcript_lexer.py"}
    found = [f"{p.relative_to(REPO)}:{n}" for p in sorted((REPO / "lib").rglob("*.py")) if str(p.relative_to(REPO)) not in allowed
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"[\w}] \((?:root|postgres|a client|[{][^}]*[}])\) \$ ", line) and not line.lstrip().startswith("#")]
    assert not found, found
