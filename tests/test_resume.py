"""Durability of train_and_evaluate: resume after SIGTERM or SIGKILL, NaN stops, checkpoints across meshes.

The interrupted runs happen in subprocesses (`tests/_resume_worker.py`),
started together when this module starts so that they compile while this
process trains the straight reference run.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from ilql_jax import checkpoint, train
from ilql_jax.logging import read_metrics
from ilql_jax.loop import train_and_evaluate
from tests import _resume_worker as worker
from tests.test_loop import _data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, STOP = worker.STEPS, worker.STOP


class _Workers:
    """Worker subprocesses by mode, each writing into its own workdir."""

    def __init__(self, base):
        self.base, self.procs = base, {}
        self.env = {**os.environ, "JAX_PLATFORMS": "cpu",
                    # conftest.py's persistent compilation cache, shared with the workers.
                    "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "ilql_jax_test_jax_cache"),
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}

    def start(self, mode: str, **env) -> None:
        log = self.base / f"{mode}.txt"
        with open(log, "w") as out:  # a file, not a pipe: nothing blocks however much the worker prints
            proc = subprocess.Popen([sys.executable, "-m", "tests._resume_worker", mode, str(self.base / mode)],
                                    cwd=REPO, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT)
        self.procs[mode] = proc, log

    def finish(self, mode: str):
        """Waits for the worker (started now if it was not); returns (workdir, return code, its output)."""
        if mode not in self.procs:
            self.start(mode)
        proc, log = self.procs[mode]
        proc.wait(timeout=300)
        return self.base / mode, proc.returncode, log.read_text()


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """The mesh and SIGTERM workers start at once, to compile while this process does. The SIGKILL
    worker starts when its test does, after the SIGTERM one has cached the programs they share."""
    workers = _Workers(tmp_path_factory.mktemp("workers"))
    workers.start("mesh", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    workers.start("preempt")
    yield workers
    for proc, _ in workers.procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def straight(workers, tmp_path_factory):
    """The uninterrupted run: (workdir, final state)."""
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, train_and_evaluate(worker.config(), str(workdir), *worker.data())


def _metrics(workdir, without=("train/tokens_per_sec",)):
    """Every line the runs in `workdir` logged (a killed run's are not yet folded into metrics.jsonl)."""
    return [{k: v for k, v in line.items() if k not in without} for line in read_metrics(workdir)]


def _steps(workdir) -> list[int]:
    """The committed checkpoint steps in a workdir."""
    with checkpoint.Checkpointer(workdir, None) as ckpt:
        return ckpt.all_steps()


def _same_params(a, b) -> bool:
    fa, fb = worker.flat(a), worker.flat(b)
    return fa.keys() == fb.keys() and all(fa[k].tobytes() == fb[k].tobytes() for k in fa)


def test_straight_run_keeps_the_last_checkpoints_and_a_rerun_resumes_at_its_end(straight):
    workdir, state = straight
    assert int(state.step) == STEPS
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 6]  # every 2, keep 2
    lines = _metrics(workdir)
    # Run again: it resumes at the end, trains nothing and logs nothing more.
    again = train_and_evaluate(worker.config(), str(workdir), *worker.data())
    assert _same_params(again, state) and _metrics(workdir) == lines
    with pytest.raises(ValueError, match="holds checkpoints .newest: step 6. and resume=False"):
        train_and_evaluate(dataclasses.replace(worker.config(), resume=False), str(workdir), *worker.data())


def test_sigterm_saves_and_the_same_call_resumes_bitwise(workers, straight):
    workdir, returncode, output = workers.finish("preempt")
    assert returncode == 0, output[-3000:]
    assert f"PREEMPTED step={STOP}" in output and "run the same command again to resume" in output, output[-3000:]
    assert "HANDLERS RESTORED" in output, output[-3000:]
    assert _steps(workdir) == [2, STOP]
    assert [line["step"] for line in _metrics(workdir)] == [2]

    state = train_and_evaluate(worker.config(), str(workdir), *worker.data())
    straight_dir, straight_state = straight
    assert int(state.step) == STEPS
    assert _same_params(state, straight_state)
    # Step 4's train metrics average steps 3 and 4, across the interruption, as in the straight run.
    assert _metrics(workdir) == _metrics(straight_dir)


def test_sigkill_during_a_save_resumes_from_the_previous_checkpoint(workers, straight):
    workdir, returncode, output = workers.finish("kill")
    assert returncode == -signal.SIGKILL, output[-3000:]
    killed = int(output.split("KILLING at step ")[1].split()[0])
    left = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert any(name.startswith(f"{killed}.orbax-checkpoint-tmp") for name in left), left  # the interrupted save
    assert _steps(workdir)[-1] == killed - 1
    if killed % worker.config().log_every == 0:  # logged just before the kill, so dropped on resuming
        assert killed in [line["step"] for line in _metrics(workdir)]

    state = train_and_evaluate(worker.config(), str(workdir), *worker.data())
    straight_dir, straight_state = straight
    assert _same_params(state, straight_state)
    # The lines logged after the restored checkpoint were dropped and logged again: no duplicates.
    assert _metrics(workdir) == _metrics(straight_dir)


@pytest.mark.parametrize("every_steps, log_every", [(1, STEPS), (STEPS, 3)])
def test_non_finite_loss_stops_naming_the_step_and_saves_nothing_after_it(tmp_path, every_steps, log_every):
    # Adam moves every weight by about the learning rate: the second forward pass overflows.
    cfg = worker.config(eval_every=0, log_every=log_every, checkpoint=checkpoint.CheckpointConfig(every_steps, keep=10))
    cfg = dataclasses.replace(cfg, step=dataclasses.replace(
            cfg.step, optim=dataclasses.replace(cfg.step.optim, learning_rate=1e30)))
    # Checked before each save (every step), or at the log step 3 when saves come later.
    with pytest.raises(FloatingPointError, match="loss is (inf|nan) at step 2;"):
        train_and_evaluate(cfg, str(tmp_path), _data())
    assert _steps(tmp_path) == ([1] if every_steps == 1 else [])
    if every_steps == 1:
        restored, _ = checkpoint.restore(tmp_path, train.abstract_state(cfg.step))  # the last good one
        assert int(restored.step) == 1
        assert all(np.isfinite(x).all() for x in worker.flat(restored.params).values())


def test_checkpoint_from_an_fsdp_mesh_resumes_on_other_meshes(workers):
    workdir, returncode, output = workers.finish("mesh")
    assert returncode == 0 and "MESH OK" in output, output[-3000:]
    final = np.load(workdir / "final.npz")
    # And on this process's single device: no steps left, so the loop only restores.
    cfg = worker.config(batch_size=8, num_steps=2 * worker.MESH_STEPS, eval_every=0)
    state = train_and_evaluate(cfg, str(workdir), _data())
    got = worker.flat(state)
    assert got.keys() == set(final.files)
    assert all(got[k].tobytes() == final[k].tobytes() for k in got)
    assert len(jax.tree.leaves(state)[0].sharding.device_set) == 1
