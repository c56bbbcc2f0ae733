"""What a connection between the hosts asks of TLS (lib.tls), without a lab: verified with postgres.tls,
channel binding only where the other end offers it (a server with SCRAM, not pgpool)."""
import pytest

from lib import params as P
from lib import tls


def prm(**postgres):
    data = P.read_file(P.DEFAULT_FILE)
    data["postgres"].update(postgres)
    return P.validate(data)


def test_without_postgres_tls_the_guides_prefer():
    assert tls.client_words(prm()) == {"sslmode": "prefer"}


def test_with_postgres_tls_the_server_is_verified_and_scram_is_bound_to_the_session():
    assert tls.client_words(prm(tls=True)) == {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/pgguide/root.crt",
                                               "channel_binding": "require"}
    assert "channel_binding" not in tls.client_words(prm(tls=True), to_pgpool=True)     # pgpool offers no binding
    assert "channel_binding" not in tls.client_words(prm(tls=True, auth_method="md5"))  # md5 cannot be bound


def test_the_shell_form_exports_the_same_words():
    assert tls.environment(prm(tls=True)) == ("export PGSSLMODE=verify-full; export PGSSLROOTCERT=/etc/ssl/pgguide/root.crt; "
                                              "export PGCHANNELBINDING=require; ")


@pytest.mark.parametrize("own", [{"tls_cert_file": "/etc/ssl/mine.crt"}, {"tls_ca_file": "/etc/ssl/corp-ca.crt"}])
def test_your_own_files_mean_nothing_is_made(own):
    assert tls.ours(prm(tls=True)) and not tls.ours(prm(tls=True, **own))
