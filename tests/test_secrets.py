import pytest

from lib import params as P
from lib import secrets as S


def test_lab_falls_back_to_demo_values(monkeypatch):
    monkeypatch.delenv("PGGUIDE_REPLICATION_PASSWORD", raising=False)
    assert S.secret("replication", P.load()) == "replica123"


def test_real_environment_needs_the_variable(monkeypatch):
    monkeypatch.delenv("PGGUIDE_REPLICATION_PASSWORD", raising=False)
    vm = P.load(P.REPO / "params" / "vmware.yaml")
    with pytest.raises(S.MissingSecret, match="PGGUIDE_REPLICATION_PASSWORD"):
        S.secret("replication", vm)
    monkeypatch.setenv("PGGUIDE_REPLICATION_PASSWORD", "s3cret-from-env")
    assert S.secret("replication", vm) == "s3cret-from-env"


def test_sudo_has_no_demo_value(monkeypatch):
    monkeypatch.delenv("PGGUIDE_SUDO_PASSWORD", raising=False)
    assert S.secret("sudo", P.load(), required=False) is None


def test_mask_hides_every_known_value(monkeypatch):
    monkeypatch.setenv("PGGUIDE_PGPOOL_PASSWORD", "pool-pass")
    values = S.known_values(P.load())
    assert "pool-pass" in values and "replica123" in values
    assert S.mask("password=pool-pass user=replicator password=replica123", values) == \
        "password=******** user=replicator password=********"


def write(tmp_path, text, mode=0o600):
    path = tmp_path / "env.secrets"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secrets_file_is_read_after_the_environment(monkeypatch, tmp_path):
    for v in ("PGGUIDE_REPLICATION_PASSWORD", "PGGUIDE_POSTGRES_PASSWORD"):
        monkeypatch.delenv(v, raising=False)
    path = write(tmp_path, "# comment\n\nPGGUIDE_REPLICATION_PASSWORD=from-file\nPGGUIDE_POSTGRES_PASSWORD = x=y\n")
    monkeypatch.setenv(S.FILE_VARIABLE, str(path))
    vm = P.load(P.REPO / "params" / "vmware.yaml")
    assert S.secret("replication", vm) == "from-file" and S.secret("postgres", vm) == "x=y"
    assert S.source("replication", vm) == "secrets file"
    monkeypatch.setenv("PGGUIDE_REPLICATION_PASSWORD", "from-env")
    assert S.secret("replication", vm) == "from-env"


def test_a_secrets_file_turns_off_the_lab_demo_values(monkeypatch, tmp_path):
    monkeypatch.delenv("PGGUIDE_PGPOOL_KEY", raising=False)
    monkeypatch.setenv(S.FILE_VARIABLE, str(write(tmp_path, "PGGUIDE_REPLICATION_PASSWORD=a\n")))
    with pytest.raises(S.MissingSecret, match="missing secrets .*PGGUIDE_PGPOOL_KEY: set them in the environment "
                                              "or in the secrets file"):
        S.require_all(P.load())


def test_bad_secrets_files_are_refused_without_echoing_them(tmp_path):
    with pytest.raises(S.BadSecretsFile, match="does not exist"):
        S.read_secrets_file(tmp_path / "none")
    with pytest.raises(S.BadSecretsFile, match=r"can be read by others \(mode 644\): chmod 600"):
        S.read_secrets_file(write(tmp_path, "PGGUIDE_PGPOOL_KEY=k\n", 0o644))
    with pytest.raises(S.BadSecretsFile, match="line 1: expected VARIABLE=value") as e:
        S.read_secrets_file(write(tmp_path, "PASSWORD=hunter2\n"))
    assert "hunter2" not in str(e.value)
    inside = P.REPO / "runs" / "test-inside.secrets"
    inside.parent.mkdir(exist_ok=True)
    inside.write_text("PGGUIDE_PGPOOL_KEY=k\n")
    inside.chmod(0o600)
    try:
        with pytest.raises(S.BadSecretsFile, match="inside the repository"):
            S.read_secrets_file(inside)
    finally:
        inside.unlink()


def test_mask_hides_the_escaped_forms_too(monkeypatch):
    monkeypatch.setenv("PGGUIDE_POSTGRES_PASSWORD", "it's-a\\secret")
    values = S.known_values(P.load())
    shown = S.mask("sql: PASSWORD 'it''s-a\\secret'; conninfo: password='it\\'s-a\\\\secret'", values)
    assert "secret" not in shown.replace("********", ""), shown


def vmware_with(monkeypatch, **values):
    for name, value in {"PGGUIDE_REPLICATION_PASSWORD": "Repl-secret-1", "PGGUIDE_POSTGRES_PASSWORD": "Pg-secret-2",
                        "PGGUIDE_PGPOOL_PASSWORD": "Pool-secret-3", "PGGUIDE_APP_PASSWORD": "App-secret-5",
                        "PGGUIDE_PGPOOL_KEY": "Key-secret-4",
                        **values}.items():
        monkeypatch.setenv(name, value)
    return P.load(P.REPO / "params" / "vmware.yaml")


def test_strong_secrets_pass(monkeypatch):
    S.require_all(vmware_with(monkeypatch))


@pytest.mark.parametrize("variable, value, problem", [
    ("PGGUIDE_PGPOOL_KEY", "six-ch", "PGGUIDE_PGPOOL_KEY is shorter than 8 characters"),
    ("PGGUIDE_POSTGRES_PASSWORD", "postgres", "PGGUIDE_POSTGRES_PASSWORD is a name the records print"),
    ("PGGUIDE_PGPOOL_PASSWORD", "Replicator", "PGGUIDE_PGPOOL_PASSWORD is a name the records print"),
    ("PGGUIDE_REPLICATION_PASSWORD", "172.16.93.133", "PGGUIDE_REPLICATION_PASSWORD is a name the records print"),
])
def test_weak_secrets_are_refused(monkeypatch, variable, value, problem):
    with pytest.raises(S.WeakSecret, match=problem):
        S.require_all(vmware_with(monkeypatch, **{variable: value}))


def test_the_lab_keeps_its_demo_values_but_not_weak_ones_of_yours(monkeypatch):
    for variable, _, _ in S.SECRETS.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv(S.FILE_VARIABLE, raising=False)
    S.require_all(P.load())
    monkeypatch.setenv("PGGUIDE_POSTGRES_PASSWORD", "postgres")
    with pytest.raises(S.WeakSecret):
        S.require_all(P.load())
