"""The Llama-architecture trunk: parity with `transformers`, import (sharded, markup ids), export round trip,
and the same public API and command line as GPT-2.

Parity fixtures (tests/fixtures/<case>/): random `LlamaForCausalLM` / `Qwen2ForCausalLM`
models that `transformers` (PyTorch, eager attention, float32) saved as safetensors, with
the logits its own forward pass gave on a left-padded batch; `make_llama_reference.py`
there regenerates them (PyTorch is not needed to run these tests).
"""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from ilql_jax.models import hf_import, llama, trunk
from tests.hf_fixtures import random_hf_llama

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
CASES = ("llama_gqa_rope3", "llama_bias_tied", "qwen2_bias")
PREFIX = 6  # prefill this many columns, then decode the rest one token at a time


def _reference(case):
    ref = np.load(FIXTURES / case / "reference.npz")
    return ref["tokens"], ref["mask"], ref["logits"]


def _max_err(ours, ref, mask):
    """Largest |difference| over the real (unpadded) positions."""
    ours = np.asarray(ours)[..., :ref.shape[-1]]
    return float(np.max(np.abs(ours - ref)[mask.astype(bool)]))


def _flat(params):
    return {k: np.asarray(v.value) for k, v in nnx.to_flat_state(params)}


@pytest.mark.parametrize("case", CASES)
def test_import_matches_transformers_by_full_forward_and_cached_decode(case):
    config, params = hf_import.load_hf(str(FIXTURES / case))
    tokens, mask, ref = _reference(case)
    _, logits = jax.jit(trunk.forward, static_argnums=1)(params, config, tokens, mask)
    assert _max_err(logits, ref, mask) < 1e-4, case

    # Prefill the first PREFIX columns (row 1 starts with 3 pads), then one cached decode step per token.
    _, pre, cache = jax.jit(trunk.prefill, static_argnums=(1, 4))(params, config, tokens[:, :PREFIX],
                                                                   mask[:, :PREFIX], tokens.shape[1])
    assert _max_err(pre, ref[:, :PREFIX], mask[:, :PREFIX]) < 1e-4
    step = jax.jit(trunk.decode_step, static_argnums=1)
    for t in range(PREFIX, tokens.shape[1]):
        _, step_logits, cache = step(params, config, cache, tokens[:, t])
        assert _max_err(step_logits, ref[:, t], np.ones(2)) < 1e-4, (case, t)


def test_fixtures_cover_gqa_rope_scaling_biases_and_both_heads():
    """What the parity cases exercise, read from the imported configs, and that each feature matters:
    without Llama 3's RoPE scaling, or without the biases, the logits leave the reference by far more than 1e-4."""
    cfg = {case: hf_import.read_config(str(FIXTURES / case))[1] for case in CASES}
    g = cfg["llama_gqa_rope3"]
    assert (g.n_head, g.n_kv_head, g.rope_type, g.tie_word_embeddings) == (4, 2, "llama3", False)
    assert os.path.isfile(FIXTURES / "llama_gqa_rope3" / hf_import.INDEX_NAME)  # saved in shards
    b = cfg["llama_bias_tied"]
    assert (b.qkv_bias, b.o_bias, b.tie_word_embeddings, b.rope_type) == (True, True, True, "linear")
    q = cfg["qwen2_bias"]
    assert (q.hf_model_type, q.qkv_bias, q.o_bias, q.rope_theta) == ("qwen2", True, False, 1e6)

    tokens, mask, ref = _reference("llama_gqa_rope3")
    import dataclasses
    plain = dataclasses.replace(g, rope_type="default")
    _, params = hf_import.load_hf(str(FIXTURES / "llama_gqa_rope3"))
    assert _max_err(trunk.forward(params, plain, tokens, mask)[1], ref, mask) > 1e-3
    tokens, mask, ref = _reference("qwen2_bias")
    _, params = hf_import.load_hf(str(FIXTURES / "qwen2_bias"))
    flat = dict(nnx.to_flat_state(params))
    no_bias = nnx.from_flat_state({k: (v.replace(jnp.zeros_like(v.value)) if k[-1] == "bias" else v)
                                   for k, v in flat.items()})
    assert _max_err(trunk.forward(no_bias, q, tokens, mask)[1], ref, mask) > 1e-3


def test_sharded_placement_reads_the_same_weights():
    """`load_hf(..., shardings=)` (each device reads its own slices of the shard files) gives the host import,
    markup rows included."""
    from ilql_jax import sharding
    directory = str(FIXTURES / "llama_gqa_rope3")
    config, host = hf_import.load_hf(directory, vocab_size=166)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    shardings = sharding.state_shardings(trunk.abstract_params(config), mesh,
                                         sharding.logical_rules(sharding.MeshConfig(fsdp_params=True)))
    _, placed = hf_import.load_hf(directory, shardings=shardings, vocab_size=166)
    a, b = _flat(host), _flat(placed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


@pytest.mark.parametrize("case", ["llama_gqa_rope3", "qwen2_bias"])
def test_added_markup_rows_start_as_the_mean_row_and_export_round_trips_exactly(case, tmp_path):
    """Ids beyond the checkpoint's (ILQL's markup) get the mean embedding (and LM-head) row, the padding
    stays zero, the old ids' logits do not move; export then re-import gives the same parameters and
    bit-identical π_β logits."""
    directory = str(FIXTURES / case)
    _, base = hf_import.read_config(directory)
    config, params = hf_import.load_hf(directory, vocab_size=base.vocab_size + 6)
    emb = np.asarray(params["embed_tokens"]["embedding"].value)
    stored = hf_import.read_all(directory)
    mean = stored["model.embed_tokens.weight"].astype(np.float64).mean(0)
    np.testing.assert_allclose(emb[base.vocab_size:config.vocab_size], np.tile(mean, (6, 1)), rtol=1e-6, atol=1e-7)
    assert not emb[config.vocab_size:].any()
    if not config.tie_word_embeddings:
        head = np.asarray(params["lm_head"]["kernel"].value)
        head_mean = stored["lm_head.weight"].astype(np.float64).mean(0)
        np.testing.assert_allclose(head[:, base.vocab_size:config.vocab_size], np.tile(head_mean[:, None], (1, 6)),
                                   rtol=1e-6, atol=1e-7)
    tokens, mask, ref = _reference(case)
    _, logits = trunk.forward(params, config, tokens, mask)
    assert _max_err(logits, ref, mask) < 1e-4

    hf_import.export_hf(params, config, str(tmp_path / "out"))
    config2, params2 = hf_import.load_hf(str(tmp_path / "out"))
    assert config2 == config
    a, b = _flat(params), _flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    _, logits2 = trunk.forward(params2, config2, tokens, mask)
    np.testing.assert_array_equal(np.asarray(logits2), np.asarray(logits))
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["model_type"] == base.hf_model_type and exported["vocab_size"] == base.vocab_size + 6


def test_bad_checkpoints_are_named(tmp_path):
    d = tmp_path / "hf"
    random_hf_llama(d, llama.LlamaConfig.tiny(vocab_size=100))
    tensors = safetensors.numpy.load_file(str(d / "model.safetensors"))
    tensors["model.layers.1.self_attn.k_proj.weight"] = tensors["model.layers.1.self_attn.k_proj.weight"][:, :5]
    safetensors.numpy.save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight has shape \(32, 5\), "
                                         r"expected \(32, 64\)"):
        hf_import.load_hf(str(d))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    safetensors.numpy.save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing key.*in Llama checkpoint.*k_proj"):
        hf_import.load_hf(str(d))
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_scaling type 'yarn' is not supported"):
        hf_import.load_hf(str(d))
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'mamba' is not supported"):
        hf_import.read_config(str(d))


def test_left_padding_and_remat_do_not_change_results():
    config = llama.LlamaConfig.tiny(vocab_size=90)
    params = trunk.init(config, jax.random.key(0))
    tokens = jnp.asarray([[5, 6, 7, 8]])
    forward = jax.jit(trunk.forward, static_argnums=1)
    _, alone = forward(params, config, tokens)
    _, padded = forward(params, config, jnp.asarray([[0, 0, 5, 6, 7, 8]]), jnp.asarray([[0, 0, 1, 1, 1, 1]]))
    np.testing.assert_allclose(padded[:, 2:], alone, atol=1e-5)
    assert np.all(np.isneginf(np.asarray(alone[..., 90:])))  # padded vocabulary

    def loss(p, cfg):
        return trunk.forward(p, cfg, tokens)[1][..., :90].mean()

    import dataclasses
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g1 = grad(params, config)
    g2 = grad(params, dataclasses.replace(config, remat=True))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


TEXTS = [f"ticket {i}: my order is late. sorry, it ships today. not my problem." for i in range(20)]


