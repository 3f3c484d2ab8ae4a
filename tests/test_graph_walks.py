"""The graph-walk benchmark: the graph and its optimality score, the driver's seed rows, and (slow) that value
guidance finds short paths the random-walk data rarely takes."""

import json

import numpy as np
import pytest

from experiments import aggregate
from experiments.graph_walks import __main__ as main_mod
from experiments.graph_walks import graph as graph_lib


def test_graph_has_paths_to_the_goal_and_scores_walks():
    g, walks = graph_lib.make_task(1000, n_walks=200)
    n = len(g.edges)
    assert not g.edges[graph_lib.GOAL].any() and g.edges[1:].any(axis=1).all()
    # Shortest counts by brute force: the nodes reachable in k steps backwards from the goal.
    frontier, count = {graph_lib.GOAL}, {graph_lib.GOAL: 1}
    for k in range(2, g.max_length):
        frontier = {i for i in range(n) if i not in count and any(g.edges[i, j] for j in frontier)}
        count.update({i: k for i in frontier})
    assert [count[i] for i in range(n)] == g.shortest.tolist()

    sym = g.symbols
    start = int(np.argmax(g.shortest))  # the farthest node: a shortest path by greedy descent of `shortest`
    path = [start]
    while path[-1] != graph_lib.GOAL:
        path.append(next(j for j in np.flatnonzero(g.edges[path[-1]]) if g.shortest[j] == g.shortest[path[-1]] - 1))
    best = "".join(sym[i] for i in path)
    assert g.optimality(best) == 1.0
    assert g.optimality(best + "zz<s>") == 1.0  # what follows the first arrival does not count
    assert g.optimality(best[:-1]) == 0.0  # never arrives
    assert g.optimality(best[0] + "<s>" + best[1:]) == 0.0  # markup is no node
    non_edge = next(j for j in range(1, n) if not g.edges[start, j] and j != start)
    assert g.optimality(sym[start] + sym[non_edge] + "a") == 0.0
    scores = np.array([g.optimality(w) for w in walks])
    assert ((0 <= scores) & (scores <= 1)).all() and 0.2 < scores.mean() < 0.8  # random walks: rarely short
    assert {w[0] for w in walks} == set(sym[1:]) and all(len(w) <= g.max_length for w in walks)
    assert all(w[-1] == "a" or len(w) == g.max_length for w in walks)  # stops at the goal or the limit
    with pytest.raises(ValueError, match="no path to the goal"):
        graph_lib.make_task(1000, max_length=3)
    with pytest.raises(ValueError, match="no graph"):
        graph_lib.make_task(1000, p_edge=0.01)


def test_aggregate_is_the_mean_and_standard_error_across_seeds():
    rows = [{"method": "a", "seed": 0, "x": 1.0, "x_se": 0.1}, {"method": "a", "seed": 1, "x": 2.0, "x_se": 0.3},
            {"method": "a", "seed": 2, "x": 6.0, "x_se": 0.2}, {"method": "b", "seed": 0, "x": 5.0, "x_se": 0.5}]
    a, b = aggregate.aggregate(rows, ("method",), ("x",), {"x": "x_se"})
    # Hand-computed: mean 3, sample std sqrt(((−2)² + (−1)² + 3²) / 2) = sqrt(7), s.e. sqrt(7/3).
    assert (a["method"], a["n_seeds"], a["seeds"], a["x_seeds"]) == ("a", 3, [0, 1, 2], [1.0, 2.0, 6.0])
    assert a["x"] == pytest.approx(3.0) and a["x_se_seeds"] == pytest.approx(np.sqrt(7 / 3))
    assert a["x_se_episodes"] == pytest.approx(0.2)
    assert (b["x"], b["x_se_seeds"], b["n_seeds"]) == (5.0, 0.0, 1)


def test_smoke_preset_writes_every_seed_row_and_the_aggregate(tmp_path):
    assert main_mod.main(["--preset", "smoke", "--workdir", str(tmp_path), "--recipes", '["shared"]']) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {(r["seed"], r["decode"], r["beta"]) for r in saved["seeds"]} == \
        {(s, d, b) for s in (0, 1) for d in ("sample", "greedy") for b in (0.0, 100.0)}
    for row in saved["aggregate"]:
        seeds = [r["optimality"] for r in saved["seeds"] if (r["decode"], r["beta"]) == (row["decode"], row["beta"])]
        assert row["optimality_seeds"] == seeds and row["optimality"] == pytest.approx(np.mean(seeds))
    assert "optimality ± s.e. (seeds)" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_value_guidance_finds_short_paths_across_seeds(tmp_path):
    """The suite's version of the learning benchmark (preset "fast": 2 × 64 trunk, trlx's data, steps and
    settings, the default PyTorch-style head initialisation): at β = 100 every seed's walks are much closer to
    optimal than π_β's own (β = 0), which are no better than the data's: the values find the short paths."""
    main_mod.main(["--preset", "fast", "--workdir", str(tmp_path), "--recipes", '["shared"]'])
    saved = json.loads((tmp_path / "results.json").read_text())
    opt = {(r["seed"], r["beta"]): r["optimality"] for r in saved["seeds"] if r["decode"] == "sample"}
    data = saved["data"]["data_optimality"]
    for seed in (0, 1):
        assert opt[seed, 0.0] < data + 0.05, (opt, data)
        assert opt[seed, 100.0] > opt[seed, 0.0] + 0.25, opt
        assert opt[seed, 100.0] > 0.8, opt


def test_walk_stats_count_paths_composed_rather_than_copied():
    from experiments.graph_walks.run import walk_stats

    g, walks = graph_lib.make_task(1000, n_walks=1000)
    reached = [w for w in walks if w[-1] == "a"]
    copied = reached[0]
    # A goal-reaching path no data walk takes: a shortest path that is not among the walks, if any.
    sym, novel = g.symbols, None
    for start in range(1, len(sym)):
        path = [start]
        while path[-1] != graph_lib.GOAL:
            path.append(next(j for j in np.flatnonzero(g.edges[path[-1]]) if g.shortest[j] == g.shortest[path[-1]] - 1))
        text = "".join(sym[i] for i in path)
        if text not in walks:
            novel = text
            break
    assert novel is not None
    stats = walk_stats(g, [copied, novel + "bc", copied[:-1]], set(walks))  # the last never reaches the goal
    assert stats["reached_goal"] == pytest.approx(2 / 3) and stats["unseen_paths"] == pytest.approx(1 / 2)
    assert stats["optimality"] == pytest.approx((g.optimality(copied) + 1.0 + 0.0) / 3)
