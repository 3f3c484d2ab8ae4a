"""`ilql-jax train/generate/export` end to end on JSONL the tests write, and the lean install's --help."""

import configparser
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ilql_jax import cli, sampler, tokenizers
from ilql_jax.cli import options
from ilql_jax.config import _fields, _is_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--bc_steps", "3", "--ilql_steps", "3", "--batch_size", "8", "--n_layer", "1", "--n_embd", "32",
        "--n_head", "2", "--max_len", "40", "--bpe_vocab_size", "300", "--progress", "false", "--log_every", "1"]


def single_turn_records(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        good = bool(rng.random() < 0.5)
        out.append({"prompt": f"ticket {i % 5}: my order is late",
                    "response": "sorry, it ships today" if good else "not my problem", "reward": 1.0 if good else -1,
                    "id": i})  # other keys are ignored
    return out


def multi_turn_records(n=40):
    out = []
    for i in range(n):
        won = i % 3 == 0
        out.append({"turns": [{"role": "env", "text": f"guess my number, hint {i % 4}"},
                              {"role": "agent", "text": "is it five?", "reward": -1},
                              {"role": "env", "text": "higher" if not won else "yes", "reward": None},
                              {"role": "agent", "text": "seven" if won else "nine", "reward": 1.0 if won else -1.0}],
                    "terminal": i % 4 != 0})
    return out


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def leaf_flags(cls, prefix=""):
    """Every leaf field of a (nested) config dataclass as its dotted flag."""
    flags = []
    for name, tp in _fields(cls).items():
        flags += leaf_flags(tp, f"{prefix}{name}.") if _is_config(tp) else [f"--{prefix}{name}"]
    return flags


def policy_logits(state, trunk, ids):
    from ilql_jax.models import trunk as trunk_lib
    tokens = np.asarray([ids], np.int32)
    _, logits = trunk_lib.forward(state.params["policy"], trunk, tokens, np.ones_like(tokens))
    return np.asarray(logits)[0, :, :trunk.vocab_size]


# --- end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_single_turn_train_generate_export(tmp_path):
    data = write_jsonl(tmp_path / "records.jsonl", single_turn_records())
    workdir = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--workdir", str(workdir), *TINY]) == 0
    for name in ("options.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "bc/config.json",
                 "ilql/config.json", "ilql/metrics.jsonl"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "ilql" / "tb").iterdir()) and (workdir / "ilql" / "checkpoints" / "3").is_dir()
    assert json.loads((workdir / "ilql" / "config.json").read_text())["init"] == f"bc:{workdir / 'bc'}"
    assert not list(workdir.rglob(".*.tmp-*"))  # atomic writes leave no temporary files
    # The same command again resumes from the final checkpoints: nothing is trained or logged twice.
    metrics = (workdir / "ilql" / "metrics.jsonl").read_text()
    events = sorted(workdir.rglob("events.out.tfevents.*"))
    assert cli.main(["train", "--data", str(data), "--workdir", str(workdir), *TINY]) == 0
    assert (workdir / "ilql" / "metrics.jsonl").read_text() == metrics
    assert sorted(workdir.rglob("events.out.tfevents.*")) == events  # nothing to log: no new TensorBoard file
    assert not (workdir / ".lock").exists()  # released

    # generate: 3 prompts x 2 samples in batches of 4 = two batches of one shape: one compilation.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ticket 1: my order is late\n\nticket 2: my order is late\nwhere is my parcel\n")
    out = tmp_path / "generations.jsonl"
    before = sampler.trace_count()
    assert cli.main(["generate", "--workdir", str(workdir), "--prompts", str(prompts), "--num", "2",
                     "--batch_size", "4", "--beta", "4", "--max_new_tokens", "8", "--forbid_markup", "true",
                     "--out", str(out)]) == 0
    assert sampler.trace_count() - before == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["sample"]) for r in rows] == [(1, 0), (1, 1), (3, 0), (3, 1), (4, 0), (4, 1)]
    for r in rows:
        assert r["beta"] == 4.0 and 1 <= r["num_tokens"] <= 8 and isinstance(r["text"], str)
        assert r["logp"] < 0 and r["logp_beta"] < 0
        assert r["kl"] == pytest.approx(r["logp"] - r["logp_beta"], abs=1e-3)  # Σ_t (log π − log π_β)
        assert not any(m in r["text"] for m in ("<s>", "</s>", "<a>", "</eod>", "<pad>"))  # --forbid_markup
    # Greedy from a single --prompt prints to stdout, and is reproducible.
    for mode in ("greedy", "beam"):
        assert cli.main(["generate", "--workdir", str(workdir), "--prompt", "ticket 3: my order is late",
                         "--mode", mode, "--max_new_tokens", "6"]) == 0

    # export: π_β as a transformers GPT-2 with its tokenizer, and the value networks.
    exported = tmp_path / "exported"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(exported)]) == 0
    from transformers import AutoTokenizer, FlaxGPT2LMHeadModel

    from ilql_jax import export as export_lib
    from ilql_jax.cli.workdir import load_run
    run = load_run(str(workdir))
    trunk = run.config.step.model.trunk
    hf_tok = AutoTokenizer.from_pretrained(str(exported))
    text = "<s>ticket 1: my order is late</s>sorry"
    ids = run.tokenizer.encode(text)
    assert hf_tok(text)["input_ids"] == ids and len(hf_tok) == run.tokenizer.vocab_size
    assert hf_tok.eos_token_id == run.tokenizer.end_a_id and hf_tok.pad_token_id == run.tokenizer.pad_id
    hf_model = FlaxGPT2LMHeadModel.from_pretrained(str(exported))
    hf_logits = np.asarray(hf_model(np.asarray([ids])).logits)[0]
    np.testing.assert_allclose(hf_logits, policy_logits(run.state, trunk, ids), atol=1e-4, rtol=1e-4)
    assert tokenizers.load_tokenizer(str(exported)).encode(text) == ids  # our loader reads the same files
    # The value networks reload exactly, and the manifest names every tensor.
    model_config, value, target = export_lib.load_values(str(exported), dropout=0.0)
    assert model_config.target_on_online_trunk == run.config.step.model.target_on_online_trunk
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        (value["value"], target), (run.state.params["value"], run.state.target_params))
    assert all(jax.tree.leaves(same))
    manifest = json.loads((exported / "values.json").read_text())
    assert "value.v.out.kernel" in manifest["tensors"] and "target.trunk.wte.weight" in manifest["tensors"]
    # A second export refuses to overwrite unless asked.
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--workdir", str(workdir), "--out", str(exported)])
    assert e.value.code == 2
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(exported), "--overwrite", "true"]) == 0


