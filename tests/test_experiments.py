"""The experiments' smoke presets, end to end through their command lines (slow)."""

import json

import jax
import pytest

from experiments import lmrl
from experiments.reddit_toxicity.__main__ import main as reddit_main
from experiments.wordle.__main__ import main as wordle_main
from experiments.wordle.diagnose import main as diagnose_main

pytestmark = pytest.mark.slow


def test_wordle_smoke(tmp_path):
    assert wordle_main(["--preset", "smoke", "--workdir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["seeds"]
    methods = [r["method"] for r in rows]
    assert methods[2:] == ["bc", "pbc10", "pbc20", "pbc30", "ssrl", "ssrl at β = 0", "ilql", "ilql at β = 0"]
    for r in rows:
        assert set(r) >= {"method", "mean_return", "stderr", "win_rate", "mean_guesses", "n_games"}
        assert -6.0 <= r["mean_return"] <= 0.0
    assert rows[0]["n_games"] == 64 and rows[0]["win_rate"] > 0.9  # the expert reference
    assert (tmp_path / "results.md").read_text().startswith("| method |")
    assert (tmp_path / "results.png").stat().st_size > 0
    assert (tmp_path / "words.txt").read_text().count("\n") == 60
    # A repeated non-word counts in both rates, so each is a share of guesses on its own.
    for r in rows:
        assert 0.0 <= r["repeat_rate"] <= 1.0 and 0.0 <= r["invalid_rate"] <= 1.0
    assert rows[0]["repeat_rate"] == rows[0]["invalid_rate"] == 0.0  # the expert never wastes a turn
    assert rows[1]["invalid_rate"] == 0.0  # the scripted players only play listed words
    # Single-step RL and ILQL start from the BC run (rl_from_bc) and keep its π_β (freeze_policy),
    # so at β = 0 each plays exactly as BC does.
    for method in ("ssrl", "ilql"):
        assert json.loads((tmp_path / method / "config.json").read_text())["init"] == f"bc:{tmp_path / 'bc'}"
        assert rows[methods.index(f"{method} at β = 0")]["mean_return"] == rows[2]["mean_return"]
    # A rerun resumes every method from its final checkpoint instead of training again.
    assert wordle_main(["--preset", "smoke", "--workdir", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())["seeds"]
    assert [r["mean_return"] for r in again[2:]] == [r["mean_return"] for r in rows[2:]]


def test_wordle_on_lmrl_gyms_data_is_scored_as_they_score_it(tmp_path):
    assert wordle_main(["--preset", "smoke", "--workdir", str(tmp_path), "--data", "lmrl",
                        "--methods", '["bc", "pbc10", "ilql"]']) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = {r["method"]: r for r in saved["aggregate"]}
    assert set(rows) == {"expert (upper reference)", "data (behaviour mix)", "bc", "pbc10", "ilql", "ilql at β = 0"}
    # Ours: our data's mean return scores 50 and our expert's 100; theirs: LMRL-Gym's constants.
    assert rows["data (behaviour mix)"]["score_ours"] == pytest.approx(50.0)
    assert rows["expert (upper reference)"]["score_ours"] == pytest.approx(100.0)
    assert rows["bc"]["score_theirs"] == pytest.approx(
        lmrl.score(rows["bc"]["mean_return"], lmrl.THEIRS["wordle"]))
    table = (tmp_path / "results.md").read_text()
    assert "LMRL-Gym score" in table and "| 79.9 |" in table  # BC's published score beside ours
    assert "moves sampled at temperature 1" in table  # their eval scripts sample; ours decode greedily
    train = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert {p for g in train for p in g["policies"]} == {"smart_or_random"}


def test_wordle_frozen_policy_on_the_habit_mix(tmp_path):
    from ilql_jax import checkpoint
    from ilql_jax.models import trunk as trunk_lib
    from experiments.wordle.run import PRESETS, trunk_config
    assert wordle_main(["--preset", "smoke", "--workdir", str(tmp_path), "--mixture", "habit",
                        "--freeze_policy", "true", "--methods", '["bc", "ilql"]']) == 0
    games = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert any("habit" in g["policies"] for g in games)
    # ILQL's π_β is the BC checkpoint, bit for bit, after the value steps.
    abstract = trunk_lib.abstract_params(trunk_config(PRESETS["smoke"]))
    bc_policy = checkpoint.load_policy_from_checkpoint(tmp_path / "bc", abstract)
    policy = checkpoint.load_policy_from_checkpoint(tmp_path / "ilql", abstract)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), policy, bc_policy)))
    # So ILQL decoded at β = 0 is BC, game for game: the values are the only difference at β > 0.
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["seeds"]}
    stats = ("mean_return", "win_rate", "mean_guesses", "repeat_rate", "invalid_rate")
    assert [rows["ilql at β = 0"][k] for k in stats] == [rows["bc"][k] for k in stats]
    # The value diagnostic reads this run and accounts for every held-out guess.
    assert diagnose_main([str(tmp_path), "--method", "ilql"]) == 0
    report = json.loads((tmp_path / "ilql" / "value_calibration.json").read_text())
    heldout = [json.loads(line) for line in (tmp_path / "data" / "heldout.jsonl").read_text().splitlines()]
    n_guesses = sum(len(g["guesses"]) for g in heldout)
    assert report["summary"]["n_guesses"] == n_guesses
    assert sum(r["n"] for r in report["rows"] if r["turn"] == "all") == n_guesses


