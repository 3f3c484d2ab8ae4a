"""Subprocess side of tests/test_checkpoint.py: a save killed mid-write, and a save on an 8-device mesh.

Run as `python -m tests._checkpoint_worker {kill,mesh} WORKDIR` from the repo
root. The mesh mode needs `XLA_FLAGS=--xla_force_host_platform_device_count=8`
in the environment (set before JAX starts, hence a subprocess).
"""

import os
import signal
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ilql_jax import checkpoint, train
from ilql_jax.models import gpt2, ilql

# ~45 MB of state (three 2-layer, 256-wide trunks plus Adam moments): its
# background write outlasts the instant between save() returning and the kill.
BIG = train.StepConfig(model=ilql.ModelConfig(
        trunk=gpt2.GPT2Config.tiny(vocab_size=35, n_layer=2, n_embd=256, n_head=4, n_positions=32)))
SMALL = train.StepConfig(model=ilql.ModelConfig(
        trunk=gpt2.GPT2Config.tiny(vocab_size=35, n_layer=1, n_embd=32, n_positions=32)))


def init_fn(config: train.StepConfig):
    return lambda: train.init_state(config, jax.random.key(0))


def synthetic_state(config: train.StepConfig, seed: int = 0) -> train.ILQLState:
    """A state shaped like `init_fn(config)()`, filled from NumPy's seeded RNG.

    Eager `init_state` compiles every initialiser op separately (seconds on a
    small CPU); host-made values cost no compilation and are the same in
    every process.
    """
    rng = np.random.default_rng(seed)

    def fill(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        return jax.device_put(rng.standard_normal(x.shape).astype(x.dtype))

    return jax.tree.map(fill, jax.eval_shape(init_fn(config)))


def bitwise_equal(a, b) -> bool:
    """Same tree structure and the same bytes in every leaf (PRNG keys compared by key data)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    raw = lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
    return all(raw(x).dtype == raw(y).dtype and raw(x).shape == raw(y).shape and raw(x).tobytes() == raw(y).tobytes()
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def kill_mid_save(workdir: str) -> None:
    """Commits step 1, starts an async save of step 2 and SIGKILLs this process at once."""
    state = synthetic_state(BIG)
    ckpt = checkpoint.Checkpointer(workdir, checkpoint.CheckpointConfig(async_save=True))
    ckpt.save(1, state, {"step": 1})
    ckpt.wait()
    ckpt.save(2, state.replace(step=state.step + 2), {"step": 2})
    # Self-kill: no scheduling gap between the save starting and the kill landing.
    os.kill(os.getpid(), signal.SIGKILL)


def _mesh(shape):
    return jax.make_mesh(shape, ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def save_on_mesh(workdir: str) -> None:
    """Saves a state sharded on a (data=2, fsdp=4) mesh; restores it onto (data=8, fsdp=1)."""
    state = synthetic_state(SMALL)
    mesh = _mesh((2, 4))

    def fsdp(x):
        if x.ndim >= 2 and x.shape[1] % 4 == 0:
            return NamedSharding(mesh, P(None, "fsdp"))
        if x.ndim == 1 and x.shape[0] % 4 == 0:
            return NamedSharding(mesh, P("fsdp"))
        return NamedSharding(mesh, P())

    sharded = jax.device_put(state, jax.tree.map(fsdp, state))
    kernel = sharded.params["value"]["trunk"]["h"][0]["attn"]["c_attn"]["kernel"][...]
    assert kernel.addressable_shards[0].data.shape == (32, 24), "the test mesh did not shard the params"
    with checkpoint.Checkpointer(workdir, checkpoint.CheckpointConfig(async_save=False)) as ckpt:
        ckpt.save(1, sharded, {"mesh": [2, 4]})

    mesh8 = _mesh((8, 1))
    target = jax.tree.map(lambda x: NamedSharding(mesh8, P("data") if x.ndim and x.shape[0] % 8 == 0 else P()),
                          state)
    restored, extra = checkpoint.restore(workdir, checkpoint.abstract_like(init_fn(SMALL), target))
    assert extra == {"mesh": [2, 4]}, extra
    assert bitwise_equal(restored, state), "values changed across meshes"
    assert all(r.sharding == t for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)))
    print("MESH OK", len(jax.devices()), flush=True)


if __name__ == "__main__":
    mode, workdir = sys.argv[1:]
    {"kill": kill_mid_save, "mesh": save_on_mesh}[mode](workdir)
