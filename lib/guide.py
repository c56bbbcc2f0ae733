"""The guide's steps in order, as the notebooks take them: each step's notebook, its number and title (its
heading there), and the functions that plan it (marked @guide_step). `ci/provision --check` plans these and
nothing else; tests/test_guide_registry.py holds every notebook to this list, cell by cell, so that a step
cannot drop out of the check by being written another way.

Provisioning itself runs the notebooks (their cells call the same functions); this list is what the check
and the tests read without running them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lib import failover, part1, part2, recovery


@dataclass(frozen=True)
class GuideStep:
    notebook: str                        # the notebook's file name without .ipynb
    number: int
    title: str                           # as its `### Step N — title` heading says
    planners: tuple[Callable, ...]       # each env -> ops.Step, in the order its cells call them

    @property
    def label(self) -> str:
        return f"Step {self.number:>2}"


STEPS = [
    GuideStep("01-streaming-replication", 1, "Create Replication User", (part1.create_replication_role,)),
    GuideStep("01-streaming-replication", 2, "Configure postgresql.conf", (part1.configure_primary,)),
    GuideStep("01-streaming-replication", 3, "Configure pg_hba.conf", (part1.allow_replication,)),
    GuideStep("01-streaming-replication", 4, "Open Firewall Port", (part1.open_firewall,)),
    GuideStep("01-streaming-replication", 5, "Restart Master PostgreSQL", (part1.restart_primary,)),
    GuideStep("01-streaming-replication", 6, "Verify Master Configuration", (part1.verify_primary,)),
    GuideStep("01-streaming-replication", 7, "Stop PostgreSQL on Slave", (part1.stop_standbys,)),
    GuideStep("01-streaming-replication", 8, "Clear Slave Data Directory", (part1.clear_standbys,)),
    GuideStep("01-streaming-replication", 9, "Take Base Backup from Master", (part1.base_backup,)),
    GuideStep("01-streaming-replication", 10, "Verify Backup Files", (part1.verify_backup,)),
    GuideStep("01-streaming-replication", 11, "Start PostgreSQL on Slave", (part1.start_standbys,)),
    GuideStep("01-streaming-replication", 12, "Check Slave Connection on Master", (part1.check_streaming,)),
    GuideStep("01-streaming-replication", 13, "Check Slave is in Standby Mode", (part1.check_standby_mode,)),
    GuideStep("01-streaming-replication", 14, "Write Data on Master", (part1.write_test_data,)),
    GuideStep("01-streaming-replication", 15, "Read Data from Slave", (part1.read_on_standbys,)),
    GuideStep("01-streaming-replication", 16, "Prove Slave is Read-Only", (part1.prove_read_only,)),
    GuideStep("01-streaming-replication", 17, "Real-Time Sync Test", (part1.sync_test,)),
    GuideStep("02-pgpool", 19, "Install PostgreSQL Client Tools on VM3", (part2.install_client,)),
    GuideStep("02-pgpool", 20, "Install PgPool-II on VM3", (part2.install_pgpool,)),
    GuideStep("02-pgpool", 21, "Set Password for postgres User", (part2.set_postgres_password,)),
    GuideStep("02-pgpool", 22, "Create Dedicated PgPool User", (part2.create_pgpool_role,)),
    GuideStep("02-pgpool", 23, "Update pg_hba.conf on Master to Allow VM3", (part2.allow_pgpool_on_primary,)),
    GuideStep("02-pgpool", 24, "Change Password Encryption to md5 on Master", (part2.md5_on_primary,)),
    GuideStep("02-pgpool", 25, "Update pg_hba.conf Auth Method to md5", (part2.md5_hba_on_primary,)),
    GuideStep("02-pgpool", 26, "Update pg_hba.conf on Slave to Allow VM3", (part2.allow_pgpool_on_standbys,)),
    GuideStep("02-pgpool", 27, "Change Password Encryption to md5 on Slave", (part2.md5_on_standbys,)),
    GuideStep("02-pgpool", 28, "Ensure listen_addresses is Correct on Slave", (part2.listen_on_standbys,)),
    GuideStep("02-pgpool", 29, "Test Connectivity from VM3", (part2.test_connectivity,)),
    GuideStep("02-pgpool", 30, "Configure pgpool.conf", (part2.configure_pgpool,)),
    GuideStep("02-pgpool", 31, "Configure pool_hba.conf", (part2.configure_pool_hba,)),
    GuideStep("02-pgpool", 32, "Create PgPool Password File", (part2.password_file,)),
    GuideStep("02-pgpool", 33, "Start and Enable PgPool", (part2.start_pgpool,)),
    GuideStep("02-pgpool", 34, "Check PgPool Node Status", (part2.check_pool_nodes,)),
    GuideStep("02-pgpool", 35, "Write Data Through PgPool", (part2.write_through_pgpool,)),
    GuideStep("02-pgpool", 36, "Read Data from Slave Directly", (part2.read_on_standbys,)),
    GuideStep("02-pgpool", 37, "Verify Slave is Read-Only", (part2.prove_read_only,)),
    GuideStep("02-pgpool", 38, "Verify Load Balancing", (part2.verify_load_balancing,)),
    GuideStep("02-pgpool", 39, "Real-Time Sync Test Through PgPool", (part2.sync_through_pgpool,)),
    GuideStep("03-failover", 40, "Let Every Server Become the Primary", (failover.every_server_can_lead,)),
    GuideStep("03-failover", 41, "Trust Between the postgres Users", (failover.postgres_key, failover.ssh_trust)),
    GuideStep("03-failover", 42, "Failover, Follow-Primary and Failback Commands", (failover.failover_commands,)),
    GuideStep("03-failover", 43, "Restart PgPool and Check", (part2.start_pgpool, failover.failover_ready)),
    GuideStep("03-failover", 44, "Choose When a Commit Is Acknowledged", (failover.commit_acknowledgement,)),
    GuideStep("03-failover", 45, "Online Recovery Through PgPool", (recovery.server_keys, recovery.online_recovery)),
]
