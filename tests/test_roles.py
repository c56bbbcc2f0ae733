from lib.roles import sql_literal, verifier_matches

# Stored by PostgreSQL 15 for CREATE ROLE ... PASSWORD 'replica123' (the lab's public demo
# value), copied from pg_authid.rolpassword.
POSTGRES_SCRAM = ("SCRAM-SHA-256$4096:iUu7lakTqEadDRhBa4amtg==$7IRihw0dd/gOueuo0BHCANvLYi24uVh3qvaco17s4XA="
                  ":o4mFbkXkbWM+6YRWRqeLRsfyTqZOXtkLY3gT/+Heprc=")
MD5 = "md5" + __import__("hashlib").md5(b"replica123replicator").hexdigest()


def test_md5_verifier():
    assert verifier_matches(MD5, "replica123", "replicator")
    assert not verifier_matches(MD5, "other", "replicator")
    assert not verifier_matches(MD5, "replica123", "someone")


def test_scram_verifier_made_by_postgresql():
    assert verifier_matches(POSTGRES_SCRAM, "replica123", "any-role")
    assert not verifier_matches(POSTGRES_SCRAM, "replica12", "any-role")


def test_scram_verifier_round_trip():
    import base64, hashlib, hmac
    salt, it = b"0123456789abcdef", 4096
    salted = hashlib.pbkdf2_hmac("sha256", b"replica123", salt, it)
    stored = base64.b64encode(hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()).decode()
    server = base64.b64encode(hmac.new(salted, b"Server Key", "sha256").digest()).decode()
    verifier = f"SCRAM-SHA-256${it}:{base64.b64encode(salt).decode()}${stored}:{server}"
    assert verifier_matches(verifier, "replica123", "replicator")
    assert not verifier_matches(verifier, "replica124", "replicator")


def test_no_or_odd_verifier():
    assert not verifier_matches(None, "x", "r")
    assert not verifier_matches("SCRAM-SHA-256$broken", "x", "r")


def test_sql_literal_doubles_quotes():
    assert sql_literal("it's") == "'it''s'"


def test_a_verifier_computed_here_is_one_postgres_accepts_for_the_password():
    from lib.roles import md5_verifier, scram_verifier, verifier_matches
    v = scram_verifier("s3cret-pw")
    assert v.startswith("SCRAM-SHA-256$4096:") and verifier_matches(v, "s3cret-pw", "pgpool")
    assert not verifier_matches(v, "other-pw", "pgpool")
    assert scram_verifier("s3cret-pw") != v                       # a fresh salt each time
    # what PostgreSQL 15 itself stored for 'postgres123' (CREATE ROLE on the lab): same salt, same verifier
    stored = ("SCRAM-SHA-256$4096:1Cw9eRvd6BO6+llbYw6XYQ==$CF/crfo0uWc4beTLIP+eBOPDMaq7eUGSUWG/rVhMwvQ="
              ":9w3FHsOwdxZcLTqFSkcy34lr919lnZfsCkEGaVvXCJI=")
    import base64
    assert scram_verifier("postgres123", base64.b64decode("1Cw9eRvd6BO6+llbYw6XYQ==")) == stored
    assert md5_verifier("pw", "bob") == "md5" + __import__("hashlib").md5(b"pwbob").hexdigest()
