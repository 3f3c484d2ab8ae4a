"""scripts/compare_commits.py's file comparison (the runs themselves are the script's job, too long for a test)."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_commits", ROOT / "scripts" / "compare_commits.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)
IGNORE = re.compile(compare.IGNORE_KEYS)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_metrics_are_compared_per_step_without_timings(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"step": 1, "train/loss": 1.5, "train/tokens_per_sec": 10.0},
                                     {"step": 2, "train/loss": 1.25, "train/tokens_per_sec": 11.0}])
    same = _jsonl(tmp_path / "b.jsonl", [{"step": 1, "train/loss": 1.5, "train/tokens_per_sec": 99.0},
                                        {"step": 2, "train/loss": 1.25, "train/tokens_per_sec": 98.0}])
    assert compare.compare_file(a, same, IGNORE) == "identical"
    off = _jsonl(tmp_path / "c.jsonl", [{"step": 1, "train/loss": 1.5, "train/tokens_per_sec": 10.0},
                                       {"step": 2, "train/loss": 1.2500001, "train/tokens_per_sec": 11.0}])
    verdict = compare.compare_file(a, off, IGNORE)
    assert verdict.startswith("DIFFERS: 1 of 4 values (of train/loss), max |Δ| = 1e-07 at step 2.train/loss"), verdict


def test_other_files_are_compared_by_bytes_and_trees_by_name(tmp_path):
    for name, text in (("a", "x\ny\n"), ("b", "x\nz\n")):
        (tmp_path / name / "tb").mkdir(parents=True)
        (tmp_path / name / "results.md").write_text(text)
        (tmp_path / name / "tb" / "events").write_text(name)  # wall-clock times: never compared
    (tmp_path / "b" / "extra.json").write_text("{}")
    rows = dict(compare.compare_trees(tmp_path / "a", tmp_path / "b", IGNORE))
    assert rows == {"extra.json": "only in the second", "results.md": "DIFFERS: 1 of 2 lines"}
    (tmp_path / "a" / "t.md").write_text("2 seeds; 0.5 min in all.\n")
    (tmp_path / "b" / "t.md").write_text("2 seeds; 0.6 min in all.\n")
    assert compare.compare_file(tmp_path / "a" / "t.md", tmp_path / "b" / "t.md", IGNORE).startswith("identical")
