"""Part 1 of the guide, step by step: what each step does on a host, idempotently.

Each function returns what the notebook prints; each check raises CheckFailed with the
likely cause and the fix from the guide's troubleshooting table.
"""
from __future__ import annotations

import shlex
from typing import Callable

from lib import pgconf
from lib.roles import sql_literal, verifier_matches
from lib.show import expect
from lib.steps import Remote, StepFailed
from lib.wait import wait_until

#: Step 2: the settings the guide sets on the primary (wal_keep_size in MB).
PRIMARY_SETTINGS = {"listen_addresses": "*", "wal_level": "replica", "max_wal_senders": 5, "wal_keep_size": 64}
REPLICATION_ROLE = "replicator"


def auth_method(params) -> str:
    """pg_hba's method, and how passwords are stored: postgres.auth_method. The guide writes
    md5; with PostgreSQL 14+ passwords are stored as SCRAM and md5 in pg_hba only means
    "SCRAM or md5", so by default we name the method that is actually used."""
    return params.postgres["auth_method"]


def conf_file(remote: Remote, name: str) -> str:
    return f"{remote.params.postgres['conf_dir']}/{name}"


def edit_file(remote: Remote, path: str, edit: Callable[[str], tuple[str, list[str]]], *,
              secret_content: bool = False) -> list[str]:
    """Read, edit, and write back only if the text changed. Returns the changed lines.
    On a read-only Remote (a check) nothing is written: the changes are what would be made.
    secret_content: the lines hold password hashes, so the journal names only the file."""
    old = remote.read_file(path)
    new, changes = edit(old)
    if new != old and not remote.read_only:
        remote.write_file(path, new)
        for line in ([] if secret_content else [c for c in changes if c.startswith("+")]) or ["rewritten"]:
            remote.changed(f"{path}: {line}")
    return changes


def report(remote: Remote, path: str, changes: list[str]) -> str:
    if not changes:
        return f"{remote.host.name}: {path} already as the guide wants it (unchanged)"
    return f"{remote.host.name}: {path} changed:\n" + "\n".join("  " + c for c in changes)


# --- Step 1 ----------------------------------------------------------------------------------
def role_differences(remote: Remote, role: str, password: str, attributes: str) -> list[str] | None:
    """None if the role does not exist; else what differs from the wanted attributes and
    password (an empty list: nothing). Reads only; the password is never shown."""
    row = remote.psql(f"SELECT rolreplication, rolcanlogin, coalesce(rolpassword, '') FROM pg_authid "
                      f"WHERE rolname = {sql_literal(role)}", mask=False).stdout.strip()
    if not row:
        return None
    replication, login, stored = row.split("|", 2)
    method = auth_method(remote.params)
    differences = []
    # Only what is asked for is checked: postgres keeps its REPLICATION when asked for LOGIN.
    if login != "t":
        differences.append("cannot log in")
    if replication != "t" and "REPLICATION" in attributes.upper():
        differences.append("lacks REPLICATION")
    if not stored:
        differences.append("has no password")
    elif ("md5" if stored.startswith("md5") else "scram-sha-256") != method:
        differences.append(f"password not stored as {method}")
    elif not verifier_matches(stored, password, role):
        differences.append("has another password")
    return differences


def ensure_role(remote: Remote, role: str, password: str, attributes: str) -> str:
    """Create the role, or bring its attributes and password in line; untouched if both
    match. The password is stored the way postgres.auth_method says (SCRAM or md5)."""
    differences = role_differences(remote, role, password, attributes)
    wanted = (f"SET password_encryption = {sql_literal(auth_method(remote.params))};\n"
              f"{{verb}} ROLE {role} WITH {attributes} PASSWORD {sql_literal(password)};")
    if differences is None:
        remote.psql(wanted.format(verb="CREATE"))
        remote.changed(f"role {role} created")
        return f"{remote.host.name}: role {role} created"
    if not differences:
        return f"{remote.host.name}: role {role} already in place (attributes and password match)"
    remote.psql(wanted.format(verb="ALTER"))
    remote.changed(f"role {role} updated ({', '.join(differences)})")
    return f"{remote.host.name}: role {role} updated (attributes or password differed)"


def role_listing(remote: Remote) -> list[tuple[str, str]]:
    """What psql's \\du shows, as stable rows."""
    out = remote.psql("""
        SELECT rolname, concat_ws(', ',
            CASE WHEN rolsuper THEN 'Superuser' END, CASE WHEN rolcreaterole THEN 'Create role' END,
            CASE WHEN rolcreatedb THEN 'Create DB' END, CASE WHEN NOT rolcanlogin THEN 'Cannot login' END,
            CASE WHEN rolreplication THEN 'Replication' END, CASE WHEN rolbypassrls THEN 'Bypass RLS' END)
        FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname""").lines
    return [tuple(line.split("|")) for line in out]


