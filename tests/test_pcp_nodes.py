"""pgpool's nodes as pcp_node_info -v describes them (lib.pgpool_host.known_nodes): what Step 34's planner
and the diagnosis read, under SHOW pool_nodes' column names; None when pcp does not answer."""
from lib import params as P
from lib import pgpool_host
from lib.facts import Output
from lib.remote import Hosts

PARAMS = P.load()

PRIMARY = """Hostname               : 10.213.93.132
Port                   : 5432
Status                 : 2
Weight                 : 0.000000
Status Name            : up
Backend Status Name    : up
Role                   : primary
Backend Role           : primary
Replication Delay      : 0
Replication State      :
Replication Sync State :
Last Status Change     : 2026-12-07 13:20:05
"""
STANDBY = PRIMARY.replace("10.213.93.132", "10.213.93.133").replace("Status Name            : up",
                                                                     "Status Name            : down") \
    .replace("Role                   : primary", "Role                   : standby") \
    .replace("Backend Role           : primary", "Backend Role           : standby") \
    .replace("Replication State      :", "Replication State      : streaming")


def hosts_whose_pcp_says(out: Output) -> Hosts:
    env = Hosts(PARAMS)
    env.pgpool.facts.given({pgpool_host.nodes_fact(env): out})
    return env


def test_every_node_under_pool_nodes_names():
    nodes = pgpool_host.known_nodes(hosts_whose_pcp_says(Output(True, f"{PRIMARY}@@\n{STANDBY}@@\n")))
    assert nodes[0] == {"node_id": "0", "hostname": "10.213.93.132", "status": "up", "pg_status": "up",
                        "role": "primary", "pg_role": "primary", "replication_state": "", "weight": "0.000000"}
    assert (nodes[1]["status"], nodes[1]["role"], nodes[1]["replication_state"]) == ("down", "standby", "streaming")


def test_no_nodes_when_pcp_does_not_answer_for_each():
    refused = "ERROR: connection to host \"localhost\" failed with error \"Connection refused\"\n@@\n"
    assert pgpool_host.known_nodes(hosts_whose_pcp_says(Output(False, refused * 2))) is None
    assert pgpool_host.known_nodes(hosts_whose_pcp_says(Output(True, f"{PRIMARY}@@\n"))) is None
