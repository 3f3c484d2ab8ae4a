"""The experiment drivers on several hosts: local CPU processes joined by `jax.distributed` (slow).

Two processes with one CPU device each run `python -m experiments.reddit_toxicity --preset smoke`
on one shared workdir, as every host of a slice would; a single process with two (fake) CPU
devices runs the same command alone. Both see the same 2-device data-parallel mesh, so they run
the same programs and must write the same results. Every run's workdir is on a filesystem
without append (`tests/no_append.py`), as a `gs://` bucket is.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900
COMMAND = ["experiments.reddit_toxicity", "--preset", "smoke"]
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root, workdir, devices: int, log, **env) -> subprocess.Popen:
    inherited = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env = dict(inherited, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p), **env)
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "no_append.py"), str(root), *COMMAND,
                             "--workdir", str(workdir)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait(procs: dict, logs: dict) -> None:
    """Waits for every run; kills them all on timeout or when one fails, and fails with their output."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs.values()):
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs.values()):
            break
        time.sleep(0.5)
    failed = []
    for name, p in procs.items():
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.returncode != 0:
            logs[name].seek(0)
            failed.append(f"{name}: exit status {p.returncode}\n{logs[name].read().decode(errors='replace')[-4000:]}")
    if failed:
        pytest.fail("\n\n".join(failed))


def test_two_processes_run_the_reddit_smoke_preset_and_write_what_one_process_writes(tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    runs = {"one process, 2 devices": dict(devices=2, workdir=tmp_path / "single")}
    for i in range(2):
        runs[f"process {i} of 2"] = dict(devices=1, workdir=tmp_path / "pair", JAX_COORDINATOR_ADDRESS=coordinator,
                                         JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    logs = {name: open(tmp_path / f"log{i}", "w+b") for i, name in enumerate(runs)}
    try:
        procs = {name: _start(tmp_path, log=logs[name], **run) for name, run in runs.items()}
        _wait(procs, logs)
    finally:
        for log in logs.values():
            log.close()

    single, pair = tmp_path / "single", tmp_path / "pair"
    saved = json.loads((single / "results.json").read_text())
    assert [r["beta"] for r in saved["seeds"]] == [0.0, 4.0] and all(r["n"] == 30 for r in saved["seeds"])
    assert json.loads((pair / "results.json").read_text()) == saved
    assert (pair / "generations.jsonl").read_text() == (single / "generations.jsonl").read_text()
    # The processes trained together: one BC and one ILQL run, whose logs process 0 wrote.
    for stage in ("bc", "ilql"):
        steps = [json.loads(line)["step"] for line in (pair / stage / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 11)), (stage, steps)
        assert sorted(p.name for p in (pair / stage / "checkpoints").iterdir()) == ["10"]
