"""Subprocess half of tests/test_sharding.py.

JAX fixes its device count at first use, so the multi-device checks run here,
in a fresh interpreter whose environment (set by the test) asks for fake CPU
devices. Two modes:

  python tests/_sharding_worker.py mesh8 OUT.npz
      8 devices: one ILQL step on a (data=2, fsdp=4) FSDP mesh; writes the
      result and what the shardings look like (the test compares it with the
      same step on one device).
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


def step_config():
    from ilql_jax import train
    from ilql_jax.models import gpt2, ilql
    from ilql_jax.state import OptimConfig

    trunk = gpt2.GPT2Config.tiny(vocab_size=tokenizers.wordle_tokenizer().vocab_size, n_layer=1, n_embd=32,
                                 n_positions=32)
    # The key bias of attention has an analytically zero gradient (softmax is
    # shift-invariant), so with the default eps=1e-8 Adam turns float noise
    # there into steps of about ±lr whose sign depends on summation order. A
    # larger eps keeps the comparison about sharding, not about that noise.
    return train.StepConfig(model=ilql.ModelConfig(trunk=trunk), optim=OptimConfig(learning_rate=1e-3, eps=1e-5),
                            polyak_alpha=0.1)


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


def mesh8(out: str) -> None:
    import jax

    from ilql_jax import sharding, train

    assert jax.device_count() == 8, jax.devices()
    cfg = step_config()
    state = train.init_state(cfg, jax.random.key(0))
    mesh_cfg = sharding.MeshConfig(data=2, fsdp=4, fsdp_params=True)
    mesh = sharding.make_mesh(mesh_cfg)
    shardings = sharding.state_shardings(sharding.abstract_state(cfg), mesh, sharding.logical_rules(mesh_cfg))
    sharded = sharding.shard_state(state, shardings)
    step = sharding.make_sharded_train_step(cfg, mesh, shardings)
    new, metrics = step(sharded, sharding.place_batch(global_batch(), mesh))
    # shard_state copied: the donating step must not have deleted the caller's state.
    source_alive = not any(x.is_deleted() for x in jax.tree.leaves(state))

    # Same state built directly on the mesh, never whole on one device.
    init_direct = sharding.init_sharded_state(cfg, jax.random.key(0), shardings)

    def layout(x):  # spec, global shape, shape of one shard
        return np.array([str(x.sharding.spec), str(x.shape), str(x.addressable_shards[0].data.shape)])

    leaves = {"wte": new.params["value"]["trunk"]["wte"]["embedding"][...],
              "q1_out": new.params["value"]["q1"]["out"]["kernel"][...],
              "c_fc": new.params["value"]["trunk"]["h"][0]["mlp"]["c_fc"]["kernel"][...],
              "target_c_fc": new.target_params["trunk"]["h"][0]["mlp"]["c_fc"]["kernel"][...],
              "mu_c_fc": new.opt_state[0].mu["value"]["trunk"]["h"][0]["mlp"]["c_fc"]["kernel"][...],
              "v_out_bias": new.params["value"]["v"]["out"]["bias"][...],
              "step": new.step}
    np.savez(out, **flat((new.params, new.target_params, metrics), "sharded"),
             **flat(init_direct.params, "init_direct"),
             mesh_shape=np.array(list(mesh.shape.values())),
             **{f"layout/{k}": layout(v) for k, v in leaves.items()},
             source_alive=np.array(source_alive))


def multiprocess(out: str) -> None:
    import jax

    from ilql_jax import sharding, train

    # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID come from the test.
    assert sharding.maybe_initialize_distributed()
    from jax.experimental import multihost_utils

    process_id = jax.process_index()
    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
    cfg = step_config()
    mesh_cfg = sharding.MeshConfig(data=2, fsdp=2, fsdp_params=True)
    mesh = sharding.make_mesh(mesh_cfg)
    shardings = sharding.state_shardings(sharding.abstract_state(cfg), mesh, sharding.logical_rules(mesh_cfg))
    # Every process builds the same host state from the seed and places it.
    state = sharding.shard_state(train.init_state(cfg, jax.random.key(0)), shardings)
    step = sharding.make_sharded_train_step(cfg, mesh, shardings)

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
        mesh8(out)
    elif mode == "multiprocess":
        multiprocess(out)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
