"""A run's files: written whole, shared ones by process 0 only, and a run on a filesystem without append."""

import json

import jax
import pytest

from ilql_jax import files
from ilql_jax.checkpoint import CheckpointConfig
from ilql_jax.logging import MetricWriter, read_metrics
from ilql_jax.loop import train_and_evaluate
from tests.no_append import refuse_append
from tests.test_loop import _config, _data


def test_shared_files_are_written_whole_by_process_0_only(tmp_path, monkeypatch):
    files.write_json(tmp_path / "a" / "x.json", {"k": 1})
    files.write_text(tmp_path / "a" / "x.json", "replaced\n")  # rewritten, not appended
    assert (tmp_path / "a" / "x.json").read_text() == "replaced\n"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]  # no temporary file left behind
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    files.write_text(tmp_path / "b.txt", "from process 1")
    assert not (tmp_path / "b.txt").exists()
    files.write_text(tmp_path / "c.txt", "its own file", shared=False)
    assert (tmp_path / "c.txt").read_text() == "its own file"


def test_the_double_refuses_append(tmp_path):
    with refuse_append(tmp_path):
        (tmp_path / "x").write_text("a")
        with pytest.raises(OSError, match="does not support appending"):
            open(tmp_path / "x", "a")
        with pytest.raises(OSError, match="does not support appending"):
            (tmp_path / "x").open("a")
        assert (tmp_path / "x").read_text() == "a"
    with open(tmp_path / "x", "a") as f:  # outside the block, appending works again
        f.write("b")


def test_a_run_on_a_filesystem_without_append_completes_and_resumes(tmp_path):
    workdir = tmp_path / "run"
    with refuse_append(tmp_path):
        config = _config("ilql", log_every=1, eval_every=0, checkpoint=CheckpointConfig(every_steps=2))
        first = train_and_evaluate(config, str(workdir), _data())
        # Resumed from step 4 with more steps: metrics.jsonl is rewritten with the earlier lines kept.
        config = _config("ilql", log_every=1, eval_every=0, checkpoint=CheckpointConfig(every_steps=2), num_steps=6)
        state = train_and_evaluate(config, str(workdir), _data())
    assert int(first.step) == 4 and int(state.step) == 6
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4, 6]


def test_metric_writer_drops_the_lines_a_resumed_run_logs_again(tmp_path):
    with MetricWriter(tmp_path, enabled=True) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"loss": float(step)})
    with MetricWriter(tmp_path, enabled=True, purge_step=3) as writer:
        assert writer.dropped == 1
        writer.write(3, {"loss": 30.0})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 30.0}]


def _stat(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_metric_writes_never_rewrite_earlier_bytes(tmp_path):
    """Each write is a new part file: metrics.jsonl and the earlier parts keep their bytes (and inode) until the
    run folds them into metrics.jsonl once, at its end; no file is ever opened to append."""
    with refuse_append(tmp_path):
        with MetricWriter(tmp_path, enabled=True) as writer:
            writer.write(1, {"loss": 1.0})
        before = _stat(tmp_path / "metrics.jsonl")
        with MetricWriter(tmp_path, enabled=True) as writer:
            seen = {}
            for step in (2, 3, 4):
                writer.write(step, {"loss": float(step)})
                assert _stat(tmp_path / "metrics.jsonl") == before
                parts = sorted((tmp_path / "metrics.parts").iterdir())
                assert len(parts) == step - 1
                for part in parts[:-1]:
                    assert _stat(part) == seen[part]  # untouched since written
                seen[parts[-1]] = _stat(parts[-1])
                assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, step + 1))
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
    assert not (tmp_path / "metrics.parts").exists()


def test_a_line_cut_short_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    with MetricWriter(tmp_path, enabled=True) as writer:  # purge_step None: nothing else is dropped
        assert writer.dropped == 1
        assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'
        writer.write(2, {"loss": 2.0})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


def test_parts_a_killed_run_left_are_read_in_order_and_purged(tmp_path):
    """A run killed before it folds its parts leaves them; the next run reads them after metrics.jsonl, in write
    order (more than 10 parts: not a lexicographic accident), purges from its first step on and folds the rest."""
    with MetricWriter(tmp_path, enabled=True) as writer:
        writer.write(1, {"loss": 1.0})
    killed = MetricWriter(tmp_path, enabled=True)
    for step in range(2, 14):
        killed.write(step, {"loss": float(step)})
    (tmp_path / "metrics.parts" / ".00000012.jsonl.tmp-1").write_text('{"step": 14, "lo')  # a write cut short
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 14))
    with MetricWriter(tmp_path, enabled=True, purge_step=12) as writer:
        assert writer.dropped == 2  # steps 12, 13
        assert not (tmp_path / "metrics.parts").exists()
        writer.write(12, {"loss": 120.0})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)) and json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1]) \
        == {"step": 12, "loss": 120.0}
