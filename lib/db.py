"""psycopg connections from the notebook to a host's PostgreSQL (or to pgpool)."""
from __future__ import annotations

import psycopg

from lib import hosts, journal, tls
from lib.params import Host, Params

APPLICATION_NAME = "pgguide-notebook"


def conninfo(params: Params, host: Host, *, user: str, port: int | None = None, dbname: str = "postgres",
             connect_timeout: int | None = None, application_name: str = APPLICATION_NAME) -> dict:
    """Connection keywords, without the password (it is passed separately)."""
    return {"host": host.address, "port": port or params.postgres["port"], "user": user,
            "dbname": dbname, "connect_timeout": connect_timeout or params.ssh["connect_timeout"],
            "application_name": application_name,
            # a server that stops answering mid-query fails the query instead of hanging it
            "tcp_user_timeout": params.ssh["command_timeout"] * 1000,
            "keepalives_idle": 5, "keepalives_interval": 5, "keepalives_count": 3,
            **verified_tls(params, host)}


def verified_tls(params: Params, host: Host) -> dict:
    """lib.tls's checks, against the notebook's copy of the trusted certificates."""
    words = tls.client_words(params, to_pgpool=host.address == params.pgpool_host.address)
    if "sslrootcert" in words:
        words["sslrootcert"] = str(tls.local_file(params))
    return words


def connect(params: Params, host: Host, *, user: str, password: str, port: int | None = None,
            dbname: str = "postgres", autocommit: bool = True, connect_timeout: int | None = None,
            application_name: str = APPLICATION_NAME, statement_timeout_s: int | None = None) -> psycopg.Connection:
    """An open connection. In the lab the address must be behind the lab's bridge. A client that must
    notice a failure fast (the drills) sets a short connect_timeout, and a statement_timeout."""
    if params.is_lab:
        hosts.require_lab_route(params, host)
    kw = conninfo(params, host, user=user, port=port, dbname=dbname, connect_timeout=connect_timeout,
                  application_name=application_name)
    if statement_timeout_s:
        kw["options"] = f"-c statement_timeout={int(statement_timeout_s)}s"
    journal.contacted(host.name)
    try:
        return psycopg.connect(**kw, password=password, autocommit=autocommit)
    except psycopg.OperationalError as e:
        raise ConnectionError(f"cannot connect to {host.label} port {kw['port']} as {user} "
                              f"(database {dbname}): {str(e).strip()}") from None


def rows(conn: psycopg.Connection, sql: str, args: tuple | dict | None = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []
