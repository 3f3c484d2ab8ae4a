"""Partial training (models/partial.py): `num_layers_unfrozen` and LoRA on every trunk, the frozen part shared.

What trains and what is stored once, frozen weights bitwise fixed, the optimizer over the trained leaves
only, the shared bottom run once per step (FLOPs), LoRA starting as the base model and exported merged,
decoding with the shared bottom, checkpoints without frozen weights (size, bitwise resume, a changed base
refused) and the BC → ILQL recipe.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ilql_jax import checkpoint, export, loop, sampler, tokenizers, train
from ilql_jax.checkpoint import CheckpointConfig
from ilql_jax.config import ConfigError, TrainConfig, config_from_dict, config_to_dict, parse_config
from ilql_jax.models import gpt2, hf_import, ilql, llama, lora, partial
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.state import OptimConfig
from tests import _sharding_worker as worker
from tests import hf_fixtures
from tests.test_loop import MAX_LEN, TOK, WORDS, _data

VOCAB = tokenizers.wordle_tokenizer().vocab_size
BATCH = worker.global_batch()  # 8 Wordle-like rows of 32 tokens


def _trunk(arch: str, n_layer: int = 4, n_positions: int = 32, **kw):
    if arch == "gpt2":
        return gpt2.GPT2Config.tiny(vocab_size=VOCAB, n_layer=n_layer, n_embd=32, n_positions=n_positions, **kw)
    return llama.LlamaConfig.tiny(vocab_size=VOCAB, n_layer=n_layer, n_embd=32, n_head=4, n_kv_head=2, head_dim=8,
                                  intermediate_size=64, n_positions=n_positions, **kw)


def _step(arch: str, mode: str = "ilql", n_layer: int = 4, n_positions: int = 32, **model) -> train.StepConfig:
    cfg = train.StepConfig(mode=mode, model=ilql.ModelConfig(trunk=_trunk(arch, n_layer, n_positions), **model),
                           optim=OptimConfig(learning_rate=1e-2), polyak_alpha=0.1)
    return train.with_action_capacity(cfg, {"batch": BATCH["action_mask"]})


def _paths(tree) -> set:
    return {p for p, _ in nnx.to_flat_state(tree)}


def _raw(x):
    return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(_raw(x)), tree)


def _bitwise_equal(a, b) -> bool:
    a, b = _host(a), _host(b)
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


# --- config ------------------------------------------------------------------------------------------


def test_the_fields_are_checked_and_travel_through_json_and_flags():
    trunk = _trunk("gpt2")
    for bad, match in ((dict(num_layers_unfrozen=5), "num_layers_unfrozen"), (dict(num_layers_unfrozen=-2), "-1"),
                       (dict(lora_rank=-1), "lora_rank"), (dict(lora_rank=4, lora_alpha=0.0), "lora_alpha"),
                       (dict(lora_rank=4, num_layers_unfrozen=0), "no block"),
                       (dict(lora_rank=4, lora_targets=("q_proj",)), "'q_proj' names no projection")):
        with pytest.raises(ValueError, match=match):
            ilql.ModelConfig(trunk=trunk, **bad)
    # PEFT-style names: a last part selects every projection it ends, a dotted one only its own.
    spec = partial.lora_spec(ilql.ModelConfig(trunk=trunk, lora_rank=4, lora_targets=("c_proj",)))
    assert spec.targets == ("attn.c_proj", "mlp.c_proj") and spec.scale == 4.0
    spec = partial.lora_spec(ilql.ModelConfig(trunk=_trunk("llama"), lora_rank=8, num_layers_unfrozen=2,
                                              lora_targets=("q_proj", "mlp.down_proj")))
    assert spec.targets == ("self_attn.q_proj", "mlp.down_proj") and spec.first_layer == 2
    assert partial.lora_spec(ilql.ModelConfig(trunk=trunk, lora_rank=2)).targets == gpt2.LORA_PROJECTIONS

    flags = ["--step.model.trunk.n_layer", "4", "--step.model.num_layers_unfrozen", "2",
             "--step.model.lora_rank", "8", "--step.model.lora_alpha", "32", "--step.model.lora_targets", '["c_attn"]']
    config = parse_config(TrainConfig, flags)
    model = config.step.model
    assert (model.num_layers_unfrozen, model.lora_rank, model.lora_alpha, model.lora_targets) == (2, 8, 32.0,
                                                                                                   ("c_attn",))
    assert config_from_dict(TrainConfig, json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ConfigError, match="num_layers_unfrozen"):
        parse_config(TrainConfig, ["--step.model.num_layers_unfrozen", "13"])


# --- num_layers_unfrozen ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_top_two_blocks_train_and_the_frozen_rest_is_stored_once(arch):
    cfg = _step(arch, num_layers_unfrozen=2)
    impl = trunk_lib.implementation(cfg.model.trunk)
    state = train.init_state(cfg, jax.random.key(0))
    whole = _paths(trunk_lib.abstract_params(cfg.model.trunk))
    top = {p for p in whole if (p[0] == impl.BLOCKS and p[1] >= 2) or p[0] in impl.FINAL}
    assert {p[:2] for p in top if p[0] == impl.BLOCKS} == {(impl.BLOCKS, 2), (impl.BLOCKS, 3)}
    # The embeddings and blocks 0-1 once; each of the three trunks holds only its top.
    assert _paths(state.params["frozen"]) == whole - top
    for delta in (state.params["value"]["trunk"], state.params["policy"], state.target_params["trunk"]):
        assert _paths(delta) == top

    # Adam's moments exist for the trained leaves only.
    trained = train.trained_params(cfg, state.params)
    adam = state.opt_state[0]
    assert "frozen" not in trained
    for moments in (adam.mu, adam.nu):
        assert jax.tree.structure(moments) == jax.tree.structure(trained)
        assert [x.shape for x in jax.tree.leaves(moments)] == [x.shape for x in jax.tree.leaves(trained)]
    opt_size = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)  # beside scalar step counts
    assert opt_size == 2 * sum(x.size for x in jax.tree.leaves(trained))

    frozen0, value0, target0 = _host((state.params["frozen"], state.params["value"], state.target_params))
    step = train.make_train_step(cfg)
    for _ in range(3):
        state, metrics = step(state, BATCH)
    assert np.isfinite(float(metrics["loss"]))
    assert _bitwise_equal(state.params["frozen"], frozen0)
    assert _max_diff(state.params["value"]["trunk"], value0["trunk"]) > 1e-4  # the top did train
    assert _max_diff(state.target_params["trunk"], target0["trunk"]) > 1e-5   # and the target tracks it


def _step_flops(cfg: train.StepConfig) -> float:
    state = jax.eval_shape(lambda: train.init_state(cfg, jax.random.key(0)))
    compiled = jax.jit(lambda s, b: train.train_step(cfg, s, b)).lower(state, BATCH).compile()
    return float(compiled.cost_analysis()["flops"])


def _forward_flops(arch: str, n_layer: int) -> float:
    trunk = _trunk(arch, n_layer)
    params = jax.eval_shape(lambda: trunk_lib.init(trunk, jax.random.key(0)))
    run = jax.jit(lambda p, t, m: trunk_lib.residual_stream(p, trunk, t, m, stop=n_layer))
    return float(run.lower(params, BATCH["tokens"], BATCH["attention_mask"]).compile().cost_analysis()["flops"])


@pytest.mark.slow
def test_the_compiled_step_runs_the_shared_bottom_once_and_never_backward():
    """Two more frozen blocks under a top-2 step cost what one forward pass through them costs (the bottom
    runs once, for π_β, the value trunk and the target together, and is not differentiated); under full
    training the same two blocks cost about 7 forwards (3 trunks; the value trunk and π_β backward too)."""
    block = (_forward_flops("gpt2", 6) - _forward_flops("gpt2", 4)) / 2  # one block's forward pass
    top2 = (_step_flops(_step("gpt2", n_layer=6, num_layers_unfrozen=2))
            - _step_flops(_step("gpt2", n_layer=4, num_layers_unfrozen=2))) / (2 * block)
    assert 0.9 < top2 < 1.5, top2  # run three times it would be ~3; differentiated, >= 2
    full = (_step_flops(_step("gpt2", n_layer=6)) - _step_flops(_step("gpt2", n_layer=4))) / (2 * block)
    assert full > 5, full


# --- LoRA ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,extra", [("gpt2", dict(num_layers_unfrozen=2, lora_targets=("c_attn", "c_proj"))),
                                        ("llama", {})])
def test_lora_trains_only_its_adapters_and_starts_as_the_base_model(arch, extra):
    cfg = _step(arch, lora_rank=4, lora_alpha=8.0, **extra)
    spec = partial.lora_spec(cfg.model)
    state = train.init_state(cfg, jax.random.key(0))
    # Every trunk weight is frozen and stored once; each trunk holds adapters only, where the spec says.
    assert _paths(state.params["frozen"]) == _paths(trunk_lib.abstract_params(cfg.model.trunk))
    adapters = _paths(state.params["value"]["trunk"])
    expected = {(trunk_lib.implementation(cfg.model.trunk).BLOCKS, layer, *module.split("."), "lora", ab)
                for layer in range(spec.first_layer, 4) for module in spec.targets for ab in ("lora_a", "lora_b")}
    assert adapters == expected and _paths(state.params["policy"]) == _paths(state.target_params["trunk"]) == expected
    flat = dict(nnx.to_flat_state(state.params["value"]["trunk"]))
    for path, var in flat.items():
        kernel_axes = (("embed", "heads") if path[-3] in ("c_attn", "q_proj", "k_proj", "v_proj") else
                       ("heads", "embed") if path[-3] in ("o_proj",) or path[-4:-2] == ("attn", "c_proj") else
                       ("embed", "mlp") if path[-3] in ("c_fc", "gate_proj", "up_proj") else ("mlp", "embed"))
        a_axes, b_axes = (kernel_axes[0], None), (None, kernel_axes[1])
        assert var.out_sharding == (a_axes if path[-1] == "lora_a" else b_axes), path
        if path[-1] == "lora_b":
            assert not np.any(np.asarray(var[...])), path  # B starts at zero
    # Step 0 is the base model: the same losses as full training from the same weights and key.
    full = dataclasses.replace(cfg, model=ilql.ModelConfig(trunk=cfg.model.trunk))
    ours = train.make_eval_step(cfg)(state, BATCH)
    base = train.make_eval_step(full)(train.init_state(full, jax.random.key(0)), BATCH)
    for key in base:
        np.testing.assert_allclose(ours[key], base[key], rtol=2e-6, atol=1e-6, err_msg=key)

    frozen0 = _host(state.params["frozen"])
    step = train.make_train_step(cfg)
    for _ in range(3):
        state, metrics = step(state, BATCH)
    assert np.isfinite(float(metrics["loss"]))
    assert _bitwise_equal(state.params["frozen"], frozen0)
    b = [v[...] for p, v in nnx.to_flat_state(state.params["value"]["trunk"]) if p[-1] == "lora_b"]
    assert all(np.any(np.asarray(x)) for x in b)


def _random_adapters(state, key):
    """The state with every adapter (B included) drawn at random, so that merging has something to merge."""
    def draw(tree, key):
        flat = list(nnx.to_flat_state(tree))
        keys = jax.random.split(key, len(flat))
        return nnx.from_flat_state([(p, v.replace(0.1 * jax.random.normal(k, v[...].shape))) for (p, v), k in
                                    zip(flat, keys)])
    k1, k2, k3 = jax.random.split(key, 3)
    params = {**state.params, "value": {**state.params["value"], "trunk": draw(state.params["value"]["trunk"], k1)},
              "policy": draw(state.params["policy"], k2)}
    target = {**state.target_params, "trunk": draw(state.target_params["trunk"], k3)}
    return params, target


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_exported_merged_trunks_give_the_adapted_trunks_outputs(arch, tmp_path):
    cfg = _step(arch, lora_rank=4, lora_alpha=8.0)
    params, target = _random_adapters(train.init_state(cfg, jax.random.key(0)), jax.random.key(1))
    tokens, mask = BATCH["tokens"], BATCH["attention_mask"]
    real = cfg.model.trunk.vocab_size
    adapted = ilql.apply(cfg.model, params, target, tokens, mask)  # W x + (α/r)·(x A) B, unmerged
    h_value, h_target, _ = ilql.hiddens(cfg.model, params, target, tokens, mask)
    _, base_logits = trunk_lib.forward(params["frozen"], cfg.model.trunk, tokens, mask)  # LoRA: frozen = the base
    assert _max_diff(adapted.pi_logits_t[..., :real], base_logits[..., :real]) > 0.05  # the adapters matter

    # π_β as a Hugging Face model (adapters merged: W + (α/r)·A·B), read back.
    online, merged_target = ilql.materialize(cfg.model, params, target)
    assert not any(lora.is_adapter_path(p) for p in _paths(online["policy"]))
    hf_import.export_hf(online["policy"], cfg.model.trunk, str(tmp_path))
    _, loaded = hf_import.load_hf(str(tmp_path), dropout=0.0)
    _, logits = trunk_lib.forward(loaded, cfg.model.trunk, tokens, mask)
    np.testing.assert_allclose(logits[..., :real], adapted.pi_logits_t[..., :real], atol=1e-5, rtol=0)
    # The value and target trunks as export writes them (values.safetensors' tensors).
    tensors = export.value_tensors(cfg.model, params, target)
    for prefix, hidden in (("value.trunk", h_value), ("target.trunk", h_target)):
        trunk = export._trunk_from(tensors, prefix, cfg.model.trunk, "test")
        np.testing.assert_allclose(trunk_lib.forward(trunk, cfg.model.trunk, tokens, mask, with_logits=False)[0],
                                   hidden, atol=1e-5, rtol=1e-5, err_msg=prefix)


# --- decoding -------------------------------------------------------------------------------------------


def test_decoding_with_the_shared_bottom_equals_decoding_whole_trunks():
    """A LoRA top-2 state decodes (its three trunks' frozen bottom once per step, one KV cache) as its
    merged trunks do through the ordinary three-trunk decoder: same tokens, same perturbed logits."""
    cfg = _step("llama", lora_rank=4, num_layers_unfrozen=2, n_positions=64)
    params, target = _random_adapters(train.init_state(cfg, jax.random.key(0)), jax.random.key(2))
    assert sampler.shared_layers(cfg.model, params) == 2
    online, merged_target = ilql.materialize(cfg.model, params, target)
    tok = tokenizers.wordle_tokenizer()
    prompts = np.asarray(BATCH["tokens"][:4, :6])
    kw = dict(beta=4.0, stop_ids=[tok.end_a_id], pad_id=tok.pad_id,
              sampler_config=sampler.SamplerConfig(max_new_tokens=6, debug=True, prompt_buckets=(8,)))
    ours = sampler.sample(cfg.model, params, target, prompts, np.ones_like(prompts), jax.random.key(3), **kw)
    whole = sampler.sample(ilql.ModelConfig(trunk=cfg.model.trunk), online, merged_target, prompts,
                           np.ones_like(prompts), jax.random.key(3), **kw)
    np.testing.assert_array_equal(ours.tokens, whole.tokens)
    finite = np.isfinite(np.asarray(whole.logits))
    np.testing.assert_array_equal(finite, np.isfinite(np.asarray(ours.logits)))
    np.testing.assert_allclose(np.asarray(ours.logits)[finite], np.asarray(whole.logits)[finite], atol=1e-5)


# --- checkpoints -----------------------------------------------------------------------------------------


def _dir_bytes(directory) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory) for f in files)


def test_a_top_two_checkpoint_holds_what_trains_and_not_the_frozen_weights(tmp_path):
    trunk = gpt2.GPT2Config.tiny(vocab_size=VOCAB, n_layer=6, n_embd=128, n_positions=32)
    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=trunk, num_layers_unfrozen=2))
    state = train.init_state(cfg, jax.random.key(0))
    # Every float drawn at random (Adam's moments start at zero, which compresses to nothing and would hide a copy).
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    state = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                                         else x for x, k in zip(leaves, keys)])
    frozen_bytes = _bytes(state.params["frozen"])
    kept = train.trained_params(cfg, state.params), state.target_params, state.opt_state, state.step, state.rng
    kept_bytes = _bytes(jax.tree.map(_raw, kept))  # what trains, its Adam moments, the targets, step, key
    assert _bytes(jax.tree.map(_raw, state)) == kept_bytes + frozen_bytes
    assert frozen_bytes > 0.15 * kept_bytes  # so the bound below would catch a stored copy
    with checkpoint.Checkpointer(tmp_path, CheckpointConfig(async_save=False)) as ckpt:
        ckpt.save(1, state)
    stored = checkpoint.stored_arrays(tmp_path)
    assert not any(path.startswith("params.frozen") for path in stored)
    assert sum(np.prod(shape, dtype=int) * np.dtype(dtype).itemsize for shape, dtype in stored.values()) == kept_bytes
    on_disk = _dir_bytes(tmp_path / checkpoint.CHECKPOINT_DIR)
    assert on_disk <= 1.1 * kept_bytes, (on_disk, kept_bytes, frozen_bytes)
    step, extra = checkpoint.read_extra(tmp_path)
    assert step == 1 and extra["frozen"]["sha256"] == partial.fingerprint(state.params["frozen"])
    # Restoring rebuilds the frozen part through frozen_fn, and refuses another one.
    abstract = checkpoint.abstract_like(state)
    with pytest.raises(ValueError, match="restore_state"):
        checkpoint.restore(tmp_path, abstract)
    restored, _ = checkpoint.restore(tmp_path, abstract, frozen_fn=lambda: state.params["frozen"])
    assert _bitwise_equal(restored, state)
    other = jax.tree.map(lambda x: x.at[(0,) * x.ndim].add(1e-3), state.params["frozen"])
    with pytest.raises(ValueError, match="the base weights changed") as info:
        checkpoint.restore(tmp_path, abstract, frozen_fn=lambda: other)
    assert "\n" not in str(info.value)


def _hf_llama(directory, seed):
    trunk = llama.LlamaConfig.tiny(vocab_size=TOK.vocab_size, n_layer=4, n_embd=32, n_head=4, n_kv_head=2,
                                   head_dim=8, intermediate_size=64, n_positions=MAX_LEN)
    hf_fixtures.random_hf_llama(directory, trunk, seed=seed)
    return hf_import.read_config(str(directory), dropout=0.0)[1]


def _run_config(trunk, mode, num_steps, init, **model) -> TrainConfig:
    step = train.StepConfig(mode=mode, model=ilql.ModelConfig(trunk=trunk, **model),
                            optim=OptimConfig(learning_rate=1e-2))
    return TrainConfig(step=step, batch_size=4, max_len=MAX_LEN, num_steps=num_steps, log_every=2, eval_every=0,
                       eval_batches=1, progress=False, init=init,
                       checkpoint=CheckpointConfig(every_steps=2, keep=2, async_save=False))


def test_resume_of_a_top_two_run_is_bitwise_and_a_changed_base_is_refused(tmp_path):
    base = tmp_path / "base"
    trunk = _hf_llama(base, seed=0)
    run = functools.partial(_run_config, trunk, "bc", init=str(base), num_layers_unfrozen=2)
    straight = loop.train_and_evaluate(run(4), str(tmp_path / "straight"), _data())
    loop.train_and_evaluate(run(2), str(tmp_path / "resumed"), _data())
    resumed = loop.train_and_evaluate(run(4), str(tmp_path / "resumed"), _data())
    assert _bitwise_equal(resumed, straight)
    state, extra = loop.restore_state(run(4), str(tmp_path / "resumed"))
    assert int(state.step) == 4 and _bitwise_equal(state, straight)
    assert extra["frozen"]["reference"] == f"init={str(base)!r}"

    _hf_llama(base, seed=1)  # the base weights change under the run
    with pytest.raises(ValueError, match="the base weights changed") as info:
        loop.train_and_evaluate(run(6), str(tmp_path / "resumed"), _data())
    assert "\n" not in str(info.value) and str(base) in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("option", [dict(num_layers_unfrozen=2), dict(lora_rank=4, lora_alpha=8.0)])
def test_bc_then_ilql_from_it_with_partial_training(tmp_path, option):
    """init='bc:DIR' from a BC run that trained part of π_β: the ILQL run starts from BC's π_β, whole (its
    frozen base rebuilt and checked, its trained part, adapters merged), trains, and resumes."""
    trunk = _trunk("gpt2", n_positions=MAX_LEN)
    bc_dir, rl_dir = tmp_path / "bc", tmp_path / "ilql"
    bc = loop.train_and_evaluate(_run_config(trunk, "bc", 4, "scratch", **option), str(bc_dir), _data())
    bc_policy = ilql.materialize(_run_config(trunk, "bc", 4, "scratch", **option).step.model, bc.params, {})[0]
    start = loop.init_weights(f"bc:{bc_dir}", trunk)
    assert _max_diff(start, bc_policy["policy"]) < 1e-6
    rl_config = functools.partial(_run_config, trunk, "ilql", init=f"bc:{bc_dir}", **option)
    loop.train_and_evaluate(rl_config(2), str(rl_dir), _data())
    rl = loop.train_and_evaluate(rl_config(4), str(rl_dir), _data())  # resumes, rebuilding the frozen part
    assert int(rl.step) == 4
    online, _ = ilql.materialize(rl_config(4).step.model, rl.params, rl.target_params)
    if "num_layers_unfrozen" in option:  # the frozen bottom is BC's π_β's, unchanged by ILQL
        frozen = partial.frozen_part(rl_config(4).step.model, bc_policy["policy"])
        assert _bitwise_equal(rl.params["frozen"], frozen)
    assert _max_diff(online["policy"], start) > 0  # ILQL's BC term moved π_β's trained part


def test_per_utterance_ilql_refuses_partial_training():
    """Per-utterance ILQL has no shared-bottom path: the combination is refused by name, not silently trained whole."""
    from ilql_jax import train
    from ilql_jax.models import gpt2, ilql

    model = ilql.ModelConfig(trunk=gpt2.GPT2Config.tiny(dropout=0.0), num_layers_unfrozen=1)
    with pytest.raises(ValueError, match="per-utterance"):
        train.StepConfig(mode="ilql_utt", end_a_id=3, model=model)
