"""Checkpoints: bitwise round trips, resumed training, retention, killed saves, mesh changes, load-or-init."""

import gc
import logging
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ilql_jax import checkpoint, tokenizers, train
from ilql_jax.data import batches, episodes
from ilql_jax.models import gpt2, ilql
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.state import OptimConfig
from tests import _checkpoint_worker as worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = tokenizers.wordle_tokenizer()
TRUNK = gpt2.GPT2Config.tiny(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_positions=32)
CFG = train.StepConfig(model=ilql.ModelConfig(trunk=TRUNK), optim=OptimConfig(learning_rate=1e-3))
# Jitted: eager init compiles each initialiser op on its own, which is slow on a small CPU.
INIT = jax.jit(lambda: train.init_state(CFG, jax.random.key(0)))
bitwise_equal = worker.bitwise_equal


def _arrays():
    words = ["crane", "slate", "moist", "pride", "laugh", "ghost"]
    eps = [episodes.Episode((episodes.agent(w, -1.0), episodes.env("<b><y><b><b><g>"),
                             episodes.agent(words[(i + 1) % len(words)], 0.0), episodes.env("<g>" * 5)))
           for i, w in enumerate(words)]
    return episodes.episodes_to_arrays(eps, TOK, 32)


def _iterator():
    return batches.BatchIterator(_arrays(), batch_size=2, seed=3)


def _run(step_fn, state, it, n):
    out = []
    for _ in range(n):
        state, metrics = step_fn(state, {k: jnp.asarray(v) for k, v in next(it).items()})
        out.append(metrics)
    return state, out


@pytest.fixture(scope="module")
def step_fn():
    return train.make_train_step(CFG, donate=False)


@pytest.fixture(scope="module", autouse=True)
def workers(tmp_path_factory):
    """Starts the subprocess workers at once, so they run while this process compiles.

    Yields {mode: (workdir, Popen, log)}; a test collects its worker with `_finish`.
    """
    procs = {}
    for mode, env in (("kill", {}), ("mesh", {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})):
        base = tmp_path_factory.mktemp(mode)
        log = base / "log.txt"
        with open(log, "w") as out:  # a file, not a pipe: nothing blocks however much the worker prints
            proc = subprocess.Popen([sys.executable, "-m", "tests._checkpoint_worker", mode, str(base / "run")],
                                    cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, stdout=out,
                                    stderr=subprocess.STDOUT)
        procs[mode] = base / "run", proc, log
    yield procs
    for _, proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(worker_entry):
    """Waits for a worker; returns (workdir, return code, its output)."""
    workdir, proc, log = worker_entry
    proc.wait(timeout=300)
    return workdir, proc.returncode, log.read_text()


def test_round_trip_is_bitwise_and_training_continues_identically(tmp_path, step_fn):
    it = _iterator()
    state, _ = _run(step_fn, INIT(), it, 2)
    extra = {"data": it.state(), "config": {"mode": CFG.mode, "lr": 1e-3, "nested": [1, 2.5, None, "x"]}}
    with checkpoint.Checkpointer(tmp_path, checkpoint.CheckpointConfig()) as ckpt:
        assert ckpt.save(2, state, extra)
    restored, restored_extra = checkpoint.restore(tmp_path, checkpoint.abstract_like(INIT))

    assert restored_extra == extra
    assert bitwise_equal(restored, state)  # all leaves: params, targets, Adam moments, counts, step, rng
    fresh = INIT()
    assert jax.tree.structure(restored) == jax.tree.structure(fresh)  # node types and Variable metadata
    assert all(type(r) is type(f) for r, f in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh)))
    assert isinstance(restored.params["value"]["trunk"], nnx.State)
    assert restored.rng.dtype == fresh.rng.dtype and int(restored.step) == 2

    it2 = _iterator()
    it2.restore(restored_extra["data"])
    a, metrics_a = _run(step_fn, state, it, 2)
    b, metrics_b = _run(step_fn, restored, it2, 2)
    assert bitwise_equal(a, b)
    assert bitwise_equal(metrics_a, metrics_b)