@pytest.mark.slow
def test_multi_turn_train_with_held_out_split_then_generate(tmp_path):
    data = write_jsonl(tmp_path / "games.jsonl", multi_turn_records())
    workdir = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--workdir", str(workdir), *TINY, "--max_len", "48",
                     "--eval_fraction", "0.25", "--freeze_policy", "true", "--reward_norm", "scale"]) == 0
    metrics = [json.loads(line) for line in (workdir / "ilql" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in m for m in metrics)  # the held-out split is evaluated
    config = json.loads((workdir / "ilql" / "config.json").read_text())
    assert config["step"]["model"]["frozen_policy"] is True
    # Rewards of ±1 per agent turn, scaled by their standard deviation on the training records.
    norm = json.loads((workdir / "options.json").read_text())["reward_norm_fitted"]
    assert norm["mode"] == "scale" and norm["shift"] == 0.0 and 0.5 < norm["scale"] < 1.0
    # Histories as prompts: the agent replies to the last env turn, with the earlier turns as context.
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"turns": [{"role": "env", "text": "guess my number, hint 1"}, {"role": "agent", "text": "is it five?",
                                                                         "reward": -1}, {"role": "env", "text": "higher"}]},
        {"prompt": "guess my number, hint 2"}])
    out = tmp_path / "out.jsonl"
    assert cli.main(["generate", "--workdir", str(workdir), "--prompts", str(prompts), "--mode", "best_of_n",
                     "--n", "3", "--beta", "8", "--max_new_tokens", "6", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # The whole history comes back for a multi-turn prompt (as the data file's "turns"), the text for a single one.
    assert rows[0]["turns"] == [{"role": "env", "text": "guess my number, hint 1"},
                                {"role": "agent", "text": "is it five?", "reward": -1.0},
                                {"role": "env", "text": "higher"}] and "prompt" not in rows[0]
    assert rows[1]["prompt"] == "guess my number, hint 2" and "turns" not in rows[1]
    assert all(r["mode"] == "best_of_n" for r in rows)


@pytest.mark.slow
def test_symbol_data_trains_and_generates_with_a_symbol_tokenizer(tmp_path, capsys):
    """Small vocabularies from the command line: walks over graph nodes, one id per node (`--tokenizer symbols`),
    then a saved `symbol_tokenizer` directory (`--tokenizer DIR`) that must cover every record."""
    rng = np.random.default_rng(0)
    nodes = ["n0", "n1", "n2", "n3", "n4"]
    records = [{"prompt": str(rng.choice(nodes)), "response": " ".join(rng.choice(nodes, size=int(rng.integers(1, 5)))),
                "reward": float(rng.random())} for _ in range(40)]
    data = write_jsonl(tmp_path / "walks.jsonl", records)
    workdir = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--workdir", str(workdir), *TINY, "--tokenizer", "symbols"]) == 0
    tok = tokenizers.load_tokenizer(str(workdir / "tokenizer"))
    assert tok.kind == "symbols" and tok.vocab_size == len(nodes) + 6  # the nodes, pad and markup: nothing merged
    assert tok.decode(tok.encode("n3 n1 n4")) == "n3 n1 n4"
    capsys.readouterr()
    out = tmp_path / "out.jsonl"
    assert cli.main(["generate", "--workdir", str(workdir), "--prompt", "n2", "--beta", "4", "--max_new_tokens", "4",
                     "--forbid_markup", "true", "--out", str(out)]) == 0
    text = json.loads(out.read_text().splitlines()[0])["text"]
    assert all(symbol in nodes for symbol in text.split()), text  # every id decodes to a node
    # A saved symbol tokenizer that lacks a node of the data: one line naming the file and line, before training.
    tokenizers.symbol_tokenizer(nodes[:-1], separator=" ").save(str(tmp_path / "tok"))
    missing = next(i for i, r in enumerate(records, 1) if "n4" in (r["prompt"] + " " + r["response"]).split())
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(tmp_path / "run2"), *TINY,
                  "--tokenizer", str(tmp_path / "tok")])
    _one_line_error(capsys, e.value.code, f"walks.jsonl: line {missing}", "no symbol matches 'n4'")
    assert not (tmp_path / "run2" / "bc").exists()


# --- bad input: one line, file and line named, exit 2, no traceback, nothing trained --------------------------