# --- Steps 2-6 (primary) -------------------------------------------------------------------
def configure_primary(remote: Remote) -> list[str]:
    return edit_file(remote, conf_file(remote, "postgresql.conf"),
                     lambda text: pgconf.set_settings(text, PRIMARY_SETTINGS))


def hba_replication_lines(standbys: list[Remote]) -> list[str]:
    return [f"host replication {REPLICATION_ROLE} {s.host.address}/32 {auth_method(s.params)}" for s in standbys]


def allow_replication(remote: Remote, standbys: list[Remote]) -> list[str]:
    return edit_file(remote, conf_file(remote, "pg_hba.conf"),
                     lambda text: pgconf.add_hba_records(text, hba_replication_lines(standbys)))


def ufw_state(remote: Remote) -> str:
    """'absent', 'inactive' or 'active': Ubuntu installs ufw (often active), Debian does not."""
    state = remote.sudo("command -v ufw >/dev/null || { echo absent; exit 0; }; ufw status | head -1").stdout.strip()
    return "absent" if state == "absent" else "inactive" if "inactive" in state else "active"


def open_firewall(remote: Remote, port: int) -> str:
    state = ufw_state(remote)
    if state == "absent":
        return f"{remote.host.name}: ufw is not installed, so no host firewall to open (step skipped)"
    if state == "inactive":
        return f"{remote.host.name}: ufw is installed but inactive, so port {port} is not blocked (step skipped)"
    before = remote.sudo("ufw status").stdout
    remote.sudo(f"ufw allow {port}/tcp && ufw reload")
    after = remote.sudo("ufw status").stdout
    if before != after:
        remote.changed(f"ufw allows {port}/tcp")
    return (f"{remote.host.name}: ufw already allows {port}/tcp" if before == after
            else f"{remote.host.name}: ufw now allows {port}/tcp")


def settings_differing(remote: Remote, wanted: dict) -> list[str]:
    """Settings whose running value differs from `wanted` (pg_settings.setting, base units)."""
    names = ", ".join(sql_literal(n) for n in wanted)
    running = dict(line.split("|", 1) for line in remote.psql(
        f"SELECT name, setting FROM pg_settings WHERE name IN ({names})").lines)
    return [n for n, v in wanted.items() if running.get(n) != str(v)]


def apply_changes(remote: Remote, conf_changed: bool, hba_changed: bool, wanted: dict) -> str:
    """The guide restarts unconditionally. We restart only when postgresql.conf changed or
    the server still runs with other settings, reload when only pg_hba.conf changed, and
    otherwise leave the running server alone, so a second run disturbs nothing."""
    service = remote.params.postgres["service"]
    hint = f"the server did not come back: read {remote.params.postgres['log_file']} on {remote.host.name}"
    if conf_changed or settings_differing(remote, wanted):
        remote.sudo(f"systemctl restart {service}", hint=hint)
        remote.changed("PostgreSQL restarted")
        return f"{remote.host.name}: restarted PostgreSQL (settings changed)"
    if hba_changed:
        remote.sudo(f"systemctl reload {service}", hint=hint)
        remote.changed("PostgreSQL reloaded")
        return f"{remote.host.name}: reloaded PostgreSQL (pg_hba.conf changed)"
    return f"{remote.host.name}: configuration unchanged and in effect: no restart needed"


def cluster_status(remote: Remote) -> str:
    """The guide's `pg_lsclusters`, and its status for our cluster."""
    return remote.sudo("pg_lsclusters").stdout.rstrip()


def cluster_state(remote: Remote) -> str:
    p = remote.params.postgres
    out = remote.sudo(f"pg_lsclusters --no-header {p['version']} {p['cluster']}", check=False).stdout.split()
    return out[3] if len(out) > 3 else "absent"


def show_settings(remote: Remote, names: list[str]) -> dict[str, str]:
    return {n: remote.psql(f"SHOW {n}").stdout.strip() for n in names}


# --- Steps 7-11 (standby) ---------------------------------------------------------------------
def standby_state(remote: Remote, primary: Remote) -> str:
    """'streaming' if this host already is a standby streaming from the primary."""
    if cluster_state(remote) != "online,recovery":
        return cluster_state(remote)
    row = remote.psql("SELECT pg_is_in_recovery(), coalesce((SELECT status || ' ' || sender_host "
                      "FROM pg_stat_wal_receiver), '')").stdout.strip()
    return "streaming" if row == f"t|streaming {primary.host.address}" else f"recovery ({row})"


