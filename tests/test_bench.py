"""ci/bench's arithmetic and its report: book/performance.md's figures are rendered from
bench/results.json and nothing else."""
import json

import pytest

from lib.bench import percentiles, report, spread


def test_spread_gives_median_and_range():
    assert spread([3, 1, 2]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3, "values": [3.0, 1.0, 2.0]}


def test_percentiles_pick_the_ranked_values():
    values = list(range(1, 101))
    assert percentiles(values) == {"p50": 51, "p95": 95, "p99": 99}


def test_the_page_section_is_the_rendering_of_results_json():
    if not report.RESULTS.exists():
        pytest.fail("bench/results.json is missing: run ci/bench (book/performance.md comes from it)")
    results = json.loads(report.RESULTS.read_text())
    text = report.PAGE.read_text()
    assert report.page_section(results) in text, "book/performance.md is stale: run `python -m lib.bench.report`"


def test_a_changed_figure_makes_the_section_stale():
    results = json.loads(report.RESULTS.read_text())
    results["provisioning"]["wall"]["lab up"]["median"] += 1.0
    assert report.page_section(results) not in report.PAGE.read_text()


def test_repeatability_counts_figures_within_the_earlier_range_and_names_the_largest_change():
    from lib.bench import compare
    earlier = {"date": "2026-11-28T00:00:00", "provisioning": {"wall": {"fresh": spread([30, 34]), "again": spread([15, 16])}},
               "pgpool": {"runs": [{"target": "direct", "workload": "select-only", "connections": "persistent",
                                    "clients": 1, "tps": spread([1000, 1100])}]}}
    now = {"provisioning": {"wall": {"fresh": spread([33, 33]), "again": spread([20, 22])}},
           "pgpool": {"runs": [{"target": "direct", "workload": "select-only", "connections": "persistent",
                                "clients": 1, "tps": spread([1040, 1060])}]}}
    rep = compare.compare(earlier, now)
    assert (rep["figures"], rep["within"], rep["within band"]) == (3, 2, 2)
    assert rep["largest"][0]["figure"] == "provisioning / wall / again" and rep["largest"][0]["change"] == pytest.approx(21 / 15.5 - 1)
    assert "2 of 3 figures fall within" in compare.sentence(rep)
    assert compare.compare(earlier, {"image": {"cached": spread([1, 1])}}) is None
