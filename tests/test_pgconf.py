from lib import pgconf
from lib.pgconf import add_hba_records, set_hba_method, set_settings

CONF = """# a comment kept as it is
#listen_addresses = 'localhost'\t\t# what IP address(es) to listen on;
port = 5432\t\t\t\t# (change requires restart)
#wal_level = replica\t\t\t# minimal, replica, or logical
include_dir = 'conf.d'
"""


def test_uncomments_and_sets_then_second_run_changes_nothing():
    new, changes = set_settings(CONF, {"listen_addresses": "*", "wal_level": "replica", "port": 5432})
    assert changes == [
        "-#listen_addresses = 'localhost'\t\t# what IP address(es) to listen on;",
        "+listen_addresses = '*'  # what IP address(es) to listen on;",
        "-#wal_level = replica\t\t\t# minimal, replica, or logical",
        "+wal_level = 'replica'  # minimal, replica, or logical",
    ]
    assert "# a comment kept as it is\n" in new and "include_dir = 'conf.d'\n" in new
    again, none = set_settings(new, {"listen_addresses": "*", "wal_level": "replica", "port": 5432})
    assert none == [] and again == new


def test_unknown_setting_is_added():
    new, changes = set_settings(CONF, {"wal_keep_size": 64})
    assert changes == ["+wal_keep_size = 64"] and new.endswith("wal_keep_size = 64\n")


HBA = """# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             postgres                                peer
host    all             all             127.0.0.1/32            scram-sha-256
"""


def test_hba_record_added_once():
    line = "host replication replicator 10.0.0.2/32 scram-sha-256"
    new, changes = add_hba_records(HBA, [line])
    assert len(changes) == 1 and changes[0].split() == ["+host", "replication", "replicator", "10.0.0.2/32",
                                                        "scram-sha-256"]
    assert new.startswith(HBA)
    again, none = add_hba_records(new, [line, "host  replication  replicator  10.0.0.2/32  scram-sha-256"])
    assert none == [] and again == new


def test_hba_method_switch_changes_only_that_field():
    text = HBA + "host replication all 127.0.0.1/32 scram-sha-256  # keep\nlocal all all scram-sha-256\n"
    new, changes = set_hba_method(text, "scram-sha-256", "md5")
    assert "host    all             all             127.0.0.1/32            md5\n" in new
    assert "host replication all 127.0.0.1/32 md5  # keep\n" in new
    assert "local all all scram-sha-256\n" in new          # the guide changes host lines only
    assert len(changes) == 4
    again, none = set_hba_method(new, "scram-sha-256", "md5")
    assert none == [] and again == new


def test_a_hostssl_record_turns_its_host_twin_rather_than_following_it():
    from lib.pgconf import add_hba_records
    text = ("# comment\nlocal all postgres peer\n"
            "host    all    pgpool    10.0.0.3/32    scram-sha-256\n")
    new, changed = add_hba_records(text, ["hostssl all pgpool 10.0.0.3/32 scram-sha-256",
                                          "hostssl all all 10.0.0.3/32 scram-sha-256"])
    assert new.splitlines()[2] == "hostssl    all    pgpool    10.0.0.3/32    scram-sha-256"
    assert "\nhost    all    pgpool" not in new
    assert new.splitlines()[-1].split() == ["hostssl", "all", "all", "10.0.0.3/32", "scram-sha-256"]
    assert changed[0].startswith("-host") and len(changed) == 3
    assert add_hba_records(new, ["hostssl all pgpool 10.0.0.3/32 scram-sha-256"]) == (new, [])


DEBIAN_POOL_HBA = """# pgpool's shipped lines
local   all         all                               trust
# IPv4 local connections:
host    all         all         127.0.0.1/32          trust   # loopback
host    all         all         ::1/128               trust
host    all         all         10.0.0.0/24           scram-sha-256
"""