def needs_clone(remote: Remote, primary: Remote) -> tuple[bool, str]:
    state = standby_state(remote, primary)
    if state == "streaming" and not remote.params.options["rebuild_standby"]:
        return False, (f"{remote.host.name}: already a standby streaming from {primary.host.name}; "
                       "steps 7-11 are skipped (set options.rebuild_standby: true to clone it again)")
    return True, f"{remote.host.name}: cluster is {state}; it will be cloned from {primary.host.name}"


def stop_server(remote: Remote) -> str:
    remote.sudo(f"systemctl stop {remote.params.postgres['service']}")
    remote.changed("PostgreSQL stopped")
    # The per-cluster unit can still be stopping when systemctl returns: wait for it.
    state, _ = wait_until(lambda: (lambda st: st if st.startswith("down") else "")(cluster_state(remote)),
                          timeout=30)
    state = state or cluster_state(remote)
    expect(state.startswith("down"), f"{remote.host.name}: the cluster is {state!r} after systemctl stop.",
           "stop it with pg_ctlcluster VERSION CLUSTER stop and read its log.")
    return f"{remote.host.name}: cluster {state}"


def clear_data_directory(remote: Remote, primary: Remote) -> str:
    """The guide's `rm -rf .../main/*`, refused unless this is a standby host, not the
    primary, and the directory is that cluster's own data directory with the server down."""
    p = remote.params.postgres
    data_dir = p["data_dir"]
    addresses = remote.run("ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1").lines
    lsc = remote.sudo(f"pg_lsclusters --no-header {p['version']} {p['cluster']}", check=False).stdout.split()
    refusals = []
    if remote.host.role != "standby":
        refusals.append(f"{remote.host.name} is the {remote.host.role}, not a standby")
    if remote.host.address not in addresses or primary.host.address in addresses:
        refusals.append(f"the host answering at {remote.host.address} has addresses {addresses}")
    if len(lsc) < 6 or lsc[5].rstrip("/") != data_dir.rstrip("/"):
        refusals.append(f"cluster {p['version']}/{p['cluster']} does not use {data_dir} ({' '.join(lsc) or 'no cluster'})")
    elif not lsc[3].startswith("down"):          # "down", or "down,recovery" for a standby
        refusals.append(f"the cluster is {lsc[3]}, not down")
    expect(not refusals, "Refusing to clear the data directory: " + "; ".join(refusals) + ".",
           "check the parameters (hosts, postgres.data_dir) and stop the standby first (step 7).")
    remote.postgres(f"find {shlex.quote(data_dir)} -mindepth 1 -delete")
    remote.changed(f"{data_dir} cleared")
    left = remote.postgres(f"ls -A {shlex.quote(data_dir)}").stdout.strip()
    expect(left == "", f"{data_dir} is not empty after clearing: {left}", "remove what is left by hand.")
    return f"{remote.host.name}: {data_dir} is empty"


def base_backup(remote: Remote, primary: Remote, password: str) -> str:
    """pg_basebackup -R -X stream -c fast, with the password on stdin (never in argv)."""
    p = remote.params.postgres
    conninfo = (f"host={primary.host.address} port={p['port']} user={REPLICATION_ROLE} "
                f"application_name={remote.host.name}")
    # Progress (-P) and errors both go to stderr: keep the last progress line on success,
    # and every other line, on stderr, on failure.
    script = (f"read -r PGPASSWORD; export PGPASSWORD; log=$(mktemp); "
              f"pg_basebackup -d {shlex.quote(conninfo)} -D {shlex.quote(p['data_dir'])} "
              f"-P -X stream -R -c fast 2>\"$log\"; rc=$?; "
              "tr '\\r' '\\n' <\"$log\" | grep -v '^$' | "
              "if [ $rc -eq 0 ]; then tail -1; else grep -v ' kB (' >&2; fi; rm -f \"$log\"; exit $rc")
    try:
        progress = remote.postgres(script, stdin=password + "\n").stdout.strip()
        remote.changed(f"base backup from {primary.host.name} into {p['data_dir']}")
        return progress
    except StepFailed as e:
        raise StepFailed(f"{e}\nThe base backup failed. Likely causes: a wrong replication password "
                         f"(PGGUIDE_REPLICATION_PASSWORD), no pg_hba line for {remote.host.address} on "
                         f"{primary.host.name} (step 3), or {primary.host.name} not listening on "
                         f"{p['port']} (steps 2 and 5).") from None


