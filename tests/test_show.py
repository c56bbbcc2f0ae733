import pytest

from lib.show import CheckFailed, expect, fields, table


def test_table_looks_like_psql():
    assert table(["id", "name"], [(1, "Alice"), (2, None)]) == (
        " id | name\n"
        "----+-------\n"
        " 1  | Alice\n"
        " 2  |\n"
        "(2 rows)")


def test_expect_names_problem_and_fix():
    expect(True, "never", "never")
    with pytest.raises(CheckFailed) as e:
        expect(False, "pg_stat_replication is empty.", "check the standby's log")
    assert str(e.value) == "pg_stat_replication is empty.\nLikely fix: check the standby's log"


def test_fields_align():
    assert fields([("a", 1), ("long", 2)]) == "  a     1\n  long  2"


def test_masked_columns_are_aligned_whatever_the_values_were():
    from lib.part2.through_pgpool import UNSTABLE_POOL_NODES_COLUMNS
    from lib.show import masked_columns

    def shown(pid, time):
        return (f" pid{' ' * (len(pid) - 3)} | load_balance_node | last_status_change\n"
                f"-{'-' * max(3, len(pid))}-+-------------------+--------------------\n"
                f" {pid} | true              | {time}\n(1 row)")
    masks = {"pid": "…", **UNSTABLE_POOL_NODES_COLUMNS}
    one, other = masked_columns(shown("987", "2026-12-07 04:30:15"), masks), masked_columns(shown("12345", "x"), masks)
    assert one == other == (" pid | load_balance_node | last_status_change\n"
                            "-----+-------------------+---------------------\n"
                            " …   | (drawn)           | YYYY-MM-DD hh:mm:ss\n(1 row)")