BAD_RECORDS = {
    # name: (file bytes, what the message must contain)
    "empty file": (b"\n  \n", "empty file"),
    "non-JSON line": (b'{"prompt": "p", "response": "r", "reward": 1}\n{"prompt": oops}\n', "line 2: not JSON"),
    "missing field": (b'{"prompt": "p", "reward": 1}\n', "line 1: response: missing"),
    "wrong type": (b'{"prompt": "p", "response": "r", "reward": "high"}\n', "line 1: reward: expected a number"),
    "wrong type in a turn": (b'{"turns": [{"role": "env", "text": "hi"}, {"role": "agent", "text": 5, "reward": 1}]}\n',
                             "line 1: turns[1].text: expected a string"),
    "agent turn without reward": (b'{"turns": [{"role": "agent", "text": "hi"}]}\n', "line 1: turns[0].reward: missing"),
    "unknown role": (b'{"turns": [{"role": "user", "text": "hi"}]}\n', "line 1: turns[0].role: expected"),
    "non-UTF-8": (b'{"prompt": "p", "response": "r", "reward": 1}\n{"prompt": "caf\xe9", "response": "r", "reward": 1}\n',
                  "line 2: not valid UTF-8"),
    "markup inside text": (b'{"prompt": "p", "response": "r", "reward": 1}\n'
                           b'{"prompt": "use <s>strike</s> here", "response": "r", "reward": 1}\n',
                           "line 2: prompt: contains the reserved markup string '<s>'"),
    "over-long record": (b'{"prompt": "p", "response": "r", "reward": 1}\n' * 8
                         + b'{"prompt": "' + b"many words " * 40 + b'", "response": "r", "reward": 1}\n',
                         "line 9: record is"),
}


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_train_refuses_bad_data_in_one_line(tmp_path, capsys, name):
    content, expected = BAD_RECORDS[name]
    data = tmp_path / "mine.jsonl"
    data.write_bytes(content)
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(workdir), *TINY])
    _one_line_error(capsys, e.value.code, f"{data}: {expected}" if "line" in expected else str(data), expected)
    assert not workdir.exists()  # refused before training, leaving nothing behind (the over-long record is found
    # after the tokenizer is built: its options.json and tokenizer/ are removed)


def test_train_refuses_unknown_flag_and_bad_value(tmp_path, capsys):
    data = write_jsonl(tmp_path / "ok.jsonl", single_turn_records(8))
    for flags, needle in ((["--bc_stepz", "3"], "unrecognized arguments: --bc_stepz 3"),
                          (["--bc_steps", "many"], "--bc_steps: expected an int, got 'many'"),
                          (["--too_long", "truncate"], "--too_long must be one of"),
                          (["--model", "scratch", "--n_embd", "30", "--n_head", "4"],
                           "--n_embd 30 is not divisible by --n_head 4")):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "--data", str(data), "--workdir", str(tmp_path / "w"), "--seed", "3", *flags])
        err = _one_line_error(capsys, e.value.code, needle)
        # Only the flags the message is about: not every flag given.
        assert "--data" not in err and "--workdir" not in err and "--seed" not in err, err
    assert not (tmp_path / "w").exists()


def test_train_refuses_another_model_in_a_used_workdir(tmp_path, capsys):
    data = write_jsonl(tmp_path / "ok.jsonl", single_turn_records(8))
    workdir = tmp_path / "w"
    (workdir / "tokenizer").mkdir(parents=True)
    tokenizers.train_bpe_tokenizer(["a b"], 300).save(str(workdir / "tokenizer"))
    (workdir / "options.json").write_text(json.dumps({"bpe_vocab_size": 512, "model": "scratch", "seed": 0,
                                                      "eval_fraction": 0.0, "data_sha256": "0" * 64}))
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(workdir), *TINY])
    _one_line_error(capsys, e.value.code, "was trained with the data file's contents")


def test_generate_refuses_markup_and_missing_workdir(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("fine\nnot </a> fine\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--workdir", str(tmp_path / "nowhere"), "--prompts", str(prompts)])
    _one_line_error(capsys, e.value.code, "p.txt: line 2: prompt: contains the reserved markup string '</a>'")
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--workdir", str(tmp_path / "nowhere"), "--prompt", "hi"])
    _one_line_error(capsys, e.value.code, "no ilql/config.json")
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--workdir", str(tmp_path), "--prompt", "hi", "--prompts", str(prompts)])
    _one_line_error(capsys, e.value.code, "exactly one of --prompt")


