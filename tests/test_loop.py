"""train_and_evaluate end to end on tiny models: files written, loss going down, %BC rows, early errors."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from ilql_jax import tokenizers, train
from ilql_jax.config import TrainConfig, config_from_dict
from ilql_jax.data import episodes
from ilql_jax.data.batch import DTYPES, Batch
from ilql_jax.logging import MetricWriter
from ilql_jax.loop import check_arrays, init_weights, select_train_rows, train_and_evaluate
from ilql_jax.models import gpt2, hf_import, ilql
from ilql_jax.sharding import MeshConfig
from ilql_jax.state import OptimConfig

TOK = tokenizers.wordle_tokenizer()
MAX_LEN = 16
WORDS = ("crane", "slate", "trace", "adieu", "pious", "mount", "zesty", "blimp")


def _episode(word: str, reward: float) -> episodes.Episode:
    return episodes.Episode((episodes.agent(word, reward), episodes.env("<b><y><b><b><g>")))


def _data(words=WORDS, rewards=None):
    rewards = [-float(i % 6) for i in range(len(words))] if rewards is None else rewards
    return episodes.episodes_to_arrays([_episode(w, r) for w, r in zip(words, rewards)], TOK, MAX_LEN)


def _config(mode: str, **overrides) -> TrainConfig:
    # One StepConfig per mode, so the loop's cache compiles each step once for all tests.
    trunk = gpt2.GPT2Config.tiny(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_positions=MAX_LEN)
    step = train.StepConfig(mode=mode, model=ilql.ModelConfig(trunk=trunk), optim=OptimConfig(learning_rate=1e-2))
    base = dict(step=step, batch_size=4, max_len=MAX_LEN, num_steps=4, log_every=2, eval_every=2, eval_batches=2,
                progress=False)
    return TrainConfig(**{**base, **overrides})


def _metrics(workdir) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("mode", ["ilql", "bc"])
def test_run_writes_config_metrics_and_tensorboard(tmp_path, mode):
    config = _config(mode)
    state = train_and_evaluate(config, str(tmp_path), _data(), _data(WORDS[::-1]))

    assert int(state.step) == 4
    with open(tmp_path / "config.json") as f:
        assert config_from_dict(TrainConfig, json.load(f)) == config
    lines = _metrics(tmp_path)
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:
        for key in ("train/loss", "eval/loss", "train/tokens_per_sec", "train/grad_norm"):
            assert math.isfinite(line[key]), (key, line)
    if mode == "ilql":
        assert {"train/q_loss", "train/v_loss", "eval/cql_loss"} <= set(lines[0])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_resuming_from_a_state_continues_the_step_count_and_the_log(tmp_path):
    config = _config("bc")
    seen = []
    state = train_and_evaluate(config, str(tmp_path), _data(), on_step_end=lambda step, s: seen.append(step))
    state = train_and_evaluate(dataclasses.replace(config, num_steps=6), str(tmp_path), _data(), state=state,
                               on_step_end=lambda step, s: seen.append(step))
    assert int(state.step) == 6
    assert seen == [1, 2, 3, 4, 5, 6]
    # No eval data: train metrics only, appended to the same file.
    assert [(line["step"], "eval/loss" in line) for line in _metrics(tmp_path)] == [(2, False), (4, False), (6, False)]


def test_on_eval_runs_at_step_0_and_at_chosen_steps_on_computed_results(tmp_path):
    config = _config("ilql", num_steps=6, eval_every=4, eval_steps=(0, 3), log_every=3)
    seen, ready = [], []

    def computed(state):  # every parameter and optimizer array already holds its value (typed keys have no is_ready)
        arrays = [x for x in jax.tree.leaves(state) if hasattr(x, "is_ready")]
        return len(arrays) > 10 and all(x.is_ready() for x in arrays)

    def on_eval(step, state):
        ready.append(computed(state))
        seen.append((step, int(state.step)))
        return {"probe": 10.0 + step}

    def on_step_end(step, state):
        ready.append(computed(state))

    train_and_evaluate(config, str(tmp_path), _data(), _data(WORDS[::-1]), on_eval=on_eval, on_step_end=on_step_end)
    assert seen == [(0, 0), (3, 3), (4, 4), (6, 6)]  # eval_steps, eval_every and the end; the state at that step
    assert all(ready) and len(ready) == 4 + 6
    probes = {line["step"]: (line.get("eval/probe"), "eval/loss" in line) for line in _metrics(tmp_path)}
    assert probes == {0: (10.0, True), 3: (13.0, True), 4: (14.0, True), 6: (16.0, True)}
    with pytest.raises(ValueError, match="eval_steps"):
        _config("ilql", num_steps=6, eval_steps=(7,))


def test_bc_loss_decreases_on_repetitive_data(tmp_path):
    data = _data(WORDS[:2] * 4)
    train_and_evaluate(_config("bc", num_steps=30, log_every=5, eval_every=0), str(tmp_path), data, data)
    lines = _metrics(tmp_path)
    losses = [line["train/loss"] for line in lines]
    assert [line["step"] for line in lines] == [5, 10, 15, 20, 25, 30]
    assert losses[-1] < 0.5 * losses[0], losses
    assert "eval/loss" in lines[-1] and lines[-1]["eval/loss"] < 0.5 * losses[0]


def test_percent_bc_trains_only_on_the_top_fraction(tmp_path):
    returns = np.array([-3.0, 0.0, -5.0, -1.0, -2.0, 0.0, -6.0, -4.0])
    config = _config("bc", bc_top_fraction=0.5)
    rows = select_train_rows(config, _data(), returns)
    top = {WORDS[i] for i in (1, 3, 4, 5)}  # the four highest returns
    chosen = {TOK.decode(row[1:6]) for row in rows.tokens}
    assert chosen == top

    state = train_and_evaluate(config, str(tmp_path), _data(), returns=returns)
    assert int(state.step) == 4
    # Four rows remain, so a batch of five cannot be drawn: the loop really trains on the selection.
    with pytest.raises(ValueError, match=r"top 0.5 by return\) has 4 examples, fewer than batch_size=5"):
        train_and_evaluate(dataclasses.replace(config, batch_size=5), str(tmp_path / "b"), _data(), returns=returns)


def test_percent_bc_argument_errors(tmp_path):
    config = _config("bc", bc_top_fraction=0.5)
    with pytest.raises(ValueError, match="needs `returns`"):
        train_and_evaluate(config, str(tmp_path), _data())
    with pytest.raises(ValueError, match=r"returns has shape \(3,\)"):
        train_and_evaluate(config, str(tmp_path), _data(), returns=np.zeros(3))
    with pytest.raises(ValueError, match="bc_top_fraction is None"):
        train_and_evaluate(_config("bc"), str(tmp_path), _data(), returns=np.zeros(8))
    with pytest.raises(ValueError, match="needs step.mode='bc'"):
        _config("ilql", bc_top_fraction=0.5)


def _without(data, key):
    return {k: v for k, v in data.items() if k != key}


@pytest.mark.parametrize("make_data, match", [
    (lambda d: _without(d, "rewards"), "train_data is missing key 'rewards'"),
    (lambda d: {k: v[:0] for k, v in d.items()}, "train_data is empty"),
    (lambda d: {k: v[:, :8] for k, v in d.items()}, r"train_data\['tokens'\] has shape \(8, 8\); expected \[N, max_len=16\]"),
    (lambda d: {k: v[0] for k, v in d.items()}, r"train_data\['tokens'\] has shape \(16,\)"),
    (lambda d: {k: v[:3] for k, v in d.items()}, "train_data has 3 examples, fewer than batch_size=4"),
    (lambda d: {**d, "tokens": d["tokens"].astype(np.float32)}, r"train_data\['tokens'\] must hold integers"),
    (lambda d: {**d, "tokens": d["tokens"] + 100}, "outside the trunk's vocab_size"),
    (lambda d: {**d, "dones": d["dones"][:5]}, "disagree on the number of examples"),
])
def test_bad_train_data_fails_early_with_a_clear_error(tmp_path, make_data, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(_config("ilql"), str(tmp_path / "run"), make_data(_data()))
    assert not (tmp_path / "run").exists()  # nothing written (or compiled) before the checks


def test_a_mesh_the_devices_cannot_make_fails_early(tmp_path):
    with pytest.raises(ValueError, match="needs 2 devices, but there are 1"):
        train_and_evaluate(_config("bc", mesh=MeshConfig(data=2)), str(tmp_path / "run"), _data())
    assert not (tmp_path / "run").exists()


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                  jax.tree.leaves(b)))


def test_init_names_where_a_fresh_state_starts(tmp_path):
    trunk = _config("bc").step.model.trunk
    bc_dir = tmp_path / "bc"
    policy = jax.device_get(train_and_evaluate(_config("bc"), str(bc_dir), _data()).params["policy"])

    assert _max_diff(init_weights(f"bc:{bc_dir}", trunk), policy) == 0.0
    hf_import.export_hf_gpt2(policy, trunk, str(tmp_path / "hf"))
    from_hf = hf_import.params_to_hf(init_weights(str(tmp_path / "hf"), trunk), trunk)
    assert _max_diff(from_hf, hf_import.params_to_hf(policy, trunk)) == 0.0
    with pytest.raises(ValueError, match="has n_layer=1, but step.model.trunk has n_layer=2"):
        init_weights(str(tmp_path / "hf"), dataclasses.replace(trunk, n_layer=2))

    # ILQL's value trunk and π_β both start from the BC policy: Adam's first step moves each weight by <= lr.
    config = _config("ilql", num_steps=1, init=f"bc:{bc_dir}")
    state = train_and_evaluate(config, str(tmp_path / "ilql"), _data())
    lr = config.step.optim.learning_rate
    assert _max_diff(state.params["value"]["trunk"], policy) <= lr * 1.001
    assert _max_diff(state.params["policy"], policy) <= lr * 1.001
    with pytest.raises(ValueError, match="not both"):
        train_and_evaluate(config, str(tmp_path / "x"), _data(), trunk=policy)


def test_bad_eval_data_is_named(tmp_path):
    with pytest.raises(ValueError, match="eval_data is missing key 'next_idx'"):
        train_and_evaluate(_config("ilql"), str(tmp_path), _data(), _without(_data(), "next_idx"))


def test_check_arrays_casts_to_canonical_dtypes_and_drops_other_keys():
    data = {k: v.astype(np.int64) if v.dtype == np.int32 else v for k, v in _data().items()}
    out = check_arrays({**data, "example_id": np.arange(8)}, _config("ilql"))
    assert isinstance(out, Batch)
    assert {k: v.dtype for k, v in out._asdict().items()} == DTYPES._asdict()


def test_metric_writer_writes_only_when_enabled(tmp_path):
    with MetricWriter(tmp_path / "on", enabled=True) as writer:
        writer.write(3, {"train/loss": np.float32(1.5), "eval/loss": jax.numpy.asarray(2.0)})
    with MetricWriter(tmp_path / "off", enabled=False) as writer:
        writer.write(3, {"train/loss": 1.0})
    assert _metrics(tmp_path / "on") == [{"step": 3, "train/loss": 1.5, "eval/loss": 2.0}]
    assert list((tmp_path / "on" / "tb").glob("events.out.tfevents.*"))
    assert not (tmp_path / "off").exists()


def test_the_progress_bar_counts_finished_steps_not_dispatched_ones(monkeypatch):
    from ilql_jax import loop

    class Bar:
        n = 0

        def update(self, k=1):
            self.n += k

    waited = []
    monkeypatch.setattr(jax, "block_until_ready", lambda x: waited.append(int(x)) or x)
    bar, hidden = Bar(), Bar()
    shown, quiet = loop._Progress(bar, True), loop._Progress(hidden, False)
    for step in range(1, 6):
        shown.dispatched({"loss": jax.numpy.asarray(step)})
        quiet.dispatched({"loss": jax.numpy.asarray(step)})
        # Each dispatch waits for the step LAG before it, then counts it: the bar trails by LAG steps.
        assert bar.n == max(0, step - loop._Progress.LAG) and waited == list(range(1, bar.n + 1))
    shown.synced()  # after a host sync (log step, save) every dispatched step is done
    assert bar.n == 5 and hidden.n == 0 and waited == [1, 2, 3]  # a hidden bar never waits
