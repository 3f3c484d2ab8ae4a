"""benchmarks/common.py: the official code's figures beside ours, as both peer benchmarks report them."""

import pytest

from benchmarks import common


def test_peer_fields_take_the_best_round_and_form_both_ratios():
    ours = {"tokens_per_s": 120.0, "tokens_per_s_median": 110.0}
    rounds = [{"tokens_per_s_best": 50.0, "tokens_per_s": 45.0, "maxrss_GiB": 2.0, "threads": 2},
              {"tokens_per_s_best": 60.0, "tokens_per_s": 40.0, "maxrss_GiB": 3.0, "threads": 2}]
    f = common.peer_fields(ours, rounds)
    assert (f["peer_tokens_per_s"], f["peer_tokens_per_s_median"]) == (60.0, 40.0)  # the best round's pair
    assert f["peer_tokens_per_s_rounds"] == [50.0, 60.0]
    assert f["ratio"] == pytest.approx(2.0) and f["ratio_median"] == pytest.approx(110 / 40)
    assert f["peer_peak_memory_bytes"] == 3 * 2**30 and f["peer_threads"] == 2


def test_peak_meter_counts_the_flops_of_its_own_shape():
    """Square by default (2n³); with `rows`, an [m, k] × [k, n] product (2mkn) whose kernel is stored [n, k]."""
    square, rows = common.PeakMeter(64), common.PeakMeter(96, rows=4, k=32)
    assert square.flops == 2 * 64 ** 3 and rows.flops == 2 * 4 * 32 * 96
    assert rows._b.shape == (96, 32)
    for meter in (square, rows):
        assert meter.measure(repeats=1) > 0 and meter.runs == 1
        assert meter.gflops == pytest.approx(meter.flops / meter.best_s / 1e9)