def _run_module(args, env_extra=None, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_a_real_process_exits_2_with_one_line_and_ilql_debug_shows_the_traceback(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p", "response": "r"}\n')
    args = ["-m", "ilql_jax", "train", "--data", str(data), "--workdir", str(tmp_path / "w")]
    proc = _run_module(args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"ilql-jax: error: {data}: line 1: reward: missing; a single-turn record needs " \
                                  '"prompt", "response" and "reward" (or use "turns")'
    debug = _run_module(args, {"ILQL_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


# --- --help ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, cls", [("train", options.TrainOptions), ("generate", options.GenerateOptions),
                                          ("sweep", options.SweepOptions), ("export", options.ExportOptions)])
def test_help_lists_every_option_with_its_meaning_and_default(capsys, command, cls):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    flags = leaf_flags(cls)
    assert len(flags) >= 3
    for flag in flags:
        assert f"{flag} " in out, flag
    # Meanings and defaults come from the dataclass docstring and fields.
    assert out.count("(default: ") + out.count("(required)") >= len(flags)
    if command == "train":
        assert "share of the records held out" in out and "(default: 0.0)" in out and "--mesh.fsdp" in out
        assert "at generation the prompt plus the reply must fit in it" in out  # --max_len bounds generation
    if command == "sweep":
        assert "--name " in out and "(default: 0,1,4,16,64)" in out and "MODULE:FUNCTION" in out


@pytest.mark.parametrize("module, config", [("experiments.reddit_toxicity", "experiments.reddit_toxicity.run:RedditConfig"),
                                            ("experiments.wordle", "experiments.wordle.run:WordleConfig"),
                                            ("experiments.dialogue", "experiments.dialogue.run:DialogueConfig")])
def test_driver_help_lists_every_config_field(capsys, module, config):
    import importlib
    main = importlib.import_module(f"{module}.__main__").main
    mod, _, name = config.partition(":")
    cls = getattr(importlib.import_module(mod), name)
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in ["--preset", "--workdir", *leaf_flags(cls)]:
        assert f"{flag} " in out, flag
    assert out.count("(default: ") >= len(leaf_flags(cls))


# --- the lean install -------------------------------------------------------------------------------------


def test_setup_cfg_keeps_the_experiments_packages_out_of_the_core_install():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    core = cfg["options"]["install_requires"]
    for package in ("alt-profanity-check", "wordfreq", "matplotlib", "transformers"):
        assert package not in core
        assert package in cfg["options.extras_require"]["experiments"] + cfg["options.extras_require"]["dev"]
    assert "experiments" not in cfg["options.packages.find"]["include"]
    assert cfg["options.entry_points"]["console_scripts"].strip() == "ilql-jax = ilql_jax.cli:main"
    readme_install = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("pip install")]
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_install[0] in ci.splitlines()  # CI installs exactly what the README's quick start says


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"profanity_check", "wordfreq", "matplotlib", "transformers", "experiments"}:
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import ilql_jax.cli, ilql_jax.loop, ilql_jax.sampler, ilql_jax.export, ilql_jax.cli.train  # noqa
for argv in ([ "--help"], ["train", "--help"], ["generate", "--help"], ["sweep", "--help"], ["export", "--help"]):
    try:
        ilql_jax.cli.main(argv)
    except SystemExit as e:
        assert e.code == 0, e.code
print("HELP OK")
"""


def test_ilql_jax_help_runs_without_the_experiments_packages(tmp_path):
    proc = _run_module(["-c", BLOCKER], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("HELP OK") and "usage: ilql-jax train" in proc.stdout


NO_JAX = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"jax", "jaxlib", "flax", "optax", "orbax", "chex"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
sys.argv[0] = "ilql-jax"
import runpy
runpy.run_module("ilql_jax", run_name="__main__")
"""


@pytest.mark.parametrize("argv", [[], ["train"], ["generate"], ["sweep"], ["export"]])
def test_ilql_jax_help_runs_with_jax_unimportable(tmp_path, argv):
    """`ilql-jax --help` and each subcommand's: the config layer and the options import no JAX (nor Flax,
    Optax, Orbax, chex), so --help works, fast, where JAX is broken or absent."""
    proc = _run_module(["-c", NO_JAX, *argv, "--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: ilql-jax {argv[0] if argv else ''}".rstrip())
    assert "--workdir" in proc.stdout if argv else "train,sweep,generate,export" in proc.stdout
    assert "blocked" not in proc.stderr


def test_config_layer_imports_no_jax(tmp_path):
    code = NO_JAX.split("sys.argv[0]")[0] + """
from ilql_jax.config import TrainConfig, parse_config
from ilql_jax.configs import StepConfig
config = parse_config(TrainConfig, ["--step.loss.bc_normaliser", "non_pad", "--step.model.trunk.n_layer", "2"])
assert config.step.loss.bc_normaliser == "non_pad" and config.step.model.trunk.n_layer == 2
assert not any(m.split(".")[0] in ("jax", "flax", "optax", "orbax") for m in sys.modules)
print("CONFIG OK")
"""
    proc = _run_module(["-c", code], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "CONFIG OK", proc.stderr


# --- the same bad input through `python -m experiments.reddit_toxicity --data` ------------------------------------

REDDIT_OK = b"".join(json.dumps({"parent": f"parent {i}", "comment": f"a civil reply {i}"}).encode() + b"\n"
                     for i in range(40))
BAD_REDDIT = {
    "empty file": (b"\n \n", "empty file"),
    "non-JSON line": (REDDIT_OK + b"{parent: 1}\n", "line 41: invalid JSON"),
    "missing field": (REDDIT_OK + b'{"parent": "p"}\n', "line 41: missing field 'comment'"),
    "wrong type": (REDDIT_OK + b'{"parent": "p", "comment": 7}\n', "line 41: field 'comment' must be a string"),
    "non-UTF-8": (REDDIT_OK + b'{"parent": "caf\xe9", "comment": "c"}\n', "line 41: not valid UTF-8"),
    "markup inside text": (REDDIT_OK + b'{"parent": "p", "comment": "so <s>strike</s> that"}\n',
                           "line 41: comment: contains the reserved markup string '<s>'"),
}


def _reddit_with_a_long_training_pair():
    """400 pairs, one of them (in the train split of seed 0) longer than the smoke preset's max_len."""
    from experiments.reddit_toxicity import data as reddit_data
    records = [{"parent": f"parent {i}", "comment": f"a civil reply {i}"} for i in range(400)]
    train = reddit_data.split_records(records, seed=0)["train"]
    i = records.index(train[5])
    records[i] = {"parent": "many words " * 60, "comment": train[5]["comment"]}
    assert reddit_data.split_records(records, seed=0)["train"][5] == records[i]  # the split keeps its place
    return b"".join(json.dumps(r).encode() + b"\n" for r in records), f"line {i + 1}: the pair is longer than max_len=128"


BAD_REDDIT["over-long record"] = _reddit_with_a_long_training_pair


@pytest.mark.parametrize("name", sorted(BAD_REDDIT))
def test_reddit_data_refused_in_one_line_before_judging(tmp_path, capsys, name):
    from experiments.reddit_toxicity.__main__ import main
    content, expected = BAD_REDDIT[name]() if callable(BAD_REDDIT[name]) else BAD_REDDIT[name]
    data = tmp_path / "comments.jsonl"
    data.write_bytes(content)
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", "--data", str(data), "--workdir", str(workdir), "--too_long", "error"])
    _one_line_error(capsys, e.value.code, f"{data}: {expected}" if "line" in expected else str(data), expected)
    # Nothing judged, nothing trained.
    assert not (workdir / "toxicity_cache.json").exists() and not (workdir / "bc").exists()


def test_reddit_unknown_flag_in_one_line(capsys):
    from experiments.reddit_toxicity.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", "--dat", "x.jsonl"])
    _one_line_error(capsys, e.value.code, "unrecognized arguments: --dat x.jsonl")


# --- a kill between workdir writes: the rerun succeeds ------------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs."""


def kill_at_write(monkeypatch, name):
    """Makes the atomic write of a file called `name` die after writing its temporary file, before the rename."""
    from ilql_jax import files
    real = files.atomic_write_bytes

    def write(path, data):
        if os.path.basename(os.fspath(path)) == name:
            tmp = pathlib.Path(path).parent / f".{name}.tmp-killed"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data[: len(data) // 2])  # half a file, under its temporary name
            raise Killed(name)
        real(path, data)
    monkeypatch.setattr(files, "atomic_write_bytes", write)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_tokenizer_killed_mid_save_is_rebuilt_on_the_rerun(tmp_path, monkeypatch, name):
    from experiments.reddit_toxicity.run import PRESETS, load_tokenizer_and_trunk
    records = [{"parent": f"parent {i}", "comment": f"reply number {i}"} for i in range(30)]
    cfg = PRESETS["smoke"]
    kill_at_write(monkeypatch, name)
    with pytest.raises(Killed):
        load_tokenizer_and_trunk(cfg, str(tmp_path), records)
    # tokenizer.json is written first: tokenizer_config.json, which the driver takes as proof, never precedes it.
    assert not (tmp_path / "tokenizer" / "tokenizer_config.json").exists()
    monkeypatch.undo()
    tok, _ = load_tokenizer_and_trunk(cfg, str(tmp_path), records)  # the rerun fits and saves it again
    again, _ = load_tokenizer_and_trunk(cfg, str(tmp_path), records)  # and the next one reloads it
    assert again.encode("<s>parent 3</s>reply") == tok.encode("<s>parent 3</s>reply")


@pytest.mark.slow
def test_ilql_jax_train_killed_between_writes_resumes(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "records.jsonl", single_turn_records())
    args = ["train", "--data", str(data), "--workdir", str(tmp_path / "run"), *TINY]
    for name in ("tokenizer_config.json", "config.json"):  # the tokenizer's marker, then the BC run's config
        kill_at_write(monkeypatch, name)
        with pytest.raises(Killed):
            cli.main(args)
        monkeypatch.undo()
    assert cli.main(args) == 0
    assert (tmp_path / "run" / "ilql" / "checkpoints" / "3").is_dir()


def test_reddit_label_reward_without_the_field_is_named_before_training(tmp_path, capsys):
    from experiments.reddit_toxicity.__main__ import main
    records = [{"parent": f"parent {i}", "comment": f"reply {i}", "toxicity": i % 3} for i in range(400)]
    del records[17]["toxicity"]
    data = write_jsonl(tmp_path / "labelled.jsonl", records)
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", "--data", str(data), "--workdir", str(tmp_path / "run"), "--reward", "label"])
    _one_line_error(capsys, e.value.code, f"{data}: line 18: --reward label: has no 'toxicity' field")
    assert not (tmp_path / "run" / "bc").exists()


# --- choosing β: sweeps scored by your reward ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (the same TINY settings as the tests above, so its programs are compiled once)."""
    root = tmp_path_factory.mktemp("trained")
    data = write_jsonl(root / "records.jsonl", single_turn_records())
    workdir = root / "run"
    args = ["--data", str(data), "--workdir", str(workdir), *TINY]
    assert cli.main(["train", *args]) == 0
    return data, workdir, args


def copied(trained, tmp_path):
    """A private copy of the trained workdir, and the train flags that name it."""
    import shutil
    data, workdir, args = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy, [str(copy) if a == str(workdir) else a for a in args]


REWARD_MODULE = '''
def words(turns, reply):
    assert turns[-1]["role"] == "env" and turns[-1]["text"].startswith("ticket")
    return float(len(reply.split()))


def letters(replies):
    return [float(sum(c.isalpha() for c in r)) for r in replies]
letters.batched = True
'''


@pytest.mark.slow
def test_sweep_scores_each_beta_with_your_reward_in_one_compilation(trained, tmp_path, capsys):
    _, workdir, _ = trained
    advantage = json.loads((workdir / "advantage.json").read_text())  # train's diagnostic, read by the sweep
    assert advantage["suggested_betas"][0] == 0.0 and advantage["positions"] > 0 and advantage["sigma"] >= 0
    (tmp_path / "my_reward.py").write_text(REWARD_MODULE)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ticket 1: my order is late\nticket 2: my order is late\nticket 3: my order is late\n")
    out = tmp_path / "generations.jsonl"
    before = sampler.trace_count()
    assert cli.main(["sweep", "--workdir", str(workdir), "--prompts", str(prompts), "--num", "2", "--batch_size", "8",
                     "--beta", "0,4,16,64", "--reward", f"{tmp_path / 'my_reward.py'}:words", "--max_new_tokens", "6",
                     "--out", str(out), "--name", "mysweep"]) == 0
    assert sampler.trace_count() - before == 1  # four β values, one compilation
    printed = capsys.readouterr().out
    generations = [json.loads(line) for line in out.read_text().splitlines()]
    table = json.loads((workdir / "mysweep.json").read_text())
    assert [r["beta"] for r in table["rows"]] == [0.0, 4.0, 16.0, 64.0] and table["advantage"] == advantage
    for row in table["rows"]:
        mine = [g for g in generations if g["beta"] == row["beta"]]
        rewards = [float(len(g["text"].split())) for g in mine]  # the reward recomputed from the replies
        assert row["n"] == len(mine) == 6 and all(g["reward"] == r for g, r in zip(mine, rewards))
        assert row["mean_reward"] == pytest.approx(np.mean(rewards))
        assert row["stderr"] == pytest.approx(np.std(rewards, ddof=1) / np.sqrt(6))
        assert row["kl"] == pytest.approx(np.mean([g["kl"] for g in mine]))
        assert 0.0 <= row["distinct_2"] <= 1.0
        assert f"β={row['beta']:g}: reward {row['mean_reward']:.3f} ± {row['stderr']:.3f}, KL {row['kl']:.2f}" in printed
    markdown = (workdir / "mysweep.md").read_text()
    assert "| β | reward ± s.e. | KL | distinct-2 | length | replies |" in markdown
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == 1 + 4  # the header and one row per β
    assert "ilql-jax sweep --workdir" in markdown and "--beta 0,4,16,64" in markdown
    # The same draws at every β: β = 0 twice gives the same replies (common random numbers across a sweep).
    assert cli.main(["generate", "--workdir", str(workdir), "--prompts", str(prompts), "--beta", "0,0.5",
                     "--num", "2", "--batch_size", "8", "--max_new_tokens", "6", "--out", str(tmp_path / "again.jsonl")]) == 0
    again = [json.loads(line)["text"] for line in (tmp_path / "again.jsonl").read_text().splitlines()][:6]
    assert again == [g["text"] for g in generations if g["beta"] == 0.0]


@pytest.mark.slow
def test_generate_takes_a_batched_reward_by_module_name_and_reports_the_room(trained, tmp_path, capsys, monkeypatch):
    _, workdir, _ = trained
    (tmp_path / "my_reward.py").write_text(REWARD_MODULE)
    monkeypatch.chdir(tmp_path)  # MODULE is looked up in the current directory first
    monkeypatch.syspath_prepend(str(tmp_path))
    results = __import__("ilql_jax.cli.generate", fromlist=["generate"]).generate(
        cli.parse(["generate", "--workdir", str(workdir), "--prompt", "ticket 4: my order is late", "--num", "3",
                   "--beta", "0,8", "--reward", "my_reward:letters", "--max_new_tokens", "5"])[1])
    assert [r["reward"] for r in results] == [float(sum(c.isalpha() for c in r["text"])) for r in results]
    out = capsys.readouterr().out
    prompt_len = len(tokenizers.load_tokenizer(str(workdir / "tokenizer")).encode("<s>ticket 4: my order is late</s>"))
    assert f"room: prompts take up to {prompt_len} of the model's 40 positions, leaving {40 - prompt_len} tokens" in out
    assert "β=0: reward" in out and "β=8: reward" in out  # one summary line per β


def test_a_reward_that_cannot_be_loaded_or_returns_junk_is_one_line(tmp_path, capsys):
    from ilql_jax.cli import reward as reward_lib
    (tmp_path / "bad.py").write_text("def two(a, b, c):\n    return 1\n\ndef text(reply):\n    return 'high'\n")
    for spec, needle in ((f"{tmp_path / 'nowhere.py'}:f", "no such file"),
                         ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
                         (f"{tmp_path / 'bad.py'}:missing", "has no function 'missing'"),
                         (f"{tmp_path / 'bad.py'}:two", "it must take (reply) or (turns, reply)")):
        with pytest.raises(cli.ConfigError, match=None) as e:
            reward_lib.load(spec)
        assert needle in str(e.value) and spec in str(e.value)
    text = reward_lib.load(f"{tmp_path / 'bad.py'}:text")
    with pytest.raises(cli.ConfigError) as e:
        reward_lib.score(text, [[{"role": "env", "text": "p"}]], ["r"], ["the reply to line 7"])
    assert "returned 'high' for the reply to line 7; expected a finite number" in str(e.value)
    # From the command line: exit 2 and one line, before any checkpoint is read.
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--workdir", str(tmp_path / "nowhere"), "--prompt", "hi", "--reward", "nocolon"])
    _one_line_error(capsys, e.value.code, "--reward must be MODULE:FUNCTION")


def test_beta_lists_parse_and_bad_ones_name_the_flag():
    assert options.parse_betas("8") == (8.0,) and options.parse_betas("0,4,16,64") == (0.0, 4.0, 16.0, 64.0)
    assert options.parse_betas("[0, 2.5]") == (0.0, 2.5)
    for bad in ("4,x", "-1", "1,1", "inf"):
        with pytest.raises(ValueError, match="--beta"):
            options.parse_betas(bad)


# --- one rule for a workdir ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_run_refuses_changed_options_unless_a_new_stage_is_forced(trained, tmp_path, capsys):
    workdir, args = copied(trained, tmp_path)
    metrics = (workdir / "ilql" / "metrics.jsonl").read_text()
    refusals = (
        (["--tau", "0.9"], "was trained with --tau 0.7 (this run: 0.9): rerun with its options to resume, add "
                           "--force_new_stage true"),
        (["--tau", "0.9", "--learning_rate", "0.001"], "--learning_rate 0.0003 (this run: 0.001), --tau 0.7"),
        (["--tau", "0.9", "--force_new_stage", "true"], "ILQL in " + str(workdir) + " is finished (step 3); raise "
                                                        "--ilql_steps above 3"),
        (["--bc_learning_rate", "0.01", "--ilql_steps", "5", "--force_new_stage", "true"],
         "--bc_learning_rate 0.01: behaviour cloning in"),
        (["--n_layer", "2", "--force_new_stage", "true"], "--n_layer 1 (see"),  # never changes
        (["--ilql_steps", "2"], "already holds a checkpoint at step 3 of ilql/"),
        (["--bc_steps", "5"], "ILQL has started from that π_β, so BC can no longer change"),
    )
    for flags, needle in refusals:
        with pytest.raises(SystemExit) as e:
            cli.main(["train", *args, *flags])
        _one_line_error(capsys, e.value.code, needle)
    assert (workdir / "ilql" / "metrics.jsonl").read_text() == metrics  # nothing trained, nothing logged
    # Display options change freely; more steps continue the same stage.
    assert cli.main(["train", *args, "--progress", "true", "--log_every", "2"]) == 0
    assert cli.main(["train", *args, "--ilql_steps", "4"]) == 0
    assert json.loads((workdir / "ilql" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    # A forced stage continues from the checkpoint with the new values, and options.json records it.
    capsys.readouterr()
    assert cli.main(["train", *args, "--ilql_steps", "5", "--tau", "0.9", "--force_new_stage", "true"]) == 0
    printed = capsys.readouterr().out
    assert "new stage (--force_new_stage): --tau 0.7 → 0.9, from BC step 3 and ILQL step 4" in printed
    advantage = json.loads((workdir / "advantage.json").read_text())
    grid = ",".join(f"{b:g}" for b in advantage["suggested_betas"])
    assert f"advantage scale (step 5, {advantage['positions']} agent positions" in printed  # printed after training
    assert f"sweep {grid}" in printed and f"Next: ilql-jax sweep --workdir {workdir}" in printed
    saved = json.loads((workdir / "options.json").read_text())
    assert saved["tau"] == 0.9 and saved["stages"] == [{"bc_step": 3, "ilql_step": 4, "changed": {"tau": [0.7, 0.9]}}]
    assert json.loads((workdir / "ilql" / "config.json").read_text())["step"]["loss"]["tau"] == 0.9
    assert advantage["step"] == 5  # the report follows the state
    # The stage's options are now the workdir's: rerunning them resumes (here: finished), the old ones are refused.
    assert cli.main(["train", *args, "--ilql_steps", "5", "--tau", "0.9"]) == 0
    with pytest.raises(SystemExit):
        cli.main(["train", *args, "--ilql_steps", "5"])


def test_every_train_option_has_a_workdir_rule():
    from ilql_jax.cli import train as train_cli
    groups = [set(train_cli.FIXED_FIELDS), set(train_cli.FREE_FIELDS), {"bc_steps", "ilql_steps"},
              set(train_cli.stage_fields())]
    names = {f for f in _fields(options.TrainOptions)}
    assert set().union(*groups) == names and sum(map(len, groups)) == len(names)  # a partition
    assert {"tau", "learning_rate", "bc_learning_rate", "batch_size"} <= set(train_cli.stage_fields())


LOCK_HOLDER = """
import sys, time
from ilql_jax.cli.workdir import claim
with claim(sys.argv[1]):
    print("HELD", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_process_is_locked_out_and_a_stale_lock_is_taken_over(trained, tmp_path, capsys):
    data, _, _ = trained
    workdir = tmp_path / "run"
    args = ["train", "--data", str(data), "--workdir", str(workdir), *TINY]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        _one_line_error(capsys, e.value.code, f"{workdir} is in use by process {holder.pid} on ")
        assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()  # SIGKILL: the holder cannot remove its lock file
        holder.wait()
    assert json.loads((workdir / ".lock").read_text())["pid"] == holder.pid  # a stale lock: its process is gone
    assert cli.main(args) == 0
    assert f"took over the lock of process {holder.pid}" in capsys.readouterr().out
    assert (workdir / "ilql" / "checkpoints" / "3").is_dir() and not (workdir / ".lock").exists()


def test_a_refused_run_leaves_a_used_workdir_as_it_found_it(tmp_path, capsys):
    records = single_turn_records(8) + [{"prompt": "many words " * 40, "response": "r", "reward": 1}]
    data = write_jsonl(tmp_path / "long.jsonl", records)
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(workdir), *TINY])
    _one_line_error(capsys, e.value.code, "line 9: record is")
    assert [p.name for p in workdir.iterdir()] == ["notes.txt"]  # no options.json, tokenizer/ or lock


# --- signals: save, then exit 130 / 143 --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_saves_then_exits_128_plus_its_number(tmp_path, capsys, signum, status):
    import signal
    import time
    data = write_jsonl(tmp_path / "records.jsonl", single_turn_records())
    train_args = ["--data", str(data), "--workdir", str(tmp_path / "run"), *TINY, "--bc_steps", "100000"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ilql_jax", "train", *train_args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # the loop prints "step k: ..." at every log step (log_every 1)
            if line.startswith("step 2:") or time.monotonic() > deadline:
                break
        proc.send_signal(getattr(signal, signum))
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert f"{signum}: stopped after step" in err and "run the same command again to resume" in err
    saved = [int(p.name) for p in (tmp_path / "run" / "bc" / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and not (tmp_path / "run" / ".lock").exists()
    if signum == "SIGINT":  # an unfinished run refuses changed options as a finished one does
        with pytest.raises(SystemExit) as e:
            cli.main(["train", *train_args, "--bc_learning_rate", "0.01"])
        _one_line_error(capsys, e.value.code, "was trained with --bc_learning_rate 0.001 (this run: 0.01)")


def test_experiments_command_line_exits_143_after_a_preemption(capsys):
    from experiments.cli import main
    from ilql_jax.loop import Preempted

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 1

    def run(cfg, workdir):
        raise Preempted("SIGTERM", 7, workdir)

    with pytest.raises(SystemExit) as e:
        main("prog", "doc", Config, {"default": Config()}, run, "w", [])
    assert e.value.code == 143 and "SIGTERM: stopped after step 7" in capsys.readouterr().err


# --- errors that name one thing ------------------------------------------------------------------------------


class NetworkGuard:
    """Records every attempt to open a network connection (name lookups included) and refuses it."""

    def __init__(self, monkeypatch):
        import socket
        self.attempts = []

        def refuse(what):
            def f(*args, **kwargs):
                self.attempts.append((what, args[:1]))
                raise OSError("network is off (test guard)")
            return f
        monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
        monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        monkeypatch.setattr(socket.socket, "connect", refuse("connect"))


def test_a_mistyped_model_fails_at_once_without_touching_the_network(tmp_path, capsys, monkeypatch):
    import time
    guard = NetworkGuard(monkeypatch)
    data = write_jsonl(tmp_path / "ok.jsonl", single_turn_records(8))
    start = time.monotonic()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(tmp_path / "w"), "--model", "scrach"])
    assert time.monotonic() - start < 3
    _one_line_error(capsys, e.value.code, "--model scrach: not one of 'scratch', 'gpt2', 'smollm2-135m-instruct', no such file or directory, "
                                          "and not a hub id (org/name)")
    assert guard.attempts == [] and not (tmp_path / "w").exists()


def test_a_hub_model_without_network_fails_in_seconds_in_one_line(tmp_path, capsys, monkeypatch):
    import time
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    guard = NetworkGuard(monkeypatch)
    data = write_jsonl(tmp_path / "ok.jsonl", single_turn_records(8))
    start = time.monotonic()
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(tmp_path / "w"), "--model", "someorg/somemodel"])
    assert time.monotonic() - start < 5
    _one_line_error(capsys, e.value.code, "--model someorg/somemodel: no such local path, and as a Hugging Face hub "
                                          "id it cannot be fetched: huggingface.co:443 cannot be reached")
    assert guard.attempts == [("create_connection", (("huggingface.co", 443),))]  # one probe, nothing else
    # HF_HUB_OFFLINE=1 says so without any attempt.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(tmp_path / "w"), "--model", "someorg/somemodel"])
    _one_line_error(capsys, e.value.code, "HF_HUB_OFFLINE is set")
    assert len(guard.attempts) == 1


def test_a_directory_given_as_data_is_named_as_one(tmp_path, capsys):
    for command in (["train", "--data", str(tmp_path), "--workdir", str(tmp_path / "w")],
                    ["generate", "--workdir", str(tmp_path / "w"), "--prompts", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            cli.main(command)
        _one_line_error(capsys, e.value.code, f"{tmp_path}: is a directory, not a file")


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--num_layers_unfrozen", "1"], ["--lora_rank", "4"]], ids=["top-1", "lora-4"])
def test_partial_training_from_the_command_line_trains_generates_and_exports(tmp_path, flags):
    """--num_layers_unfrozen / --lora_rank reach both runs; the checkpoints hold no frozen weights, and generate
    and export read the run back whole (its frozen part rebuilt from the base weights)."""
    from ilql_jax.config import TrainConfig, config_from_dict

    data = write_jsonl(tmp_path / "records.jsonl", single_turn_records())
    workdir = tmp_path / "run"
    tiny = list(TINY)
    tiny[tiny.index("--n_layer") + 1] = "2"
    assert cli.main(["train", "--data", str(data), "--workdir", str(workdir), *tiny, *flags]) == 0
    for run in ("bc", "ilql"):
        model = config_from_dict(TrainConfig, json.loads((workdir / run / "config.json").read_text())).step.model
        assert (model.num_layers_unfrozen, model.lora_rank) == ((1, 0) if "--num_layers_unfrozen" in flags else (-1, 4))
    out = tmp_path / "generations.jsonl"
    assert cli.main(["generate", "--workdir", str(workdir), "--prompt", "ticket 1: my order is late", "--beta", "4",
                     "--max_new_tokens", "6", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    # A rerun with another choice is refused: it would change what the checkpoints hold.
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--data", str(data), "--workdir", str(workdir), *tiny])
    assert e.value.code == 2
