"""A trained run as files other tools read: π_β as a Hugging Face model (GPT-2, Llama or Qwen2, as trained), the
value networks as safetensors.

`export_run(directory, tokenizer, model_config, params, target_params, step)` writes::

    model.safetensors, config.json    π_β as GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM (hf_import.export_hf)
    tokenizer.json                    the BPE (the `tokenizers` library's format)
    tokenizer_config.json             for transformers (GPT2TokenizerFast, or PreTrainedTokenizerFast) and
                                      load_tokenizer; a chat model's template as `chat_template`
    special_tokens_map.json           <s> as bos, </a> as eos (a reply ends there), <pad>; for a chat model its own
                                      tokens: the template's stop (e.g. <|im_end|>) as eos, the pad ChatTokenizer chose
    values.safetensors                the value trunk, V/Q heads and target networks (names below)
    values.json                       the manifest: shapes, the trunk's Hugging Face config, how A is formed

Tensor names in values.safetensors: ``value.trunk.<Hugging Face key>`` (the
trunk's own keys, e.g. ``value.trunk.h.0.attn.c_attn.weight`` for GPT-2; the
embedding unpadded), ``value.{v,q1,q2}.{fc,out}.{kernel,bias}`` (MLP heads d → 2d → out
with a ReLU, kernels [in, out]; Q's output axis is the padded vocabulary),
``target.{q1,q2}.…`` and, unless the target reads the online trunk,
``target.trunk.<Hugging Face key>``. `load_values` reads them back into the
parameter trees the sampler takes.

A run that trained part of its trunks (`num_layers_unfrozen`, LoRA) exports
whole trunks: its frozen part plus each trunk's trained part, LoRA adapters
merged into their kernels (W + (α/r)·A·B; `ilql.materialize`). The manifest's
`model` then describes networks with no adapters and nothing frozen (those
fields at their defaults), which is what the files hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from flax import nnx

from ilql_jax import files, roles
from ilql_jax.models import heads, hf_import, ilql
from ilql_jax.models import trunk as trunk_lib

__all__ = ["VALUES_FILE", "VALUES_MANIFEST", "export_run", "load_values"]

VALUES_FILE = "values.safetensors"
VALUES_MANIFEST = "values.json"
FORMAT = "ilql_jax.values/1"


def _trunk_tensors(prefix: str, params: trunk_lib.Params, trunk: trunk_lib.TrunkConfig) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v for k, v in hf_import.params_to_hf(params, trunk).items()}


def _head_tensors(prefix: str, params: nnx.State) -> dict[str, np.ndarray]:
    return {f"{prefix}.{'.'.join(map(str, path))}": np.ascontiguousarray(np.asarray(leaf.value, np.float32))
            for path, leaf in nnx.to_flat_state(params)}


_TRAINING_ONLY = ("num_layers_unfrozen", "lora_rank", "lora_alpha", "lora_targets")


def value_tensors(model_config: ilql.ModelConfig, params: ilql.Params, target_params: ilql.Params
                  ) -> dict[str, np.ndarray]:
    """The value and target networks as flat, named float32 tensors (see the module docstring)."""
    params, target_params = ilql.materialize(model_config, params, target_params)
    trunk = model_config.trunk
    value = roles.value(params)
    out = _trunk_tensors("value.trunk", roles.value_trunk(params), trunk)
    for name in (roles.V, roles.Q1, roles.Q2):
        out.update(_head_tensors(f"value.{name}", value[name]))
    for name, head in zip((roles.Q1, roles.Q2), roles.q_heads(target_params)):
        out.update(_head_tensors(f"target.{name}", head))
    if roles.has_target_trunk(target_params):
        out.update(_trunk_tensors("target.trunk", roles.target_trunk(target_params), trunk))
    return out


def _tokenizer_files(tokenizer, n_positions: int, tokenizer_class: str = "GPT2TokenizerFast") -> dict[str, str]:
    """tokenizer.json and the two JSON files `transformers.AutoTokenizer` reads beside it."""
    hf_tokenizer = getattr(tokenizer, "_tokenizer", None)
    kind = getattr(tokenizer, "kind", None)
    if kind not in ("bpe", "chat") or hf_tokenizer is None:
        raise ValueError(f"export writes BPE tokenizers only; this run's tokenizer is "
                         f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)!r}")
    if kind == "chat":
        # The model's own tokens: a reply ends at the template's stop (e.g. <|im_end|>), which is eos.
        special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.stop_token,
                   "pad_token": tokenizer.pad_token, "unk_token": None}
    else:
        special = {"bos_token": "<s>", "eos_token": "</a>", "pad_token": "<pad>", "unk_token": None}
    config = {
        "kind": kind,  # what ilql_jax.tokenizers.load_tokenizer reads; transformers ignores it
        "tokenizer_class": tokenizer_class,
        "model_max_length": n_positions,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    if kind == "chat":
        config["chat_template"] = tokenizer.chat_template  # AutoTokenizer's apply_chat_template renders it
    return {
        "tokenizer.json": hf_tokenizer.to_str(pretty=True),
        "special_tokens_map.json": json.dumps({k: v for k, v in special.items() if v is not None}, indent=2),
        "tokenizer_config.json": json.dumps(config, indent=2),
    }


def export_run(directory: str | os.PathLike, tokenizer, model_config: ilql.ModelConfig, params: ilql.Params,
               target_params: ilql.Params, step: int) -> None:
    """Writes π_β, the tokenizer and the value networks of an ILQL state into `directory`, each file atomically."""
    directory = os.fspath(directory)
    trunk = model_config.trunk
    params, target_params = ilql.materialize(model_config, params, target_params)
    tensors = value_tensors(model_config, params, target_params)
    config_key, tokenizer_class = hf_import.export_names(trunk)
    manifest = {
        "format": FORMAT,
        "step": int(step),
        config_key: hf_import.config_to_hf(trunk),
        "model": {k: v for k, v in dataclasses.asdict(model_config).items() if k != "trunk" and k not in _TRAINING_ONLY},
        "padded_vocab_size": trunk.padded_vocab_size,
        "advantage": "A(h_t, a) = min(Q̄1, Q̄2)(h_t, a) − V(h_t): Q̄ from the target heads on target.trunk's "
                     "hidden states (value.trunk's when model.target_on_online_trunk), V from value.v on "
                     "value.trunk's; decoding adds β·A to π_β's logits (docs/algorithm.md §5).",
        "heads": "MLP d → 2d → out with a ReLU: fc.kernel [d, 2d], fc.bias [2d], out.kernel [2d, out], out.bias "
                 "[out]; out = 1 for v, padded_vocab_size for q1 and q2 (ids ≥ vocab_size are padding).",
        "tensors": {name: list(t.shape) for name, t in sorted(tensors.items())},
    }
    policy = ilql.policy_params(model_config, params)
    hf_import.export_hf(policy, trunk, directory)
    for name, text in _tokenizer_files(tokenizer, trunk.n_positions, tokenizer_class).items():
        files.atomic_write_text(os.path.join(directory, name), text)
    files.atomic_write_bytes(os.path.join(directory, VALUES_FILE),
                             safetensors.numpy.save(tensors, metadata={"format": FORMAT}))
    files.atomic_write_text(os.path.join(directory, VALUES_MANIFEST), json.dumps(manifest, indent=2,
                                                                                 ensure_ascii=False))


def _heads_from(tensors: dict[str, np.ndarray], prefix: str, like: nnx.State, source: str) -> nnx.State:
    flat = dict(nnx.to_flat_state(like))
    for path, leaf in flat.items():
        name = f"{prefix}.{'.'.join(map(str, path))}"
        if name not in tensors:
            raise ValueError(f"{source}: missing tensor {name!r}")
        if tensors[name].shape != leaf.value.shape:
            raise ValueError(f"{source}: {name} has shape {tensors[name].shape}, expected {leaf.value.shape}")
        flat[path] = leaf.replace(np.asarray(tensors[name], leaf.value.dtype))
    return nnx.from_flat_state(flat)


def _trunk_from(tensors: dict[str, np.ndarray], prefix: str, trunk, source: str) -> trunk_lib.Params:
    sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    return hf_import.params_from_hf(sub, trunk, source=f"{source} ({prefix})")


def load_values(directory: str | os.PathLike, **trunk_overrides: Any
                ) -> tuple[ilql.ModelConfig, ilql.Params, ilql.Params]:
    """`(model_config, value params, target params)` from an `export_run` directory.

    The value params are `{"value": {"trunk", "v", "q1", "q2"}}`; add π_β
    (`hf_import.load_hf(directory)`) as `"policy"` for the sampler.
    """
    directory = os.fspath(directory)
    manifest_path = os.path.join(directory, VALUES_MANIFEST)
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    hf_config = manifest.get("gpt2_config", manifest.get("hf_config"))
    if not isinstance(hf_config, dict):
        raise ValueError(f"{manifest_path}: no 'gpt2_config' or 'hf_config' object")
    trunk = hf_import.config_from_hf(hf_config, **trunk_overrides)
    model_config = ilql.ModelConfig(trunk=trunk, **manifest["model"])
    path = os.path.join(directory, VALUES_FILE)
    tensors = hf_import.read_safetensors(path)
    # Shapes and dtypes only: nothing is initialised.
    like_v = jax.eval_shape(lambda: heads.init_v_head(trunk, jax.random.key(0)))
    like_q = jax.eval_shape(lambda: heads.init_q_head(trunk, jax.random.key(0)))
    value = {roles.TRUNK: _trunk_from(tensors, "value.trunk", trunk, path),
             roles.V: _heads_from(tensors, "value.v", like_v, path),
             roles.Q1: _heads_from(tensors, "value.q1", like_q, path),
             roles.Q2: _heads_from(tensors, "value.q2", like_q, path)}
    target = {roles.Q1: _heads_from(tensors, "target.q1", like_q, path),
              roles.Q2: _heads_from(tensors, "target.q2", like_q, path)}
    if not model_config.target_on_online_trunk:
        target[roles.TRUNK] = _trunk_from(tensors, "target.trunk", trunk, path)
    return model_config, {roles.VALUE: value}, target
