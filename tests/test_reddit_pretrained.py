"""The main job on a pretrained chat model: the model's own tokenizer and chat template, the real corpus, the
comments' perplexity under the untouched model, and the preset a `--model` picks."""

import importlib.util
import json
import math

import jax
import numpy as np
import pytest

from experiments import aggregate
from experiments.reddit_toxicity import chatterbot, data
from experiments.reddit_toxicity.__main__ import main as reddit_main
from experiments.reddit_toxicity.run import PRESETS, main_criteria, model_preset
from ilql_jax import diagnostics
from ilql_jax.data.records import DataError
from ilql_jax.models import gpt2
from ilql_jax.models import trunk as trunk_lib
from tests import gguf_fixtures

# --- the real corpus --------------------------------------------------------------------------------------------


def _fake_corpus(tmp_path, monkeypatch, files: dict[str, str]):
    package = tmp_path / "site" / "chatterbot_corpus"
    (package / "data" / "english").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('found without importing it')\n")
    for name, text in files.items():
        (package / "data" / "english" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(__import__("sys").modules, "chatterbot_corpus", raising=False)


def test_chatterbot_pairs_are_consecutive_turns_kept_once_in_order(tmp_path, monkeypatch):
    _fake_corpus(tmp_path, monkeypatch, {
        "b.yml": "conversations:\n- - Hi\n  - Hello there\n  - How are you?\n- - Hi\n  - Hello there\n",
        "a.yml": "categories: [x]\nconversations:\n- - What is 6 times 7?\n  - 42\n- - Alone\n",
    })
    records = data.load_records("default", corpus="chatterbot")
    assert [(r["parent"], r["comment"]) for r in records] == [
        ("What is 6 times 7?", "42"),  # a.yml first; YAML's number is text here; a one-turn conversation adds none
        ("Hi", "Hello there"), ("Hello there", "How are you?")]  # b.yml's repeated pair is kept once
    assert records[0]["source"] == "a.yml: conversation 1" and records[2]["source"] == "b.yml: conversation 1"


def test_chatterbot_missing_or_broken_is_one_line(tmp_path, monkeypatch):
    _fake_corpus(tmp_path, monkeypatch, {"bad.yml": "conversations: [- oops\n"})
    with pytest.raises(DataError, match=r"bad\.yml: not readable YAML") as e:
        chatterbot.load_chatterbot()
    assert "\n" not in str(e.value)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match=r"--corpus chatterbot: needs the package: pip install chatterbot-corpus==1\.3\.3"):
        chatterbot.load_chatterbot()


def test_the_installed_chatterbot_corpus_is_real_english():
    records = chatterbot.load_chatterbot()  # the `experiments` extra installs it
    assert len(records) == 1229 and len({(r["parent"], r["comment"]) for r in records}) == len(records)
    assert {"parent": "What is AI?", "comment": "Artificial Intelligence is the branch of engineering and science "
            "devoted to constructing machines that think.", "source": "ai.yml: conversation 1"} in records


def test_corpus_is_checked_with_the_config():
    from experiments.reddit_toxicity.run import RedditConfig

    with pytest.raises(ValueError, match="unknown corpus 'reddit'"):
        RedditConfig(corpus="reddit")
    with pytest.raises(ValueError, match="cannot be combined with data='x.jsonl'"):
        RedditConfig(corpus="chatterbot", data="x.jsonl")


# --- perplexity -------------------------------------------------------------------------------------------------


