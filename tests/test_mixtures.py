"""The shared mixed-quality data description (experiments/mixtures.py) and result table (experiments/results.py)."""

import json

import numpy as np
import pytest

from experiments.mixtures import Mixture, mixture_weights
from experiments.results import write_table

POLICIES = ("expert", "random")


def test_weights_are_normalised_and_the_switch_picks_the_policy():
    mixes = [Mixture("a", 3.0, "expert", "random", (1, 2)), Mixture("b", 1.0, "random", "random")]
    np.testing.assert_allclose(mixture_weights(mixes, POLICIES), [0.75, 0.25])
    assert [mixes[0].policy(turn, n_opening=2) for turn in range(4)] == ["expert", "expert", "random", "random"]
    assert mixes[0].policy(0, n_opening=0) == "random"


@pytest.mark.parametrize("mixes, message", [
    ([Mixture("m", 1.0, "expert", "oracle")], r"mixture 'm': unknown policy \['oracle'\]"),
    ([Mixture("m", 1.0, "expert", "random", (3, 1))], r"mixture 'm': bad switch range \(3, 1\)"),
    ([Mixture("m", -1.0, "expert", "random")], "non-negative weights"),
    ([Mixture("m", 0.0, "expert", "random")], "positive sum"),
    ([], "positive sum"),
])
def test_bad_mixtures_are_named(mixes, message):
    with pytest.raises(ValueError, match=message):
        mixture_weights(mixes, POLICIES)


def test_write_table(tmp_path):
    rows = [{"method": "bc", "x": 0.5}, {"method": "ilql", "x": 0.25}]
    seed_rows = [dict(r, seed=0) for r in rows]
    write_table(str(tmp_path), rows, [("method", lambda r: r["method"]), ("x", lambda r: f"{r['x']:.2f}")], "footer.",
                seed_rows=seed_rows, data={"n": 3})
    assert json.loads((tmp_path / "results.json").read_text()) == {"aggregate": rows, "seeds": seed_rows,
                                                                    "data": {"n": 3}}
    assert (tmp_path / "results.md").read_text() == "| method | x |\n|---|---|\n| bc | 0.50 |\n| ilql | 0.25 |\n\nfooter.\n"
