"""Load-balancing accuracy: the shares pgpool really gives over many sessions, at three weight
settings, against the weights and against Step 38's accepted intervals."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import yaml

from lib import loadbalance, pgpool_client
from lib import params as P
from lib.bench.provisioning import PROVISION, timed
from lib.postgres import TEST_DB
from lib.remote import Hosts

SETTINGS = [(1, 1), (1, 2), (1, 3)]


def measure(params_file: Path, sessions: int, say) -> dict:
    data = P.read_file(params_file)
    out = {"sessions": sessions, "settings": []}
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:
        for weights in SETTINGS:
            variant = copy.deepcopy(data)
            variant["hosts"]["primary"]["weight"], variant["hosts"]["standbys"][0]["weight"] = weights
            path = Path(tmp) / f"{params_file.stem}-w{weights[0]}{weights[1]}.yaml"
            path.write_text(yaml.safe_dump(variant))
            timed(PROVISION, path)                                   # Step 30 writes the weights, Step 33 restarts
            env = Hosts(P.load(path))
            try:
                hosts = env.params.database_hosts
                counts = loadbalance.sample(pgpool_client.via_pgpool(env, TEST_DB), sessions, concurrent=loadbalance.CONCURRENT)
                plan = loadbalance.plan(list(weights))
            finally:
                env.close()
            row = {"weights": loadbalance.ratio(list(weights)),
                   "expected primary share": loadbalance.shares(list(weights))[0],
                   "observed primary share": counts.get(hosts[0].address, 0) / sessions,
                   "counts": {h.name: counts.get(h.address, 0) for h in hosts},
                   "step 38 sessions": plan.sessions}
            out["settings"].append(row)
            say(f"  weights {row['weights']}: primary served {row['observed primary share']:.3f} "
                f"(expected {row['expected primary share']:.3f})")
    timed(PROVISION, params_file)                                     # back to the file's own weights
    out["commands"] = [f"ci/provision <{params_file.name} with weights a:b>",
                       f"SELECT inet_server_addr()   # × {sessions} sessions through pgpool to {TEST_DB}, {loadbalance.CONCURRENT} at a time"]
    return out
