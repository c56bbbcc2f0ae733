import copy

import pytest
import yaml

from lib import params as P

LAB = P.read_file(P.DEFAULT_FILE)


def bad(change):
    data = copy.deepcopy(LAB)
    change(data)
    with pytest.raises(P.ParamsError) as e:
        P.validate(data)
    return str(e.value)


def test_every_shipped_file_loads():
    for path in sorted((P.REPO / "params").glob("*.yaml")):
        prm = P.load(path)
        assert prm.primary.role == "primary" and prm.standbys and prm.pgpool_host


def test_lab_defaults_and_templates():
    prm = P.load()
    assert prm.is_lab and prm.environment == "lab"
    assert [h.address for h in prm.all_hosts] == ["10.213.93.132", "10.213.93.133", "10.213.93.134"]
    assert prm.postgres["conf_dir"] == "/etc/postgresql/15/main"
    assert prm.postgres["data_dir"] == "/var/lib/postgresql/15/main"
    assert prm.pgpool["port"] == 9999 and prm.ssh["port"] == 22
    assert prm.ssh["key_file"].startswith(str(P.REPO))


def test_vmware_is_the_guides_environment():
    prm = P.load(P.REPO / "params" / "vmware.yaml")
    assert not prm.is_lab and prm.postgres["version"] == 16
    assert prm.postgres["conf_dir"] == "/etc/postgresql/16/main"
    assert [h.address for h in prm.all_hosts] == ["172.16.93.132", "172.16.93.133", "172.16.93.134"]


def test_injected_values_replace_the_lab_file():
    vm = P.read_file(P.REPO / "params" / "vmware.yaml")
    assert P.load(**vm).environment == "vmware"
    assert P.load(environment=None, hosts=None).environment == "lab"


def test_missing_key():
    assert "missing parameter hosts.primary.address" in bad(lambda d: d["hosts"]["primary"].pop("address"))


def test_missing_section():
    assert "missing parameter section 'postgres'" in bad(lambda d: d.pop("postgres"))


def test_wrong_type():
    assert "postgres.version must be a whole number, not '15'" in bad(lambda d: d["postgres"].update(version="15"))
    assert "ssh.port must be a whole number" in bad(lambda d: d["ssh"].update(port=True))
    assert "hosts.standbys must be a non-empty list" in bad(lambda d: d["hosts"].update(standbys={"name": "x"}))


def test_bad_address():
    msg = bad(lambda d: d["hosts"]["standbys"][0].update(address="10.213.93.300"))
    assert "hosts.standbys[0].address = '10.213.93.300' is not an IPv4 address" in msg


def test_bad_port():
    assert "is not a TCP port" in bad(lambda d: d["postgres"].update(port=70000))


def test_unknown_key_is_named():
    assert "unknown parameter colour; the top level takes environment, lab" in bad(lambda d: d.update(colour="blue"))
    assert "unknown parameter postgres.verison" in bad(lambda d: d["postgres"].update(verison=15))


def test_duplicate_and_standby_equal_to_primary():
    msg = bad(lambda d: d["hosts"]["standbys"][0].update(address=d["hosts"]["primary"]["address"]))
    assert "hosts.standbys[0].address 10.213.93.132 is the primary's address" in msg
    msg = bad(lambda d: d["hosts"]["pgpool"].update(address=d["hosts"]["standbys"][0]["address"]))
    assert "two hosts share the address '10.213.93.133' (vm2 and vm3)" in msg
    assert "share the name 'vm1'" in bad(lambda d: d["hosts"]["pgpool"].update(name="vm1"))


def test_lab_addresses_stay_in_the_lab_subnet():
    assert "outside lab.subnet" in bad(lambda d: d["hosts"]["pgpool"].update(address="192.0.2.1"))
    assert "is also a host's address" in bad(lambda d: d["lab"].update(gateway="10.213.93.132"))


def test_bad_template_in_path():
    assert "only {version} and {cluster}" in bad(lambda d: d["postgres"].update(data_dir="/x/{major}"))


