"""Subprocess half of tests/test_sharding.py.

JAX fixes its device count at first use, so the multi-device checks run here,
in a fresh interpreter whose environment (set by the test) asks for fake CPU
devices. Two modes:

  python tests/_sharding_worker.py mesh8 OUT.npz [ARCH]
      8 devices: one ILQL step on a (data=2, fsdp=4) FSDP mesh; writes the
      result and what the shardings look like (the test compares it with the
      same step on one device). ARCH: "gpt2" (default) or "llama" (the trunk),
      or "gpt2-top2" / "llama-lora" (partial training: a shared frozen bottom;
      top-2 blocks, or LoRA adapters in the top block).
  python tests/_sharding_worker.py born8 OUT.json HF_DIR WORKDIR
      8 devices, FSDP over all of them: the compiled init (random, from the
      Hugging Face GPT-2 in HF_DIR, and from a BC checkpoint it saves in
      WORKDIR) and what it places where; writes a JSON report for the test.
  python tests/_sharding_worker.py layout8 OUT.json
      8 devices, FSDP: per-device temporary bytes of the compiled train step
      traced under `sharding.activation_layout` and without it.
  JAX_COORDINATOR_ADDRESS=... JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i python tests/_sharding_worker.py multiprocess OUT.npz
      one of two processes joined by jax.distributed: 5 sharded steps, each
      process feeding its half of the global batch; process 0 writes the
      gathered final state and the metrics.

The test imports `step_config` and `global_batch` to build its reference, so
importing this module must not touch JAX devices.
"""

from __future__ import annotations

import sys

import numpy as np

from ilql_jax import tokenizers
from ilql_jax.data import episodes

STEPS = 5
WORDS = ("crane", "slate", "adieu", "house", "pious", "mound", "quiet", "zebra")


PARTIAL = {"top2": dict(n_layer=3, model=dict(num_layers_unfrozen=2)),
           "lora": dict(n_layer=2, model=dict(lora_rank=4, num_layers_unfrozen=1))}


def step_config(arch: str = "gpt2"):
    from ilql_jax import train
    from ilql_jax.models import gpt2, ilql, llama
    from ilql_jax.state import OptimConfig

    vocab = tokenizers.wordle_tokenizer().vocab_size
    arch, _, option = arch.partition("-")
    n_layer, model = PARTIAL[option]["n_layer"] if option else 1, PARTIAL[option]["model"] if option else {}
    if arch == "llama":  # GQA, q/k/v biases, untied head: every kind of Llama parameter is sharded
        trunk = llama.LlamaConfig.tiny(vocab_size=vocab, n_layer=n_layer, n_embd=32, n_head=4, n_kv_head=2,
                                       head_dim=8, intermediate_size=64, n_positions=32, qkv_bias=True,
                                       hf_model_type="qwen2")
    else:
        trunk = gpt2.GPT2Config.tiny(vocab_size=vocab, n_layer=n_layer, n_embd=32, n_positions=32)
    # The key bias of attention has an analytically zero gradient (softmax is
    # shift-invariant), so with the default eps=1e-8 Adam turns float noise
    # there into steps of about ±lr whose sign depends on summation order. A
    # larger eps keeps the comparison about sharding, not about that noise.
    return train.StepConfig(model=ilql.ModelConfig(trunk=trunk, **model),
                            optim=OptimConfig(learning_rate=1e-3, eps=1e-5), polyak_alpha=0.1)


def global_batch() -> dict[str, np.ndarray]:
    """8 distinct Wordle-like episodes (different guesses, rewards and terminal flags)."""
    eps = [episodes.Episode((episodes.agent(w, -1.0), episodes.env("<b><y><b><b><g>"),
                             episodes.agent(WORDS[(i + 3) % len(WORDS)], float(-(i % 3)))), terminal=i % 2 == 0)
           for i, w in enumerate(WORDS)]
    return episodes.episodes_to_arrays(eps, tokenizers.wordle_tokenizer(), 32)