def test_reddit_smoke_over_two_seeds_and_deterministic(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    assert reddit_main(["--preset", "smoke", "--workdir", str(two), "--seeds", "2"]) == 0
    saved = json.loads((two / "results.json").read_text())
    rows, table = saved["seeds"], saved["aggregate"]
    assert [(r["seed"], r["beta"]) for r in rows] == [(0, 0.0), (0, 4.0), (1, 0.0), (1, 4.0)]
    metrics = ("mean_reward", "toxic_rate", "kl", "distinct_1", "distinct_2", "mean_length", "advantage_slope")
    for r in rows:
        assert set(r) >= {"stderr", "n", *metrics}
        assert -10.0 <= r["mean_reward"] <= 0.0 and 0.0 <= r["toxic_rate"] <= 1.0
    assert rows[1]["kl"] > rows[0]["kl"] and rows[3]["kl"] > rows[2]["kl"]  # steering moves away from π_β
    # Two trainings (their configs carry their seeds), so two different sets of comments.
    assert [json.loads((two / f"seed{s}" / "bc" / "config.json").read_text())["seed"] for s in (0, 1)] == [0, 1]
    assert (two / "seed0" / "generations.jsonl").read_text() != (two / "seed1" / "generations.jsonl").read_text()
    # One aggregate row per β: the mean of its two seed rows and, for two values, s.e. = |a − b| / 2.
    assert [(r["beta"], r["n_seeds"], r["seeds"]) for r in table] == [(0.0, 2, [0, 1]), (4.0, 2, [0, 1])]
    for agg, (a, b) in zip(table, [(rows[0], rows[2]), (rows[1], rows[3])]):
        for m in metrics:
            assert agg[f"{m}_seeds"] == [a[m], b[m]]
            assert agg[m] == pytest.approx((a[m] + b[m]) / 2)
            assert agg[f"{m}_se_seeds"] == pytest.approx(abs(a[m] - b[m]) / 2)
        assert agg["mean_reward_se_episodes"] == pytest.approx((a["stderr"] + b["stderr"]) / 2)
    assert saved["criteria"] is None  # the smoke sweep has no β = 8
    md = (two / "results.md").read_text()
    assert md.startswith("| β | mean reward ± s.e. |") and "2 seed(s) (mean ± s.e. across seeds)" in md
    for name in ("reward_vs_kl.png", "data/train.jsonl", "tokenizer/tokenizer.json", "toxicity_cache.json",
                 "seed0/ilql/metrics.jsonl", "seed1/ilql/metrics.jsonl"):
        assert (two / name).exists(), name
    # The same command, seed 0 alone, in a fresh workdir: the same numbers and comments, bit for bit.
    assert reddit_main(["--preset", "smoke", "--workdir", str(one)]) == 0
    single = json.loads((one / "results.json").read_text())
    assert single["seeds"] == rows[:2]
    assert (one / "generations.jsonl").read_text() == (two / "seed0" / "generations.jsonl").read_text()
    assert (one / "bc" / "config.json").exists() and not (one / "seed0").exists()
    assert list((one / "ilql" / "tb").iterdir())


def test_main_criteria_hold_for_the_mean_and_each_seed_against_its_own_policy():
    from experiments import aggregate
    from experiments.reddit_toxicity.run import main_criteria

    def row(seed, beta, toxic, d2):
        return {"seed": seed, "beta": beta, "toxic_rate": toxic, "distinct_2": d2}
    rows = [row(0, 0.0, 0.20, 0.40), row(0, 8.0, 0.05, 0.35), row(1, 0.0, 0.10, 0.40), row(1, 8.0, 0.06, 0.33)]
    table = aggregate.aggregate(rows, ("beta",), ("toxic_rate", "distinct_2"))
    c = main_criteria(table, rows)
    # Means: toxic 0.15 → 0.055 (≤ 0.075), distinct-2 0.40 → 0.34 (≥ 0.32): hold. Seed 1: 0.06 > ½ · 0.10.
    assert c["mean_holds"] and c["seeds_hold"] == {"0": True, "1": False}
    assert c["toxic_rate"] == pytest.approx([0.15, 0.055]) and c["distinct_2"] == pytest.approx([0.40, 0.34])
    rows[3]["distinct_2"] = 0.10  # the mean distinct-2 falls to 0.225 < 0.32
    assert not main_criteria(aggregate.aggregate(rows, ("beta",), ("toxic_rate", "distinct_2")), rows)["mean_holds"]
    assert main_criteria(table[:1], rows[:1]) is None  # no β = 8 in the sweep


def test_wordle_decodes_as_lmrl_gym_on_their_data_and_greedily_on_ours():
    from experiments.wordle.run import WordleConfig, decode_mode
    assert decode_mode(WordleConfig()) == "greedy"
    assert decode_mode(WordleConfig(data="lmrl")) == "sample"
    assert decode_mode(WordleConfig(data="lmrl", decode="greedy")) == "greedy"
    with pytest.raises(ValueError, match="unknown decode 'beam'"):
        WordleConfig(decode="beam")


def test_wordle_rl_from_bc_needs_bc():
    from experiments.wordle.run import WordleConfig
    with pytest.raises(ValueError, match="rl_from_bc"):
        WordleConfig(methods=("ilql",))
    WordleConfig(methods=("ilql",), rl_from_bc=False, freeze_policy=False)  # from scratch needs no BC run
    with pytest.raises(ValueError, match="freeze_policy needs rl_from_bc"):
        WordleConfig(rl_from_bc=False, freeze_policy=True)
    with pytest.raises(ValueError, match="unknown mixture 'habits'"):
        WordleConfig(mixture="habits")


def test_bad_flag_is_named(capsys):
    with pytest.raises(SystemExit):
        wordle_main(["--preset", "smoke", "--no_such_field", "3"])
    assert "no_such_field" in capsys.readouterr().err


def test_wordle_rl_learning_rate_moves_only_the_value_guided_methods():
    from experiments.wordle.run import WordleConfig, train_config
    cfg = WordleConfig(rl_learning_rate=2e-3)
    assert train_config(cfg, "ilql", bc_workdir="bc").step.optim.learning_rate == 2e-3
    assert train_config(cfg, "ssrl", bc_workdir="bc").step.optim.learning_rate == 2e-3
    assert train_config(cfg, "pbc10").step.optim.learning_rate == cfg.learning_rate == 6e-4
    assert train_config(WordleConfig(rl_learning_rate=None), "ilql", bc_workdir="bc").step.optim.learning_rate == 6e-4