def _records(n=32):
    return [{"prompt": f"ticket {i % 5}: my order is late", "response": "sorry, it ships today" if i % 2 else
             "not my problem", "reward": 1.0 if i % 2 else -1.0} for i in range(n)]


def test_ilql_run_and_beta_sweep_through_the_public_api(tmp_path):
    """A tiny Llama directory (tokenizer.json + safetensors) trains with ILQL through `TrainConfig.init` and
    decodes at several β through `generate_text`, exactly as a GPT-2 does."""
    import dataclasses

    import ilql_jax as ij

    model_dir = tmp_path / "tiny-llama"
    cfg, _ = random_hf_llama(model_dir, ij.LlamaConfig.tiny(vocab_size=300, n_positions=64), tokenizer_texts=TEXTS)
    tok = ij.hf_tokenizer(str(model_dir))
    assert tok.s_id >= cfg.vocab_size  # markup: new ids after the checkpoint's
    trunk = dataclasses.replace(ij.load_hf(str(model_dir))[0], vocab_size=tok.vocab_size)
    episodes = [ij.Episode((ij.env(r["prompt"]), ij.agent(r["response"], r["reward"]))) for r in _records()]
    arrays = ij.episodes_to_arrays(episodes, tok, 32)
    config = ij.TrainConfig(step=ij.StepConfig(model=ij.ModelConfig(trunk=trunk), optim=ij.OptimConfig(learning_rate=1e-3)),
                            batch_size=8, max_len=32, num_steps=3, log_every=1, eval_every=0, progress=False,
                            init=str(model_dir))
    state = ij.train_and_evaluate(config, str(tmp_path / "run"), arrays)
    assert int(state.step) == 3
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["train/loss"]) for m in metrics if "train/loss" in m)
    # The run started from the checkpoint: π_β's first rows are its embedding (moved by 3 small steps only).
    _, start = ij.load_hf(str(model_dir), vocab_size=tok.vocab_size)
    moved = np.abs(np.asarray(state.params["policy"]["embed_tokens"]["embedding"].value)[:cfg.vocab_size]
                   - np.asarray(start["embed_tokens"]["embedding"].value)[:cfg.vocab_size]).max()
    assert 0 < moved < 0.05
    # The saved config.json reads back as a Llama run.
    saved = ij.config_from_dict(ij.TrainConfig, json.loads((tmp_path / "run" / "config.json").read_text()))
    assert saved.step.model.trunk == trunk and isinstance(saved.step.model.trunk, ij.LlamaConfig)

    prompts = [[ij.env("ticket 1: my order is late")], [ij.env("ticket 2: my order is late")]]
    sc = ij.SamplerConfig(max_new_tokens=6)
    texts = {beta: ij.generate_text(tok, config.step.model, state.params, state.target_params, prompts,
                                    jax.random.key(0), sampler_config=sc, beta=beta) for beta in (0.0, 1.0, 8.0)}
    assert all(len(t) == 2 and all(isinstance(s, str) for s in t) for t in texts.values())
    ids = np.asarray([tok.encode("<s>ticket 1</s><a>")], np.int32)
    result = ij.sample(config.step.model, state.params, state.target_params, ids, np.ones_like(ids), jax.random.key(1),
                       beta=8.0, pad_id=tok.pad_id, stop_ids=(tok.end_a_id,), sampler_config=sc)
    assert np.all(np.asarray(result.logp) <= 0)