def flat(tree, prefix: str) -> dict[str, np.ndarray]:
    """Leaves of `tree` as numpy arrays keyed by `prefix` + their tree path."""
    import jax

    return {prefix + jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def mesh8(out: str, arch: str = "gpt2") -> None:
    import jax

    from ilql_jax import sharding, train

    assert jax.device_count() == 8, jax.devices()
    cfg = step_config(arch)
    state = train.init_state(cfg, jax.random.key(0))
    mesh_cfg = sharding.MeshConfig(data=2, fsdp=4, fsdp_params=True)
    mesh = sharding.make_mesh(mesh_cfg)
    shardings = sharding.state_shardings(train.abstract_state(cfg), mesh, sharding.logical_rules(mesh_cfg))
    sharded = sharding.shard_state(state, shardings)
    step = train.make_sharded_train_step(cfg, mesh, shardings)
    new, metrics = step(sharded, sharding.place_batch(global_batch(), mesh))
    # shard_state copied: the donating step must not have deleted the caller's state.
    source_alive = not any(x.is_deleted() for x in jax.tree.leaves(state))

    # Same state built directly on the mesh, never whole on one device.
    init_direct = train.init_sharded_state(cfg, jax.random.key(0), shardings)

    def layout(x):  # spec, global shape, shape of one shard
        return np.array([str(x.sharding.spec), str(x.shape), str(x.addressable_shards[0].data.shape)])

    # The embedding and the first MLP matrix of each trunk (their names differ by architecture).
    emb, blocks, fc = (("wte", "h", ("mlp", "c_fc")) if arch.startswith("gpt2") else
                       ("embed_tokens", "layers", ("mlp", "gate_proj")))
    mlp = lambda tree, i=0: tree[blocks][i][fc[0]][fc[1]]["kernel"][...]
    if "-" not in arch:
        leaves = {"wte": new.params["value"]["trunk"][emb]["embedding"][...],
                  "q1_out": new.params["value"]["q1"]["out"]["kernel"][...],
                  "c_fc": mlp(new.params["value"]["trunk"]),
                  "target_c_fc": mlp(new.target_params["trunk"]),
                  "mu_c_fc": mlp(new.opt_state[0].mu["value"]["trunk"]),
                  "v_out_bias": new.params["value"]["v"]["out"]["bias"][...],
                  "step": new.step}
    else:  # partial training: the shared frozen part, and a trunk's top block or its adapters there
        top = cfg.model.trunk.n_layer - 1
        frozen, trunks = new.params["frozen"], {"": new.params["value"]["trunk"], "target_": new.target_params["trunk"],
                                                "mu_": new.opt_state[0].mu["value"]["trunk"]}
        leaves = {"frozen_wte": frozen[emb]["embedding"][...], "frozen_c_fc": mlp(frozen), "step": new.step}
        for prefix, tree in trunks.items():
            if arch.endswith("lora"):
                adapter = tree[blocks][top][fc[0]][fc[1]]["lora"]
                leaves.update({prefix + "lora_a": adapter["lora_a"][...], prefix + "lora_b": adapter["lora_b"][...]})
            else:
                leaves[prefix + "c_fc"] = mlp(tree, top)
    if arch == "llama":
        leaves["lm_head"] = new.params["policy"]["lm_head"]["kernel"][...]
        leaves["k_bias"] = new.params["value"]["trunk"]["layers"][0]["self_attn"]["k_proj"]["bias"][...]
    np.savez(out, **flat((new.params, new.target_params, metrics), "sharded"),
             **flat(init_direct.params, "init_direct"),
             mesh_shape=np.array(list(mesh.shape.values())),
             **{f"layout/{k}": layout(v) for k, v in leaves.items()},
             source_alive=np.array(source_alive))


def _layout(tree, shardings=None) -> list:
    """[path, global shape, spec, one device's shard shape, bytes] per leaf (of `shardings`, or the arrays')."""
    import jax

    shardings = jax.tree.map(lambda x: x.sharding, tree) if shardings is None else shardings
    rows = []
    for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)):
        rows.append([jax.tree_util.keystr(path), list(x.shape), str(s.spec), list(s.shard_shape(x.shape)),
                     int(x.size * x.dtype.itemsize), bool(s.is_fully_replicated)])
    return rows