def test_keep_latest_and_async_save_survives_donation(tmp_path):
    bump = jax.jit(lambda s: s.replace(step=s.step + 1, params=jax.tree.map(lambda p: p * 2, s.params)),
                   donate_argnums=0)
    ckpt = checkpoint.Checkpointer(tmp_path, checkpoint.CheckpointConfig(every_steps=2, keep=2, async_save=True))
    assert [s for s in range(7) if ckpt.should_save(s)] == [2, 4, 6]
    state, expected = INIT(), {}
    for step in range(1, 6):
        expected[step] = jax.tree.map(jnp.copy, state)
        assert ckpt.save(step, state, {"step": step})
        state = bump(state)  # donates the buffers just handed to the async save
    ckpt.wait()
    assert ckpt.all_steps() == [4, 5] and ckpt.latest_step() == 5
    assert sorted(p.name for p in ckpt.directory.iterdir()) == ["4", "5"]
    assert not ckpt.save(5, state, {})  # not newer than the latest: skipped
    abstract = checkpoint.abstract_like(INIT)
    for step in (4, 5):
        restored, extra = ckpt.restore(abstract, step=step)
        assert extra == {"step": step} and bitwise_equal(restored, expected[step])
    ckpt.close()
    assert checkpoint.restore(tmp_path, abstract)[1] == {"step": 5}


def test_sigkill_during_save_falls_back_to_previous_checkpoint(workers, caplog):
    tmp_path, returncode, output = _finish(workers["kill"])
    assert returncode == -signal.SIGKILL, output[-3000:]
    ckpt_dir = tmp_path / "checkpoints"
    left = sorted(p.name for p in ckpt_dir.iterdir())
    # What a killed save leaves: the committed step and an uncommitted temporary directory.
    assert left == ["1", "2.orbax-checkpoint-tmp"], left

    init_fn = worker.init_fn(worker.BIG)
    with caplog.at_level(logging.WARNING, logger="ilql_jax.checkpoint"):
        state, extra, restored = checkpoint.restore_or_init(tmp_path, init_fn)
    assert restored and extra == {"step": 1}
    assert bitwise_equal(state, worker.synthetic_state(worker.BIG))
    assert any("step 2" in r.getMessage() for r in caplog.records), caplog.text

    # Saving step 2 again replaces the leftover.
    with checkpoint.Checkpointer(tmp_path, checkpoint.CheckpointConfig(async_save=False)) as ckpt:
        assert ckpt.save(2, state, {"step": 2})
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["1", "2"]


# Orbax abandons the other reads of a failed restore: never-awaited coroutines and callbacks into a closed
# event loop ("Exception ignored in ..."); gc.collect() below keeps that noise inside this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    state = INIT()
    with checkpoint.Checkpointer(tmp_path, checkpoint.CheckpointConfig(async_save=False)) as ckpt:
        ckpt.save(1, state, {"step": 1})
        ckpt.save(2, state.replace(step=state.step + 2), {"step": 2})
    # Truncate step 2's array data, as a crash on a filesystem without atomic renames might.
    for path in (tmp_path / "checkpoints" / "2" / "state" / "ocdbt.process_0" / "d").iterdir():
        path.write_bytes(path.read_bytes()[:10])
    with caplog.at_level(logging.WARNING, logger="ilql_jax.checkpoint"):
        restored, extra = checkpoint.restore(tmp_path, checkpoint.abstract_like(INIT))
    assert extra == {"step": 1} and bitwise_equal(restored, state)
    assert any("step 2" in r.getMessage() for r in caplog.records), caplog.text
    with pytest.raises(Exception):
        checkpoint.restore(tmp_path, checkpoint.abstract_like(INIT), step=2)  # an explicit step does not fall back
    gc.collect()


def test_checkpoint_from_one_mesh_restores_on_another(workers):
    tmp_path, returncode, output = _finish(workers["mesh"])
    assert returncode == 0 and "MESH OK 8" in output, output[-3000:]
    # Saved on (data=2, fsdp=4) with 8 devices; here: one device.
    abstract = checkpoint.abstract_like(worker.init_fn(worker.SMALL))
    restored, extra = checkpoint.restore(tmp_path, abstract)
    assert extra == {"mesh": [2, 4]}
    assert bitwise_equal(restored, worker.synthetic_state(worker.SMALL))
    assert all(leaf.sharding == a.sharding for leaf, a in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)))