def test_no_trust_line_is_left_and_nothing_else_changes():
    assert len(pgconf.trust_lines(DEBIAN_POOL_HBA)) == 3
    new, changed = pgconf.without_trust(DEBIAN_POOL_HBA, "scram-sha-256")
    assert pgconf.trust_lines(new) == [] and len(changed) == 6
    assert "local   all         all                               scram-sha-256\n" in new
    assert "127.0.0.1/32          scram-sha-256  # loopback\n" in new
    assert new.count("\n") == DEBIAN_POOL_HBA.count("\n") and "# IPv4 local connections:\n" in new
    assert pgconf.without_trust(new, "scram-sha-256") == (new, [])
    assert pgconf.trust_lines("# host all all 0.0.0.0/0 trust\nlocal all postgres peer\n") == []


def test_a_reject_line_goes_in_front_of_the_lines_for_its_address():
    hba = HBA + "host    all             pgpool          10.0.0.9/32             scram-sha-256\n" \
                "host    all             all             10.0.0.9/32             scram-sha-256\n"
    reject = "host all replicator 10.0.0.9/32 reject"
    new, changed = add_hba_records(hba, [reject])
    records = [l.split() for l in new.splitlines() if "10.0.0.9/32" in l]
    assert [r[2] for r in records] == ["replicator", "pgpool", "all"] and records[0][-1] == "reject"
    assert len(changed) == 1 and changed[0].startswith("+host")
    assert add_hba_records(new, [reject]) == (new, [])                      # a second run changes nothing
    misplaced = hba + str(pgconf.pghba.HBARecord.parse(reject)) + "\n"         # appended after `all all`: never reached
    moved, _ = add_hba_records(misplaced, [reject])
    assert moved == new
    fresh, _ = add_hba_records(HBA, [reject, "host all all 10.0.0.9/32 scram-sha-256"])
    assert [l.split()[2] for l in fresh.splitlines() if "10.0.0.9/32" in l] == ["replicator", "all"]


BLOCK = ["host all postgres 10.0.0.5/32 scram-sha-256", "host all postgres 10.0.0.0/24 reject",
         "host all all 10.0.0.0/24 scram-sha-256"]


def test_an_hba_block_stands_in_its_order_where_its_first_line_stood():
    """pool_hba.conf provisioned before the superuser was limited: its clients line ends up after the lines that
    let the superuser in from the admin address and turn it away from the rest of the network."""
    text = "local all all scram-sha-256\nhost all all 10.0.0.0/24 scram-sha-256\n# the end\n"
    new, changed = pgconf.hba_block(text, BLOCK)
    assert [l.split() for l in new.splitlines()] == [["local", "all", "all", "scram-sha-256"],
                                                     *[b.split() for b in BLOCK], ["#", "the", "end"]]
    assert changed and pgconf.hba_block(new, BLOCK) == (new, [])       # a second run changes nothing
    appended, _ = pgconf.hba_block("local all all scram-sha-256", BLOCK)
    assert [l.split() for l in appended.splitlines()][1:] == [b.split() for b in BLOCK]


def test_an_hba_block_with_tls_turns_its_host_twins_into_hostssl():
    tls = [b.replace("host ", "hostssl ", 1) if "reject" not in b else b for b in BLOCK]
    new, _ = pgconf.hba_block("\n".join(BLOCK) + "\n", tls)
    assert [l.split()[0] for l in new.splitlines()] == ["hostssl", "host", "hostssl"]


def test_pool_hba_lets_the_superuser_in_from_the_pgpool_host_and_the_admin_machine_only():
    from lib import params as P, part2
    prm = P.load()
    assert part2.pool_hba_lines(prm) == [
        "host all postgres 10.213.93.134/32 scram-sha-256", "host all postgres 10.213.93.1/32 scram-sha-256",
        "host all postgres 10.213.93.0/24 reject", "host all all 10.213.93.0/24 scram-sha-256"]
    assert part2.pgpool_sources(prm) == ["10.213.93.0/24"]          # the gateway is in the clients' network
    data = P.read_file(P.DEFAULT_FILE)
    data["pgpool"] = {"admin_clients": "192.0.2.10/32"}
    assert part2.pgpool_sources(P.validate(data)) == ["10.213.93.0/24", "192.0.2.10/32"]
