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


def test_masked_columns_keep_psqls_alignment():
    from lib.part2 import UNSTABLE_POOL_NODES_COLUMNS
    from lib.show import masked_columns
    shown = (" node_id | load_balance_node | last_status_change  \n"
             "---------+-------------------+---------------------\n"
             " 0       | true              | 2026-12-07 04:30:15\n"
             " 1       | false             | 2026-12-07 04:30:16\n"
             "(2 rows)")
    assert masked_columns(shown, UNSTABLE_POOL_NODES_COLUMNS).splitlines()[2:] == [
        " 0       | (drawn)           | YYYY-MM-DD hh:mm:ss",
        " 1       | (drawn)           | YYYY-MM-DD hh:mm:ss",
        "(2 rows)"]
