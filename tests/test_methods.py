"""What the experiments share between their data and their tables: method names (`experiments.methods`), the
per-seed loop (`aggregate.over_seeds`, `methods.train_methods`) and mixed-quality games (`mixtures.play_mixtures`)."""

import pathlib

import numpy as np
import pytest

from experiments import aggregate, methods
from experiments.mixtures import Mixture, play_mixtures
from ilql_jax.config import TrainConfig
from ilql_jax.configs import GPT2Config, ModelConfig, StepConfig


def test_percent_bc_is_read_from_the_name():
    assert [methods.top_fraction(m) for m in ("pbc10", "pbc5", "pbc99", "bc", "pbc", "pbc100", "pbc05", "ilql")] == [
        0.1, 0.05, 0.99, None, None, None, None, None]
    assert [methods.family(m) for m in ("pbc20", "bc", "ilql β=4")] == ["pbc", "bc", "ilql β=4"]
    methods.check(("bc", "pbc20", "mc"), ("bc", "ilql", "mc"))
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['pbc0', 'ssrl'\]; use bc, pbcNN \(1 ≤ NN ≤ 99\), "
                                         r"ilql or mc"):
        methods.check(("bc", "pbc0", "ssrl"), ("bc", "ilql", "mc"))


def test_over_seeds_gives_each_seed_its_workdir_in_order(tmp_path):
    calls = []
    rows = aggregate.over_seeds(3, 2, tmp_path, lambda seed, d: calls.append((seed, d)) or [{"seed": seed}] * 2)
    assert calls == [(3, tmp_path / "seed3"), (4, tmp_path / "seed4")]
    assert [r["seed"] for r in rows] == [3, 3, 4, 4]
    assert aggregate.over_seeds(0, 1, tmp_path, lambda seed, d: [{"dir": d}]) == [{"dir": tmp_path}]


def test_train_methods_trains_a_shared_run_once_and_gives_percent_bc_the_returns(monkeypatch, tmp_path):
    trunk = GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    trained = []

    def fake_train(config, workdir, train, heldout, *, returns=None):
        trained.append((pathlib.Path(workdir).name, train, heldout, returns))
        return f"state of {pathlib.Path(workdir).name}"

    monkeypatch.setattr(methods, "train_and_evaluate", fake_train)

    def config(run):
        mode = "ilql" if run == "ilql" else "bc"
        return TrainConfig(step=StepConfig(mode=mode, model=ModelConfig(trunk=trunk)), max_len=16,
                           bc_top_fraction=methods.top_fraction(run))

    out = list(methods.train_methods(("bc", "pbc20", "ilql"), tmp_path, config, lambda run: (run + " rows", None),
                                     returns="R", trained_as=lambda m: "ilql" if m == "bc" else m))
    assert [(m, run, state) for m, run, _, state, _ in out] == [
        ("bc", "ilql", "state of ilql"), ("pbc20", "pbc20", "state of pbc20"), ("ilql", "ilql", "state of ilql")]
    assert trained == [("ilql", "ilql rows", None, None), ("pbc20", "pbc20 rows", None, "R")]


class _Game:
    """Counts to a target: done once the turns say it; each turn records the policy that spoke."""

    def __init__(self, target):
        self.target, self.turns = target, []

    @property
    def done(self):
        return len(self.turns) >= self.target

    def step(self, text, policy=""):
        self.turns.append((text, policy))


def test_play_mixtures_switches_policy_after_the_opening_and_is_seeded():
    policies = {"a": lambda turns, rng: f"a{len(turns)}", "b": lambda turns, rng: str(rng.integers(10))}
    mixes = [Mixture("a>b", 1.0, "a", "b", (1, 2)), Mixture("b", 1.0, "b", "b")]
    games = play_mixtures(200, 0, mixes, policies, [3, 4, 5], _Game)
    assert {g.target for g in games} == {3, 4, 5} and all(len(g.turns) == g.target for g in games)
    openings = {sum(p == "a" for _, p in g.turns) for g in games}
    assert openings == {0, 1, 2}  # pure b, or a for the first 1 or 2 turns, then b
    for g in games:
        speakers = [p for _, p in g.turns]
        assert speakers == sorted(speakers)  # a only before b
    again = play_mixtures(200, 0, mixes, policies, [3, 4, 5], _Game)
    assert [g.turns for g in again] == [g.turns for g in games]
    assert [g.turns for g in play_mixtures(200, 1, mixes, policies, [3, 4, 5], _Game)] != [g.turns for g in games]
    assert np.isclose(np.mean([g.turns[0][1] == "a" for g in games]), 0.5, atol=0.1)