def test_restore_or_init(tmp_path):
    calls = []  # True for a trace (jax.eval_shape, building the restore target), False for a real call

    def init_fn():
        state = INIT()
        calls.append(isinstance(state.step, jax.core.Tracer))
        return state

    state, extra, restored = checkpoint.restore_or_init(tmp_path, init_fn)
    assert not restored and extra == {} and calls.count(False) == 1
    assert not (tmp_path / "checkpoints").exists()  # looking creates nothing
    saved = state.replace(step=state.step + 7)
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, saved, {"data": {"step": 7, "seed": 3}})
    state, extra, restored = checkpoint.restore_or_init(tmp_path, init_fn)
    assert restored and extra == {"data": {"step": 7, "seed": 3}} and calls.count(False) == 1
    assert bitwise_equal(state, saved)
    state, _, restored = checkpoint.restore_or_init(tmp_path, init_fn, resume=False)
    assert not restored and calls.count(False) == 2


def test_params_export_and_bc_policy_into_ilql(tmp_path):
    # Host-made states: what matters here is their layout, and they cost no compilation.
    bc_state = worker.synthetic_state(train.StepConfig(mode="bc", model=ilql.ModelConfig(trunk=TRUNK)), seed=5)
    with checkpoint.Checkpointer(tmp_path / "bc") as ckpt:
        ckpt.save(10, bc_state, {})
    abstract_policy = trunk_lib.abstract_params(TRUNK)
    policy = checkpoint.load_policy_from_checkpoint(tmp_path / "bc", abstract_policy)
    assert bitwise_equal(policy, bc_state.params["policy"])

    # It is a valid π_β start for ILQL (traced only: init_state merely copies it).
    started = jax.eval_shape(lambda p: train.init_state(CFG, jax.random.key(0), policy=p), policy)
    assert jax.tree.structure(started.params["policy"]) == jax.tree.structure(policy)
    shared_state = worker.synthetic_state(train.StepConfig(model=ilql.ModelConfig(trunk=TRUNK, shared_policy=True)),
                                          seed=1)
    with checkpoint.Checkpointer(tmp_path / "shared") as ckpt:
        ckpt.save(1, shared_state, {})
    assert bitwise_equal(checkpoint.load_policy_from_checkpoint(tmp_path / "shared", abstract_policy),
                         shared_state.params["value"]["trunk"])

    params = worker.synthetic_state(CFG, seed=2).params
    checkpoint.export_params(tmp_path / "export", shared_state.params)
    checkpoint.export_params(tmp_path / "export", params)  # re-exporting replaces
    loaded = checkpoint.load_params(tmp_path / "export", jax.eval_shape(lambda: params))
    assert bitwise_equal(loaded, params)


def test_config_validation():
    with pytest.raises(ValueError, match="keep"):
        checkpoint.CheckpointConfig(keep=0)
    with pytest.raises(ValueError, match="every_steps"):
        checkpoint.CheckpointConfig(every_steps=0)


def test_relative_paths_work(tmp_path, monkeypatch):
    # Orbax refuses relative paths; a workdir such as the experiments' default "runs/..." must still work.
    monkeypatch.chdir(tmp_path)
    bc_state = worker.synthetic_state(train.StepConfig(mode="bc", model=ilql.ModelConfig(trunk=TRUNK)), seed=5)
    with checkpoint.Checkpointer("runs/bc") as ckpt:
        ckpt.save(3, bc_state, {"data": {"step": 3}})
    assert (tmp_path / "runs" / "bc" / "checkpoints" / "3").is_dir()
    restored, extra = checkpoint.restore("runs/bc", jax.eval_shape(lambda: bc_state))
    assert bitwise_equal(restored, bc_state) and extra == {"data": {"step": 3}}
    policy = checkpoint.load_policy_from_checkpoint("runs/bc", trunk_lib.abstract_params(TRUNK))
    assert bitwise_equal(policy, bc_state.params["policy"])
    checkpoint.export_params("runs/export", policy)
    assert bitwise_equal(checkpoint.load_params("runs/export", trunk_lib.abstract_params(TRUNK)), policy)