def _max_diff_trees(a, b) -> float:
    import jax

    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def born8(out: str, hf_dir: str, workdir: str) -> None:
    import json

    import jax

    from ilql_jax import checkpoint, loop, sharding, train
    from ilql_jax.models import hf_import, ilql

    assert jax.device_count() == 8, jax.devices()
    trunk = hf_import.read_config(hf_dir, dropout=0.0)[1]
    mesh_cfg = sharding.MeshConfig(data=1, fsdp=8, fsdp_params=True)
    mesh, rules = sharding.make_mesh(mesh_cfg), sharding.logical_rules(mesh_cfg)
    report = {}
    for mode in ("ilql", "bc"):
        cfg = train.StepConfig(mode=mode, model=ilql.ModelConfig(trunk=trunk))
        abstract = train.abstract_state(cfg)
        shardings = sharding.state_shardings(abstract, mesh, rules)
        init = train.make_init(cfg, shardings)
        key = jax.random.key(0)
        compiled = init.lower(key).compile()
        report[f"{mode}/random"] = {"output_bytes": compiled.memory_analysis().output_size_in_bytes,
                                    "leaves": _layout(abstract, compiled.output_shardings)}
        state = init(key)
        report[f"{mode}/random"]["placed"] = _layout(state)
        if mode == "bc":
            # A BC run's checkpoint, for `init="bc:DIR"`.
            with checkpoint.Checkpointer(workdir, checkpoint.CheckpointConfig(async_save=False)) as ckpt:
                ckpt.save(1, state)
            bc_policy = state.params["policy"]
            continue
        trunk_shardings = train.trunk_shardings(shardings)
        weights = loop.init_weights(hf_dir, trunk, trunk_shardings)  # as the loop imports `init=HF_DIR`
        compiled = init.lower(key, weights).compile()
        state = init(key, weights)
        host = hf_import.load_hf_gpt2(hf_dir, dropout=0.0)[1]  # the unsharded import, as numpy
        report["ilql/hf"] = {
            "output_bytes": compiled.memory_analysis().output_size_in_bytes,
            "leaves": _layout(abstract, compiled.output_shardings), "placed": _layout(state),
            "imported": _layout(weights), "imported_vs_host": _max_diff_trees(weights, host),
            "trunks_vs_host": max(_max_diff_trees(t, host) for t in (
                state.params["value"]["trunk"], state.params["policy"], state.target_params["trunk"]))}
    restored = loop.init_weights(f"bc:{workdir}", trunk, trunk_shardings)
    report["bc_restore"] = {"placed": _layout(restored), "vs_saved": _max_diff_trees(restored, bc_policy)}
    with open(out, "w") as f:
        json.dump(report, f)


def layout8(out: str) -> None:
    import contextlib
    import json

    import jax

    from ilql_jax import sharding, train
    from ilql_jax.data.batch import DTYPES, Batch
    from ilql_jax.models import gpt2, ilql

    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=gpt2.GPT2Config.tiny(vocab_size=1000)))
    mesh_cfg = sharding.MeshConfig(data=1, fsdp=8, fsdp_params=True)
    mesh = sharding.make_mesh(mesh_cfg)
    abstract = train.abstract_state(cfg)
    shardings = sharding.state_shardings(abstract, mesh, sharding.logical_rules(mesh_cfg))
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    rows = sharding.batch_sharding(mesh)
    batch = Batch(*(jax.ShapeDtypeStruct((16, 64), dtype, sharding=rows) for dtype in DTYPES))
    temp = {}
    for name, layout in (("rows", sharding.activation_layout), ("free", lambda mesh: contextlib.nullcontext())):
        sharding.activation_layout, original = layout, sharding.activation_layout
        try:
            compiled = train.make_sharded_train_step(cfg, mesh, shardings).lower(state, batch).compile()
        finally:
            sharding.activation_layout = original
        temp[name] = compiled.memory_analysis().temp_size_in_bytes
    with open(out, "w") as f:
        json.dump(temp, f)


def multiprocess(out: str) -> None:
    import jax

    from ilql_jax import distributed, sharding, train

    # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID come from the test.
    assert distributed.maybe_initialize_distributed()
    from jax.experimental import multihost_utils

    process_id = jax.process_index()
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
    cfg = step_config()
    mesh_cfg = sharding.MeshConfig(data=2, fsdp=2, fsdp_params=True)
    mesh = sharding.make_mesh(mesh_cfg)
    shardings = sharding.state_shardings(train.abstract_state(cfg), mesh, sharding.logical_rules(mesh_cfg))
    # Every process builds the same host state from the seed and places it.
    state = sharding.shard_state(train.init_state(cfg, jax.random.key(0)), shardings)
    step = train.make_sharded_train_step(cfg, mesh, shardings)

    batch = global_batch()
    rows = len(batch["tokens"]) // jax.process_count()
    local = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}  # as BatchIterator slices
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, sharding.place_batch(local, mesh))
        losses.append(float(metrics["loss"]))  # metrics are replicated: readable on every process

    gathered = multihost_utils.process_allgather((state.params, state.target_params), tiled=True)
    if process_id == 0:
        np.savez(out, **flat(gathered, "state"), losses=np.array(losses), step=np.asarray(int(state.step)))
    multihost_utils.sync_global_devices("done")  # neither process exits while the other still needs it


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "mesh8":
        mesh8(out, *sys.argv[3:4])
    elif mode == "layout8":
        layout8(out)
    elif mode == "born8":
        born8(out, *sys.argv[3:5])
    elif mode == "multiprocess":
        multiprocess(out)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
