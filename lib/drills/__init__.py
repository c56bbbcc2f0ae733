"""Notebook 04: failure drills on a running cluster, measured from a client's side.

While a server is stopped on purpose, a writer commits numbered rows through pgpool and a reader
reads through pgpool, each in its own thread, each opening a new session after an error. What they
saw is the measurement: how long writes and reads failed, how many statements failed, and which
acknowledged rows the cluster no longer has.
"""
from lib.drills.clients import STATEMENT_TIMEOUT_S, Client, Losses, Traffic, classify, clean_up, losses, prepare
from lib.drills.measure import (PGPOOL_BOUND_S, PRIMARY_BOUND_S, SILENT_PRIMARY_BOUND_S, Outcome, back_to_preferred,
                                commit_mode, judge_lost, roles_line, what_provisioning_says)
from lib.drills.primary import KILL_ALL, primary_stops, stall_sender, started_again
from lib.drills.standby import pgpool_restarts, standby_goes_silent, standby_stops

__all__ = ["KILL_ALL", "PGPOOL_BOUND_S", "PRIMARY_BOUND_S", "SILENT_PRIMARY_BOUND_S", "STATEMENT_TIMEOUT_S", "Client",
           "Losses", "Outcome", "Traffic", "back_to_preferred", "classify", "clean_up", "commit_mode", "judge_lost",
           "losses", "pgpool_restarts", "prepare", "primary_stops", "roles_line", "stall_sender", "standby_goes_silent",
           "standby_stops", "started_again", "what_provisioning_says"]
