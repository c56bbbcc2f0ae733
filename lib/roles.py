"""Does a role's stored password already match the secret? Answering that from the
server's stored verifier lets a second run leave the role untouched (a re-set password
would get a new salt: a change) while a changed secret is still applied."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os


def verifier_matches(stored: str | None, password: str, role: str) -> bool:
    """True if `stored` (pg_authid.rolpassword) is the verifier of `password`."""
    if not stored:
        return False
    if stored.startswith("md5"):
        return hmac.compare_digest(stored, md5_verifier(password, role))
    if stored.startswith("SCRAM-SHA-256$"):
        try:
            iterations, salt = stored.split("$")[1].split(":")
            stored_key, server_key = stored.split("$")[2].split(":")
        except (IndexError, ValueError):
            return False
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        server = hmac.new(salted, b"Server Key", "sha256").digest()
        return (hmac.compare_digest(base64.b64encode(hashlib.sha256(client_key).digest()).decode(), stored_key)
                and hmac.compare_digest(base64.b64encode(server).decode(), server_key))
    return False


def sql_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    return "'" + value.replace("'", "''") + "'"


SCRAM_ITERATIONS = 4096      # PostgreSQL's default (scram_iterations)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for `password` (RFC 5802/7677), computed
    here: sent as the role's PASSWORD, it is stored as is, and the password never reaches the
    server or its log. (No SASLprep: PostgreSQL uses the raw bytes when the password is not valid
    UTF-8 normalisable text, and secrets here are ASCII in practice.)"""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def md5_verifier(password: str, role: str) -> str:
    """What PostgreSQL stores for an md5 password: 'md5' + md5(password || role)."""
    return "md5" + hashlib.md5((password + role).encode()).hexdigest()