@pytest.mark.slow
def test_cli_trains_generates_and_exports_a_llama_directory(tmp_path):
    """`ilql-jax train --model DIR` on a Llama directory, `generate` at two β, and `export`, whose π_β
    re-imports with bit-identical logits."""
    from ilql_jax import cli
    from ilql_jax.cli.workdir import load_run

    model_dir = tmp_path / "tiny-llama"
    random_hf_llama(model_dir, llama.LlamaConfig.tiny(vocab_size=300, n_positions=64), tokenizer_texts=TEXTS)
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    workdir = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--workdir", str(workdir), "--model", str(model_dir),
                     "--bc_steps", "2", "--ilql_steps", "2", "--batch_size", "8", "--max_len", "32",
                     "--progress", "false", "--log_every", "1"]) == 0
    for beta in ("0", "4"):
        out = tmp_path / f"gen{beta}.jsonl"
        assert cli.main(["generate", "--workdir", str(workdir), "--prompt", "ticket 1: my order is late",
                         "--beta", beta, "--num", "2", "--max_new_tokens", "6", "--out", str(out)]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 2 and all(r["beta"] == float(beta) and r["logp_beta"] < 0 for r in rows)
    exported = tmp_path / "exported"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(exported)]) == 0
    run = load_run(str(workdir))
    cfg = run.config.step.model.trunk
    assert isinstance(cfg, llama.LlamaConfig) and cfg.vocab_size == run.tokenizer.vocab_size
    config2, policy2 = hf_import.load_hf(str(exported), dropout=cfg.dropout, dtype=cfg.dtype)
    assert config2 == cfg
    ids = np.asarray([run.tokenizer.encode("<s>ticket 1: my order is late</s><a>sorry")], np.int32)
    _, ours = trunk.forward(run.state.params["policy"], cfg, ids)
    _, again = trunk.forward(policy2, config2, ids)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(ours))
    assert json.loads((exported / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    from ilql_jax import export as export_lib
    model_config, value, target = export_lib.load_values(str(exported), dropout=0.0)
    assert isinstance(model_config.trunk, llama.LlamaConfig)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        (value["value"], target), (run.state.params["value"], run.state.target_params))
    assert all(jax.tree.leaves(same))


def test_export_loads_in_transformers_flax_llama_with_the_same_logits(tmp_path):
    """π_β exported as a Hugging Face Llama directory is read by `transformers`' own (Flax) Llama, whose logits
    match ours; its RoPE is θ = 10000 unscaled, so the trunk here is too (the fixtures cover the rest)."""
    from transformers import FlaxLlamaForCausalLM

    config = llama.LlamaConfig.tiny(vocab_size=150, n_positions=64)
    params = trunk.init(config, jax.random.key(3))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    params = jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    hf_import.export_hf(params, config, str(tmp_path))
    hf_model = FlaxLlamaForCausalLM.from_pretrained(str(tmp_path))
    tokens = np.asarray([[3, 17, 5, 99, 42, 7, 8, 120]], np.int32)
    theirs = np.asarray(hf_model(tokens).logits)
    _, ours = trunk.forward(params, config, jnp.asarray(tokens))
    assert _max_err(ours, theirs, np.ones(tokens.shape)) < 1e-4


def test_a_llama_run_config_round_trips_through_json_and_flags():
    """config.json and dotted flags tell the trunks apart by LlamaConfig.arch; a GPT-2 config is written as before."""
    from ilql_jax import ModelConfig, StepConfig, TrainConfig, config_from_dict, parse_config
    from ilql_jax.config import ConfigError, config_to_dict

    cfg = TrainConfig(step=StepConfig(model=ModelConfig(trunk=llama.LlamaConfig.tiny())), max_len=64)
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert data["step"]["model"]["trunk"]["arch"] == "llama"
    assert config_from_dict(TrainConfig, data) == cfg
    flagged = parse_config(TrainConfig, ["--step.model.trunk.n_kv_head", "4", "--step.model.trunk.rope_type", "llama3"],
                           defaults=cfg)
    assert flagged.step.model.trunk == llama.LlamaConfig.tiny(n_kv_head=4, rope_type="llama3")
    assert "arch" not in config_to_dict(TrainConfig())["step"]["model"]["trunk"]  # GPT-2: unchanged layout
    data["step"]["model"]["trunk"]["arch"] = "mamba"
    with pytest.raises(ConfigError, match="step.model.trunk.*unknown arch 'mamba'"):
        config_from_dict(TrainConfig, data)
    with pytest.raises(ValueError, match="n_head=4 is not a multiple of n_kv_head=3"):
        llama.LlamaConfig.tiny(n_kv_head=3)
    with pytest.raises(TypeError, match="not a trunk config"):
        trunk.implementation(object())


def test_bfloat16_compute_keeps_hidden_states_and_logits_float32():
    config = llama.LlamaConfig.tiny(vocab_size=90)
    params = trunk.init(config, jax.random.key(0))
    tokens = jnp.asarray([[5, 6, 7, 8, 9]])
    hidden, logits = trunk.forward(params, config, tokens)
    import dataclasses
    hidden16, logits16 = trunk.forward(params, dataclasses.replace(config, dtype="bfloat16"), tokens)
    assert hidden16.dtype == logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16[..., :90], logits[..., :90], atol=0.05)
    assert float(jnp.max(jnp.abs(logits16[..., :90] - logits[..., :90]))) > 0  # the compute dtype took effect
