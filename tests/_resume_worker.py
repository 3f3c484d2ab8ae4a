"""Subprocess side of tests/test_resume.py: runs of the loop that end in a signal or on another mesh.

Run as `python -m tests._resume_worker MODE WORKDIR` from the repo root:

  preempt  trains toward `STEPS` steps and sends itself SIGTERM from `on_step_end`
           at step `STOP`; the loop saves and raises Preempted, caught here and
           reported on stdout (the worker then exits 0 so the test reads its report;
           the command lines exit 143, tests/test_cli.py).
  kill     saves every step (asynchronously) and SIGKILLs itself while the save
           of step `KILL` (or a later one, if that one already committed) is
           still being written.
  mesh     needs XLA_FLAGS=--xla_force_host_platform_device_count=8: trains
           `MESH_STEPS` steps on a (data=2, fsdp=4) FSDP mesh, resumes that
           checkpoint on (data=8) and trains as many more; writes the final
           state to WORKDIR/final.npz.

The configs are test_loop's, so the programs compiled there are reused.
"""

import dataclasses
import os
import signal
import sys

import jax
import numpy as np

from ilql_jax.checkpoint import CheckpointConfig
from ilql_jax.loop import Preempted, train_and_evaluate
from ilql_jax.sharding import MeshConfig
from tests.test_loop import WORDS, _config, _data

STEPS, STOP, KILL = 6, 3, 4
MESH_STEPS = 2


def config(**overrides):
    """The run the tests straighten and interrupt: logs and evaluates every 2 steps.

    BC, since it compiles about 3x faster than ILQL on a CPU; the loop treats
    both states alike, and tests/test_checkpoint.py round-trips ILQL states.
    """
    base = dict(num_steps=STEPS, log_every=2, eval_every=2, checkpoint=CheckpointConfig(every_steps=2, keep=2))
    return _config("bc", **{**base, **overrides})


def data():
    return _data(), _data(WORDS[::-1])


def flat(tree) -> dict[str, np.ndarray]:
    """Leaves by tree path, PRNG keys as their raw data."""
    raw = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return {jax.tree_util.keystr(p): np.asarray(raw(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def preempt(workdir: str) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def stop_at(step, state):
        if step == STOP:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        train_and_evaluate(config(), workdir, *data(), on_step_end=stop_at)
    except Preempted as e:
        print(f"PREEMPTED step={e.step}: {e}", flush=True)
        print("HANDLERS RESTORED" if signal.getsignal(signal.SIGTERM) is previous else "HANDLERS LEAKED", flush=True)
        return
    raise SystemExit("the run finished without being preempted")


def kill(workdir: str) -> None:
    def kill_mid_save(step, state):
        # The save of `step` has just started in the background: kill before it commits.
        if step >= KILL and not os.path.exists(os.path.join(workdir, "checkpoints", str(step))):
            print(f"KILLING at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    every_step = config(checkpoint=CheckpointConfig(every_steps=1, keep=3, async_save=True))
    train_and_evaluate(every_step, workdir, *data(), on_step_end=kill_mid_save)
    raise SystemExit("every save committed before the kill could land")


def mesh(workdir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    fsdp = config(batch_size=8, num_steps=MESH_STEPS, eval_every=0, mesh=MeshConfig(data=2, fsdp=4, fsdp_params=True))
    state = train_and_evaluate(fsdp, workdir, _data())
    kernel = state.params["policy"]["h"][0]["mlp"]["c_fc"]["kernel"][...]
    assert kernel.addressable_shards[0].data.shape == (8, 128), "the first run did not shard the parameters"
    saved = flat(state)

    # Resume on a data-parallel mesh: with no steps left, the loop returns the restored state.
    data8 = dataclasses.replace(fsdp, mesh=MeshConfig(data=8))
    restored = train_and_evaluate(data8, workdir, _data())
    assert all(a.tobytes() == b.tobytes() for a, b in zip(saved.values(), flat(restored).values())), "values changed"
    kernel = restored.params["policy"]["h"][0]["mlp"]["c_fc"]["kernel"][...]
    assert dict(kernel.sharding.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert kernel.addressable_shards[0].data.shape == (32, 128), "not replicated on the new mesh"

    final = train_and_evaluate(dataclasses.replace(data8, num_steps=2 * MESH_STEPS), workdir, _data())
    assert int(final.step) == 2 * MESH_STEPS
    np.savez(os.path.join(workdir, "final.npz"), **flat(final))
    print("MESH OK", flush=True)


if __name__ == "__main__":
    mode, workdir = sys.argv[1:]
    {"preempt": preempt, "kill": kill, "mesh": mesh}[mode](workdir)
