"""examples/: the README shows them verbatim, and each runs at a tiny size through its command line (slow)."""

import importlib.util
import json
import math
import pathlib
import re

import pytest

from ilql_jax import load_tokenizer

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_part(path: pathlib.Path) -> str:
    """The lines between the file's `# [readme: begin]` and `# [readme: end]` markers."""
    match = re.search(r"^# \[readme: begin\][^\n]*\n(.*?)^# \[readme: end\]", path.read_text(), flags=re.S | re.M)
    assert match, f"{path} has no readme markers"
    return match.group(1)


def test_the_python_api_page_shows_custom_reward_verbatim_and_the_readme_links_it():
    part = _readme_part(REPO / "examples" / "custom_reward.py")
    assert "def train_ilql" in part and "from ilql_jax import" in part
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO / "docs" / "python_api.md").read_text(), flags=re.S | re.M)
    assert part in blocks, "docs/python_api.md's block differs from examples/custom_reward.py"
    assert "(docs/python_api.md)" in (REPO / "README.md").read_text()


def test_custom_reward_reads_jsonl_and_names_bad_lines(tmp_path):
    example = _load("custom_reward")
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Hi.", "response": "Hello!", "reward": 1}\n\n{"prompt": "Hey", "response": "Go away",'
                    ' "reward": -1.5}\n')
    assert example.read_jsonl(str(good)) == [("Hi.", "Hello!", 1.0), ("Hey", "Go away", -1.5)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi.", "response": "Hello!", "reward": 1}\n{"prompt": "Hey", "reward": -1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*response"):
        example.read_jsonl(str(bad))
    records = example.toy_records(200)
    assert {r for _, _, r in records} == {-1.0, 1.0} and all(example.politeness(resp) == r for _, resp, r in records)


@pytest.mark.slow
def test_custom_reward_tiny_run(tmp_path):
    example = _load("custom_reward")
    report = example.main(["--tiny", "--workdir", str(tmp_path)])

    assert json.loads((tmp_path / "samples.json").read_text()) == report
    assert list(report) == ["0", "4"]
    for rows in report.values():
        assert len(rows) == 8 and len({row["prompt"] for row in rows}) == 8
        assert all(isinstance(row["reply"], str) and row["reward"] in (-1.0, 0.0, 1.0) for row in rows)
    # Same key, same prompts: β·(Q − V) changes what is sampled.
    assert [row["reply"] for row in report["0"]] != [row["reply"] for row in report["4"]]
    for stage in ("bc", "ilql"):
        assert (tmp_path / stage / "checkpoints" / "4").is_dir(), stage
        losses = [json.loads(line)["train/loss"] for line in (tmp_path / stage / "metrics.jsonl").open()]
        assert losses and all(math.isfinite(loss) for loss in losses), stage
    config = json.loads((tmp_path / "ilql" / "config.json").read_text())
    assert config["init"] == "bc:" + str(tmp_path / "bc") and config["step"]["mode"] == "ilql"
    assert load_tokenizer(str(tmp_path / "tokenizer")).vocab_size <= 512