def standby_files(remote: Remote) -> tuple[bool, dict[str, str]]:
    """standby.signal present?, and primary_conninfo's fields (password masked)."""
    data_dir = remote.params.postgres["data_dir"]
    signal = remote.postgres(f"test -f {data_dir}/standby.signal", check=False).ok
    fields = conninfo_fields(auto_conf(remote))
    if "password" in fields:
        fields["password"] = "********"
    return signal, fields


def auto_conf(standby: Remote) -> str:
    """postgresql.auto.conf, unmasked: it holds the replication password; never print it."""
    data_dir = standby.params.postgres["data_dir"]
    return standby.postgres(f"cat {data_dir}/postgresql.auto.conf", mask=False).stdout


def conninfo_fields(auto_conf_text: str) -> dict[str, str]:
    """primary_conninfo's keywords, from postgresql.auto.conf's text. Two quotings nest: the
    file's ('' and \\ doubled, as ALTER SYSTEM writes them) around libpq's (a value in '...'
    with \\' and \\\\ escaped, or bare with \\ escapes)."""
    line = next((l for l in auto_conf_text.splitlines() if l.startswith("primary_conninfo")), "")
    quoted = line.split("=", 1)[1].strip() if line else ""
    return _parse_conninfo(_unquote_setting(quoted[1:-1] if quoted.startswith("'") else quoted))


def _unquote_setting(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] in "'\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _parse_conninfo(text: str) -> dict[str, str]:
    fields, i, n = {}, 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n or "=" not in text[i:]:
            break
        eq = text.index("=", i)
        key, i = text[i:eq].strip(), eq + 1
        while i < n and text[i].isspace():
            i += 1
        quoted = i < n and text[i] == "'"
        i += quoted
        value = []
        while i < n and (text[i] != "'" if quoted else not text[i].isspace()):
            if text[i] == "\\" and i + 1 < n:
                i += 1
            value.append(text[i])
            i += 1
        i += quoted
        fields[key] = "".join(value)
    return fields


