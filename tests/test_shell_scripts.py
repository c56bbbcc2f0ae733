"""Every shell script we write to a host, and commands.sh, passes shellcheck at warning level, for each of the
parameter files' shapes (TLS, synchronous, md5, Debian 13, two standbys): a quoting slip or an unused
variable in a template shows up here, not on a host during a failover."""
import shutil
import subprocess

import pytest

from lib import failover, failover_scripts, health_check_guard, host_functions, recovery, remote_commands
from lib import params as P
from lib.provision.record import StepRecord, Summary, commands_sh
from tests.labtools import REPO

SHAPES = ["params/lab.yaml", "params/lab-debian13.yaml", "tests/data/lab-b.yaml", "tests/data/lab-c.yaml"]


def scripts(params) -> dict[str, str]:
    return {"failover.sh": failover_scripts.failover_script(params), "follow_primary.sh": failover_scripts.follow_script(params),
            "failback.sh": failover_scripts.failback_script(params), "recovery_1st_stage": recovery.first_stage_script(params),
            "pgpool_remote_start": recovery.remote_start_script(params),
            "rejoin-standby": recovery.rejoin_program(params),
            "pgpool-commands": remote_commands.program(failover.sent_commands(params)),
            "host functions": "#!/bin/bash\n" + host_functions.ALL, "health-check-guard": health_check_guard.SCRIPT,
            "commands.sh": commands_sh(Summary("lab", "params/lab.yaml", steps=[StepRecord("01", 1, "x", "changed")]),
                                       params)}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_script_we_write_passes_shellcheck(shape, tmp_path):
    checker = shutil.which("shellcheck")
    assert checker, "shellcheck is not installed: ci/bootstrap installs it (Debian package shellcheck)"
    params = P.load(REPO / shape)
    failures = []
    for name, text in scripts(params).items():
        path = tmp_path / name.replace(" ", "-")
        path.write_text(text)
        done = subprocess.run([checker, "--shell=bash", "--severity=warning", "--format=gcc", str(path)],
                              capture_output=True, text=True)
        if done.returncode:
            failures.append(done.stdout)
    assert not failures, "\n".join(failures)