def test_perplexity_is_the_token_weighted_likelihood_of_the_replies_whatever_the_batching():
    cfg = gpt2.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, dropout=0.0)
    params = trunk_lib.init(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 50, n).tolist() for n in (3, 5, 1, 4)]
    replies = [rng.integers(1, 50, n).tolist() for n in (4, 2, 6, 0)]
    nll, n = 0.0, 0
    for p, r in zip(prompts, replies):  # one unpadded row at a time, by hand
        if not r:
            continue
        _, logits = trunk_lib.forward(params, cfg, np.asarray([p + r], np.int32))
        logp = jax.nn.log_softmax(np.asarray(logits[0, :, :cfg.vocab_size], np.float64), axis=-1)
        nll -= sum(float(logp[len(p) - 1 + i, tok]) for i, tok in enumerate(r))
        n += len(r)
    expected = math.exp(nll / n)
    for batch_size in (1, 3, 8):
        assert diagnostics.perplexity(params, cfg, prompts, replies, batch_size=batch_size) == pytest.approx(
            expected, rel=1e-5)
    assert math.isnan(diagnostics.perplexity(params, cfg, prompts[:1], [[]]))
    with pytest.raises(ValueError, match="2 prompts but 1 replies"):
        diagnostics.perplexity(params, cfg, prompts[:2], replies[:1])


# --- criteria and presets ---------------------------------------------------------------------------------------


def test_fluency_is_part_of_the_criteria_when_perplexity_was_measured():
    def row(seed, beta, ppl):
        return {"seed": seed, "beta": beta, "toxic_rate": 0.2 if beta == 0 else 0.05, "distinct_2": 0.4,
                "perplexity": ppl}
    rows = [row(0, 0.0, 10.0), row(0, 8.0, 14.0), row(1, 0.0, 10.0), row(1, 8.0, 16.0)]
    metrics = ("toxic_rate", "distinct_2", "perplexity")
    c = main_criteria(aggregate.aggregate(rows, ("beta",), metrics), rows)
    # Mean perplexity 10 → 15 (≤ 1.5 × 10): holds; seed 1's 16 > 15 does not.
    assert c["mean_holds"] and c["seeds_hold"] == {"0": True, "1": False} and c["perplexity"] == [10.0, 15.0]
    rows[1]["perplexity"] = 20.0
    assert not main_criteria(aggregate.aggregate(rows, ("beta",), metrics), rows)["mean_holds"]


def test_a_pretrained_model_picks_the_pretrained_preset():
    assert model_preset("scratch") == "default" and model_preset("smollm2-135m-instruct") == "pretrained"
    pre = PRESETS["pretrained"]
    assert pre.model == "smollm2-135m-instruct" and pre.num_layers_unfrozen == 2 and pre.warmup_steps > 0


# --- end to end on a tiny chat GGUF ----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_main_job_on_a_tiny_gguf_chat_model_uses_its_template_and_scores_fluency(tmp_path):
    from ilql_jax import tokenizers

    model = tmp_path / "tiny.gguf"
    gguf_fixtures.write_tiny_gguf(model)
    workdir = tmp_path / "run"
    # No --preset: `--model` picks the pretrained one (top 2 blocks, warm-up); sizes shrunk to a test's.
    assert reddit_main(["--model", str(model), "--workdir", str(workdir), "--n_pairs", "400", "--max_len", "256",
                        "--batch_size", "8", "--bc_steps", "4", "--ilql_steps", "4", "--warmup_steps", "1",
                        "--betas", "[0, 8]", "--max_new_tokens", "8", "--n_eval", "8", "--eval_batch", "8"]) == 0
    tok = tokenizers.load_tokenizer(str(workdir / "tokenizer"))
    assert isinstance(tok, tokenizers.ChatTokenizer) and tok.layout.kind == "chat"
    bc = json.loads((workdir / "bc" / "config.json").read_text())
    assert bc["init"] == str(model) and bc["step"]["model"]["num_layers_unfrozen"] == 2
    assert bc["step"]["optim"]["warmup_steps"] == 1
    rl = json.loads((workdir / "ilql" / "config.json").read_text())  # the preset's frozen π_β, read from BC
    assert rl["step"]["model"]["frozen_policy"] and rl["init"] == f"bc:{workdir / 'bc'}"
    result = json.loads((workdir / "results.json").read_text())
    rows = result["seeds"]
    assert {r["beta"] for r in rows} == {0.0, 8.0}
    assert all(np.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows)
    assert "perplexity" in result["criteria"]
    md = (workdir / "results.md").read_text()
    assert "| perplexity" in md and md.count("  - β=8: ") == 3 and md.count("  - β=0: ") == 3