def _conninfo_quote(value: str) -> str:
    """A libpq connection-string value, quoted when it needs to be."""
    if value and all(c.isalnum() or c in "._-/:@" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sync_replication_password(standby: Remote, password: str) -> str:
    """The password in the standby's primary_conninfo is the replication secret. A standby
    that streams is not cloned again, so it keeps the password it was cloned with; when
    options.reset_passwords changed the role's password in Step 1, the standby would fail
    at its next reconnect. ALTER SYSTEM works on a standby and a reload applies it."""
    fields = conninfo_fields(auto_conf(standby))
    if fields.get("password") == password:
        return "primary_conninfo password matches PGGUIDE_REPLICATION_PASSWORD"
    fields["password"] = password
    conninfo = " ".join(f"{k}={_conninfo_quote(v)}" for k, v in fields.items())
    standby.psql(f"ALTER SYSTEM SET primary_conninfo = {sql_literal(conninfo)};\nSELECT pg_reload_conf();")
    standby.changed("primary_conninfo: password set to PGGUIDE_REPLICATION_PASSWORD")
    return "primary_conninfo password set to PGGUIDE_REPLICATION_PASSWORD (reloaded)"


def start_server(remote: Remote) -> str:
    remote.sudo(f"systemctl start {remote.params.postgres['service']}")
    remote.changed("PostgreSQL started")
    state, _ = wait_until(lambda: cluster_state(remote) == "online,recovery" and "online,recovery",
                          timeout=30)
    expect(state == "online,recovery",
           f"{remote.host.name}: cluster is {cluster_state(remote)!r}, not 'online,recovery'.",
           f"read {remote.params.postgres['log_file']} on {remote.host.name}; a missing standby.signal "
           "(touch it in the data directory) gives 'online' without recovery.")
    return f"{remote.host.name}: cluster online,recovery"


# --- Steps 12-17 -------------------------------------------------------------------------------
def replication_rows(primary: Remote) -> list[tuple[str, ...]]:
    return [tuple(l.split("|")) for l in primary.psql(
        "SELECT usename, application_name, client_addr, state, sync_state FROM pg_stat_replication "
        "ORDER BY client_addr").lines]


def wait_for_streaming(primary: Remote, standbys: list[Remote], timeout: float = 30) -> list[tuple[str, ...]]:
    wanted = {s.host.address for s in standbys}
    rows, _ = wait_until(lambda: (lambda r: r if {x[2] for x in r if x[3] == "streaming"} >= wanted else None)(
        replication_rows(primary)), timeout=timeout)
    rows = rows or replication_rows(primary)
    streaming = {x[2] for x in rows if x[3] == "streaming"}
    expect(streaming >= wanted,
           f"pg_stat_replication on {primary.host.name} shows {sorted(streaming) or 'no standby'} streaming, "
           f"expected {sorted(wanted)}.",
           f"check the standby's log ({primary.params.postgres['log_file']}), the pg_hba line for the standby "
           "(step 3), the firewall (step 4) and primary_conninfo (step 10).")
    return rows


TEST_DB = "testdb"
GUIDE_ROWS = [("Alice", "Engineering"), ("Bob", "Marketing"), ("Charlie", "Finance")]


def create_test_data(primary: Remote) -> str:
    """Step 14: testdb, employees and the guide's three rows; rows already there are kept."""
    created = primary.psql(f"SELECT 'CREATE DATABASE {TEST_DB}' WHERE NOT EXISTS "
                           f"(SELECT FROM pg_database WHERE datname = '{TEST_DB}')\\gexec\n"
                           f"SELECT count(*) FROM pg_database WHERE datname = '{TEST_DB}'").stdout.strip()
    expect(created == "1", f"database {TEST_DB} was not created.", "read the error above.")
    values = ", ".join(f"({sql_literal(n)}, {sql_literal(d)})" for n, d in GUIDE_ROWS)
    inserted = primary.psql(f"""
        CREATE TABLE IF NOT EXISTS employees (
            id         SERIAL PRIMARY KEY,
            name       VARCHAR(100),
            department VARCHAR(100));
        WITH guide(name, department) AS (VALUES {values}),
             added AS (INSERT INTO employees (name, department)
                       SELECT g.name, g.department FROM guide g
                       WHERE NOT EXISTS (SELECT FROM employees e WHERE e.name = g.name) RETURNING 1)
        SELECT count(*) FROM added;""", database=TEST_DB).stdout.strip()
    there = len(GUIDE_ROWS) - int(inserted)
    if int(inserted):
        primary.changed(f"{inserted} rows inserted into {TEST_DB}.employees")
    return (f"{primary.host.name}: database {TEST_DB} and table employees ready; {inserted} of the guide's "
            f"{len(GUIDE_ROWS)} rows inserted" + (f", {there} already there" if there else ""))


def employees(remote: Remote) -> str:
    """SELECT * FROM employees, as psql prints it."""
    return remote.psql("SELECT * FROM employees ORDER BY id", database=TEST_DB, tuples=False).stdout.rstrip()


def employee_names(remote: Remote) -> list[str]:
    r = remote.psql("SELECT name FROM employees ORDER BY id", database=TEST_DB, check=False)
    return r.lines if r.ok else []


def wait_for_rows(standby: Remote, names: list[str], timeout: float = 10) -> float:
    """Wait until the standby shows every name; return the seconds it took."""
    found, waited = wait_until(lambda: set(names) <= set(employee_names(standby)), timeout=timeout, interval=0.01)
    expect(found, f"{standby.host.name} does not show {names} after {timeout:.0f} s.",
           "check replication (step 12): pg_stat_replication on the primary, and the standby's log.")
    return waited


def write_on_standby(standby: Remote) -> tuple[int, str]:
    """Step 16: an INSERT on the standby must fail with SQLSTATE 25006 (read_only_sql_transaction)."""
    r = standby.psql("\\set VERBOSITY verbose\nINSERT INTO employees (name, department) VALUES ('Hacker', 'Unknown');",
                     database=TEST_DB, check=False)
    error = next((l[l.index("ERROR:"):] for l in r.stderr.splitlines() if "ERROR:" in l), r.stderr.strip())
    expect(r.exit_code != 0 and "25006" in error,
           f"the INSERT on {standby.host.name} did not fail with SQLSTATE 25006 (exit {r.exit_code}: {error!r}).",
           "the host is not in recovery: standby.signal is missing (pg_is_in_recovery() = f); "
           "touch it in the data directory and restart (troubleshooting table).")
    return r.exit_code, error


def insert_if_absent(primary: Remote, name: str, department: str) -> bool:
    """Insert one employee unless one with that name exists; True if inserted."""
    inserted = primary.psql(f"""
        WITH added AS (INSERT INTO employees (name, department)
                       SELECT {sql_literal(name)}, {sql_literal(department)}
                       WHERE NOT EXISTS (SELECT FROM employees WHERE name = {sql_literal(name)}) RETURNING 1)
        SELECT count(*) FROM added""", database=TEST_DB).stdout.strip() == "1"
    if inserted:
        primary.changed(f"{name} inserted into {TEST_DB}.employees")
    return inserted
