"""The checks of a diagnosis: each reads the hosts (lib.diagnose.readonly only) and returns
findings that say what is wrong, show the evidence quoted from the host, name the cause, the fix as
commands, and the guide step (and troubleshooting row) that sets it right. Each fix is what the steps
write: their own functions give the lines, the settings and the units.

The checks run in the order of CHECKS, by subject: the servers, who may connect where, pgpool.
"""
from lib.diagnose.checks import access, pgpool, servers
from lib.diagnose.checks.model import FAIL, GUIDE_ROWS, OK, WARN, Cluster, Finding, allows

#: the order of the diagnosis: a cause before the findings that follow from it
CHECKS = [servers.servers_running, servers.one_primary, servers.standbys_in_recovery, servers.standby_points_at_primary,
          servers.standbys_stream, access.replication_allowed, access.pgpool_allowed, access.listen_addresses,
          access.ports_reachable, pgpool.pool_passwd_configured, pgpool.pgpool_nodes, pgpool.pgpool_settings,
          pgpool.capacity, pgpool.clients_get_in, pgpool.reads_spread, access.no_trust, access.pool_hba,
          servers.wal_kept_for_lag]
#: every module that holds checks, for the tests that read their source
MODULES = (servers, access, pgpool)

__all__ = ["CHECKS", "MODULES", "FAIL", "GUIDE_ROWS", "OK", "WARN", "Cluster", "Finding", "allows"]
