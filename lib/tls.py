"""TLS that checks who answers (postgres.tls). Encryption alone does not: with sslmode=require a
server with any certificate gets the password, because libpq sends it to whoever asks.

So every host gets a key and a self-signed certificate of its own that names its address (Debian's
snakeoil pair names neither, and cloned machines share one), created on the host: the key never
leaves it. Each certificate is then read over SSH, whose host keys are already verified, and every
host trusts exactly those certificates (`postgres.tls_ca_file`). Every connection between the hosts,
and the notebook's, uses sslmode=verify-full against that file, and to a server channel_binding=
require, which refuses any way of sending a password other than SCRAM bound to this TLS session.

With your own CA, point tls_cert_file, tls_key_file and tls_ca_file at your files (on every host):
then nothing is created, and the same checks apply.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from lib import REPO, ops

from lib.params import SCHEMA

#: the defaults of postgres.tls_cert_file, tls_key_file and tls_ca_file: made by these steps
OWN_CERT, OWN_KEY, OWN_CA = (SCHEMA["postgres"][k][2] for k in ("tls_cert_file", "tls_key_file", "tls_ca_file"))
DIR = OWN_CERT.rsplit("/", 1)[0]


def on(params) -> bool:
    return bool(params.postgres["tls"])


def ours(params) -> bool:
    """The pair and the trusted certificates are this project's, made here (not the operator's own CA)."""
    p = params.postgres
    return (p["tls_cert_file"], p["tls_key_file"], p["tls_ca_file"]) == (OWN_CERT, OWN_KEY, OWN_CA)


def client_words(params, *, to_pgpool: bool = False) -> dict[str, str]:
    """libpq keywords for a connection between the hosts: verified TLS, or the guide's plain `prefer`.
    pgpool does not offer SCRAM's channel binding, so a session to pgpool cannot require it."""
    if not on(params):
        return {"sslmode": "prefer"}
    words = {"sslmode": "verify-full", "sslrootcert": params.postgres["tls_ca_file"]}
    if params.postgres["auth_method"] == "scram-sha-256" and not to_pgpool:
        words["channel_binding"] = "require"
    return words


def conninfo_text(params, **kw) -> str:
    return " ".join(f"{k}={v}" for k, v in client_words(params, **kw).items())


def environment(params, **kw) -> str:
    """The same keywords as libpq environment variables, for a shell line (psql as a client)."""
    names = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "channel_binding": "PGCHANNELBINDING"}
    return "".join(f"export {names[k]}={shlex.quote(v)}; " for k, v in client_words(params, **kw).items())


# --- on the hosts ---------------------------------------------------------------------------------------------
def names_its_address(remote) -> bool:
    """The host's certificate exists, has its key beside it, and names the host's address."""
    f = shlex.quote(remote.params.postgres["tls_cert_file"])
    key = shlex.quote(remote.params.postgres["tls_key_file"])
    out = remote.run(f"test -s {key} && openssl x509 -in {f} -noout -ext subjectAltName 2>/dev/null || true",
                     user="root").stdout
    return f"IP Address:{remote.host.address}" in out


def pair_step(step: ops.Step, remote) -> None:
    """The host's own key and certificate, made on the host when it has none that names its address."""
    if not ours(remote.params):
        return
    if names_its_address(remote):
        step.note(remote, f"{OWN_CERT} already names {remote.host.address}")
        return
    h = remote.host
    make = (f"install -d -m 755 {DIR} && (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
            f"-nodes -days 3650 -subj /CN={h.name} -addext subjectAltName=IP:{h.address},DNS:{h.name} "
            f"-keyout {OWN_KEY} -out {OWN_CERT}) && chmod 644 {OWN_CERT}")
    # the server (or pgpool) runs as postgres and reads its key; on the pgpool host that user comes with
    # pgpool2 (Step 20), which then calls key_owner_step
    make += f" && if id -u postgres >/dev/null 2>&1; then chown postgres:postgres {OWN_KEY} {OWN_CERT}; fi"
    step.do(ops.Command(remote, "root", make, summary=f"a key and certificate of its own for {h.address}"))


def key_owner_step(step: ops.Step, remote) -> None:
    """The key made before its host had a postgres user, handed to postgres."""
    if not (on(remote.params) and ours(remote.params)):
        return
    owner = remote.run(f"stat -c %U {OWN_KEY} 2>/dev/null || true", user="root").stdout.strip()
    if owner != "postgres":
        step.do(ops.Command(remote, "root", f"chown postgres:postgres {OWN_KEY} {OWN_CERT}",
                            summary=f"{OWN_KEY} now belongs to postgres, who runs pgpool"))


def bundle(sources: list) -> str:
    """The certificates of `sources`, each read once over SSH, one after the other, each named."""
    return "".join(f"# {s.host.name} {s.host.address}\n"
                   + s.read_file(s.params.postgres["tls_cert_file"]).strip() + "\n" for s in sources)


def trust_step(step: ops.Step, remote, text: str, names: str) -> str:
    """tls_ca_file on `remote`: `text`, the certificates of `names` (your own CA's file is only read).
    Returns what the file holds then."""
    if not ours(remote.params):
        return remote.read_file(remote.params.postgres["tls_ca_file"])
    current = remote.run(f"cat {OWN_CA} 2>/dev/null || true", user="root", mask=False).stdout
    if current != text:
        step.do(ops.FileChange(remote, "root", path=OWN_CA, old=current or None, new=(text,),
                               owner="root:root", mode="644"))
    else:
        step.note(remote, f"{OWN_CA} already holds the certificates of {names}")
    return text


def local_file(params) -> Path:
    """The notebook's copy of the trusted certificates (they are public): beside the run records."""
    return REPO / "runs" / params.environment / "tls-root.crt"


def keep_locally(params, text: str) -> None:
    path = local_file(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def trust_step_for_servers(step: ops.Step, env) -> None:
    """Every database server trusts every database server's certificate, and so does the notebook."""
    if not on(env.params):
        return
    servers = [env.primary, *env.standbys]
    text, names = bundle(servers) if ours(env.params) else "", ", ".join(s.host.name for s in servers)
    for r in servers:
        held = trust_step(step, r, text, names)
    keep_locally(env.params, held)


def trust_step_for_pgpool(step: ops.Step, env) -> None:
    """The pgpool host trusts the servers' certificates (its backend connections) and its own (clients on
    the host); the notebook keeps the same file."""
    if not on(env.params):
        return
    hosts = [env.primary, *env.standbys, env.pgpool]
    text = bundle(hosts) if ours(env.params) else ""
    keep_locally(env.params, trust_step(step, env.pgpool, text, ", ".join(h.host.name for h in hosts)))
