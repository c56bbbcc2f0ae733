"""Part 2 of the guide, Steps 19-39: PgPool-II on its own host, in front of the primary and the
standbys. Each step is a function that reads facts and returns the step's plan (lib.ops.Step),
grouped as the guide's sections are:

- backends: Steps 19-29, the pgpool host's tools and pgpool, the servers made ready for it;
- pgpool_setup: Steps 30-33, pgpool configured and started;
- through_pgpool: Steps 34-39 and the Quick Reference, the cluster used through pgpool.

Scram end to end by default: roles keep SCRAM passwords, pool_passwd holds AES-encrypted
passwords (pg_enc) under a key in ~postgres/.pgpoolkey, and nothing is downgraded to md5.
postgres.auth_method: md5 does what the guide does instead.

What other modules use of pgpool itself is lib.pgpool_host (roles, files, settings, service) and
lib.pgpool_client (sessions through pgpool).
"""
from lib import postgres
from lib.part2.backends import (allow_pgpool_on_primary, allow_pgpool_on_standbys, create_pgpool_role,
                                install_client, install_pgpool, listen_on_standbys, md5_hba_on_primary,
                                md5_on_primary, md5_on_standbys, pgpool_hba_records, set_postgres_password,
                                test_connectivity)
from lib.part2.pgpool_setup import (configure_pgpool, configure_pool_hba, guide_groups, password_file,
                                    pgpool_sources, pool_hba_lines, settings_as_the_guide_groups, start_pgpool)
from lib.part2.through_pgpool import (check_pool_nodes, nodes_as_wanted, prove_read_only, quick_reference,
                                      read_on_standbys, sync_through_pgpool, verify_load_balancing,
                                      write_through_pgpool)

#: the notebook's closing appendix: the guide's md5 way, as this notebook's steps planned it
md5_appendix = postgres.md5_appendix

__all__ = ["allow_pgpool_on_primary", "allow_pgpool_on_standbys", "check_pool_nodes", "configure_pgpool",
           "configure_pool_hba", "create_pgpool_role", "guide_groups", "install_client", "install_pgpool",
           "listen_on_standbys", "md5_appendix", "md5_hba_on_primary", "md5_on_primary", "md5_on_standbys",
           "nodes_as_wanted", "password_file", "pgpool_hba_records", "pgpool_sources", "pool_hba_lines",
           "prove_read_only", "quick_reference", "read_on_standbys", "set_postgres_password",
           "settings_as_the_guide_groups", "start_pgpool", "sync_through_pgpool", "test_connectivity",
           "verify_load_balancing", "write_through_pgpool"]
