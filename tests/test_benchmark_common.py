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