def test_no_file_and_yaml_syntax_error(tmp_path):
    with pytest.raises(P.ParamsError, match="does not exist"):
        P.load(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("hosts:\n  primary: [unclosed\n")
    with pytest.raises(P.ParamsError, match="is not valid YAML"):
        P.load(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(P.ParamsError, match="mapping"):
        P.load(listy)


def test_real_environments_must_name_pgpool_clients():
    vm = P.read_file(P.REPO / "params" / "vmware.yaml")
    vm["pgpool"].pop("allowed_clients")
    with pytest.raises(P.ParamsError, match="missing parameter pgpool.allowed_clients"):
        P.validate(vm)
    assert P.load().pgpool["allowed_clients"] == "10.213.93.0/24"


def test_real_environments_must_name_the_machine_that_may_be_the_superuser_through_pgpool():
    vm = P.read_file(P.REPO / "params" / "vmware.yaml")
    vm["pgpool"].pop("admin_clients")
    with pytest.raises(P.ParamsError, match="missing parameter pgpool.admin_clients"):
        P.validate(vm)
    assert P.load().pgpool["admin_clients"] == "10.213.93.1/32"          # the lab's gateway: this machine


def test_auth_method_is_scram_or_md5():
    assert P.load().postgres["auth_method"] == "scram-sha-256"
    assert "choose scram-sha-256" in bad(lambda d: d["postgres"].update(auth_method="trust"))


def test_a_secret_in_a_parameter_file_is_refused_with_the_reason():
    msg = bad(lambda d: d["postgres"].update(password="hunter2"))
    assert "postgres.password: secrets never go in parameter files" in msg
    assert "hunter2" not in msg


def test_every_string_parameter_refuses_shell_characters_newlines_and_spaces():
    from paramcases import cases, set_key, string_parameters
    keys = [k for k, _ in string_parameters(LAB)]
    assert {"environment", "lab.name", "hosts.standbys.0.name", "postgres.data_dir", "pgpool.conf_dir",
            "ssh.key_file", "postgres.log_file", "pgpool.service"} <= set(keys), keys
    accepted = []
    for key, value, what in cases(LAB):
        data = copy.deepcopy(LAB)
        set_key(key, value)(data)
        try:
            P.validate(data)
            accepted.append(f"{what} ({value!r})")
        except P.ParamsError:
            pass
    assert not accepted, "accepted: " + "; ".join(accepted)


def test_host_paths_are_absolute_without_dot_dot():
    assert "give an absolute path" in bad(lambda d: d["postgres"].update(data_dir="var/lib/pg"))
    assert "give an absolute path" in bad(lambda d: d["postgres"].update(data_dir="/var/lib/../../etc"))
    assert "only {version} and {cluster}" in bad(lambda d: d["postgres"].update(data_dir="/var/{{x}}"))
    # a template is filled in literally, never evaluated
    for evaluated in ("/srv/{version.__class__}", "/srv/{cluster.__len__}"):
        assert "only {version} and {cluster}" in bad(lambda d: d["postgres"].update(data_dir=evaluated)), evaluated
    ok = copy.deepcopy(LAB)
    ok["postgres"]["data_dir"] = "/srv/pg-{version}/{cluster}.d/"
    assert P.validate(ok).postgres["data_dir"] == "/srv/pg-15/main.d/"


def test_pgpool_may_not_admit_the_whole_internet():
    for anyone in ("0.0.0.0/0", "64.0.0.0/2"):
        assert "anyone who can reach pgpool" in bad(lambda d: d.setdefault("pgpool", {}).update(allowed_clients=anyone))
    ok = copy.deepcopy(LAB)
    ok.setdefault("pgpool", {})["allowed_clients"] = "10.0.0.0/8"
    assert P.validate(ok).pgpool["allowed_clients"] == "10.0.0.0/8"


def test_the_lab_release_is_12_or_13():
    assert P.load().lab["debian"] == 12
    deb13 = P.load(P.REPO / "params" / "lab-debian13.yaml")
    assert deb13.lab["debian"] == 13 and deb13.postgres["version"] == 17 and len(deb13.standbys) == 2
    assert "the lab builds Debian 12 or 13" in bad(lambda d: d["lab"].update(debian=11))
    assert "the lab builds Debian 12 or 13" in bad(lambda d: d["lab"].update(debian="trixie"))
