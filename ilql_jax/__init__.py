"""ilql_jax: Implicit Language Q-Learning (Snell et al., ICLR 2023) in JAX/Flax.

Everything a user needs is importable from here (`from ilql_jax import ...`);
the submodules hold the rest. The exports, grouped in the order of a run
(episodes → tokens → configs → training → sampling → checkpoints → devices):

{catalogue}

Exports load on first use (PEP 562): `import ilql_jax` takes milliseconds,
and importing one submodule (e.g. `ilql_jax.tokenizers` in a data-prep
script) does not pull in the others, where importing them all (JAX, Flax,
Optax, Orbax) takes 3-5 s on a 2-core CPU.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# module -> {name: one line on what it is for}. The order is `__all__`'s and the catalogue's.
_EXPORTS: dict[str, dict[str, str]] = {
    # --- Data: your logged text and rewards as episodes, then token-level MDP arrays (docs/algorithm.md §1).
    "ilql_jax.data.episodes": {
        "Segment": "one turn: text, whether the agent spoke it, and its reward",
        "Episode": "a sequence of segments and whether the interaction ended there",
        "env": "an environment segment (a prompt, a parent comment, game feedback)",
        "agent": "an agent segment (an utterance) with its scalar reward",
        "episode_return": "the undiscounted sum of an episode's agent rewards",
        "episodes_to_arrays": "episodes -> [N, max_len] tokens, masks, r_t, next(t), dones for training",
        "prompt_tokens": "a history of segments as the token ids that prompt the agent's next utterance",
    },
    "ilql_jax.data.batch": {"Batch": "those arrays typed, a pytree: the fields a train step reads (`Batch.of`)"},
    "ilql_jax.data.rewards": {
        "fit_reward_norm": "reward standardisation (none / scale / zscore) fitted on training episodes",
        "RewardNorm": "the fitted map r -> (r - shift) / scale; `.apply(episodes)`",
    },
    # --- Tokenizers: markup <s> </s> <a> </a> </eod> and <pad> are one id each.
    "ilql_jax.tokenizers": {
        "gpt2_tokenizer": "GPT-2's BPE (offline by default), or one from a directory or hub id",
        "train_bpe_tokenizer": "a byte-level BPE fitted to your own texts",
        "symbol_tokenizer": "one id per symbol of a small vocabulary (graph nodes, game moves), no merges",
        "hf_tokenizer": "any `tokenizers`-library tokenizer.json (a directory or hub id)",
        "wordle_tokenizer": "the 35-token Wordle vocabulary",
        "gguf_tokenizer": "a GGUF file's own tokenizer and chat template (episodes laid out through the template)",
        "load_tokenizer": "reloads any tokenizer written by its `save(directory)`",
    },
    # --- Configuration: frozen dataclasses, nested; every field is documented on its class.
    "ilql_jax.configs": {
        "GPT2Config": "the GPT-2 trunk's shape and numerics (`GPT2Config.tiny()` for tests)",
        "LlamaConfig": "a Llama-architecture trunk (Llama 2/3, TinyLlama, SmolLM2, Qwen2): GQA, RoPE, SwiGLU",
        "ModelConfig": "which ILQL networks exist: trunk shape, shared π_β, target trunk",
        "LossConfig": "γ, expectile τ, α_cql and β_awac of the ILQL objective",
        "OptimConfig": "AdamW: learning rate, schedule, clipping, gradient accumulation",
        "StepConfig": "what one train step computes: mode ilql, ilql_utt or bc, model, loss, optimizer",
        "MeshConfig": "device mesh (data, fsdp, tensor) and the parameter layout (DP or FSDP)",
        "CheckpointConfig": "how often checkpoints are written and how many are kept",
        "SamplerConfig": "static decoding settings: length, mode, top-k/p, where β·A goes",
    },
    "ilql_jax.config": {
        "TrainConfig": "one training run: the step, batch, length, steps, mesh, init, resume",
        "parse_config": "dotted command-line flags (--step.loss.tau 0.6) -> a config",
        "config_from_dict": "a config from a dict, e.g. a run's config.json",
    },
    # --- Training.
    "ilql_jax.recipe": {"BCThenILQL": "the BC run and the ILQL run that starts from it, as two TrainConfigs"},
    "ilql_jax.loop": {
        "train_and_evaluate": "the training loop: logs, evaluates, checkpoints, resumes; returns the final state",
        "Preempted": "raised after SIGTERM/SIGINT once a checkpoint is saved; rerun to resume",
        "restore_state": "a run's train state from its workdir and config, a frozen part (partial training) rebuilt",
    },
    "ilql_jax.state": {"ILQLState": "the one train-state pytree: step, params, target params, optimizer, RNG"},
    # --- Sampling: π_β's logits plus β·(Q − V) (docs/algorithm.md §5).
    "ilql_jax.sampler": {
        "generate_text": "prompts or histories in, the agent's next utterance as text out",
        "sample": "token arrays in, tokens with log π, log π_β, advantages and KL out",
        "SampleResult": "what `sample` returns, one generation per prompt",
    },
    # --- Per-utterance ILQL (StepConfig mode "ilql_utt"): N samples of π_β, the best by Q̄(s, u) + w·log π_β.
    "ilql_jax.reranking": {
        "rerank_text": "prompts or histories in, the reranked utterance as text out",
        "rerank": "token arrays in, the best of N π_β samples by Q̄(s, u) + w·log π_β out",
        "RerankResult": "what `rerank` returns: the chosen utterance and every candidate's scores",
    },
    # --- Checkpoints and weights.
    "ilql_jax.train": {"abstract_state": "the shapes of a fresh train state, the target to restore into"},
    "ilql_jax.checkpoint": {
        "restore": "a train state from the newest readable checkpoint in a workdir",
        "load_policy_from_checkpoint": "π_β's GPT-2 weights from a run's checkpoint",
        "export_params": "writes a parameter tree alone (orbax), e.g. for serving",
        "load_params": "reads an `export_params` directory back",
    },
    "ilql_jax.models.hf_import": {
        "load_hf": "a Hugging Face GPT-2, Llama or Qwen2 (safetensors directory, sharded or not, or hub id) as weights",
        "export_hf": "our trunk's weights as a directory `transformers` loads",
        "load_hf_gpt2": "a Hugging Face GPT-2 (safetensors directory or hub id) as our config and weights",
        "export_hf_gpt2": "our GPT-2 weights as a directory `transformers` loads",
    },
    "ilql_jax.models.gguf_import": {
        "load_gguf": "a llama.cpp GGUF file (Llama or Qwen2, quantised or not) as our config and float weights",
    },
    "ilql_jax.pretrained": {
        "resolve_model": "a model name (smollm2-135m-instruct) as its local file: installed, cached or fetched once",
    },
    # --- Several devices and hosts (docs/accelerators.md).
    "ilql_jax.distributed": {
        "maybe_initialize_distributed": "jax.distributed.initialize() when this is one process of several",
    },
}

_MODULES = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULES)

if __doc__:  # None under python -OO
    __doc__ = __doc__.format(catalogue="\n".join(f"    {name:30}{line}" for names in _EXPORTS.values()
                                                  for name, line in names.items()))


def __getattr__(name: str) -> Any:
    """Imports an export's module on first access and caches the object here."""
    if name not in _MODULES:
        raise AttributeError(f"module 'ilql_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs, which do not run __getattr__
    from ilql_jax.checkpoint import export_params, load_params, load_policy_from_checkpoint, restore
    from ilql_jax.config import TrainConfig, config_from_dict, parse_config
    from ilql_jax.configs import (CheckpointConfig, GPT2Config, LlamaConfig, LossConfig, MeshConfig, ModelConfig,
                                  OptimConfig, SamplerConfig, StepConfig)
    from ilql_jax.data.batch import Batch
    from ilql_jax.data.episodes import (Episode, Segment, agent, env, episode_return, episodes_to_arrays,
                                        prompt_tokens)
    from ilql_jax.data.rewards import RewardNorm, fit_reward_norm
    from ilql_jax.distributed import maybe_initialize_distributed
    from ilql_jax.loop import Preempted, restore_state, train_and_evaluate
    from ilql_jax.models.gguf_import import load_gguf
    from ilql_jax.models.hf_import import export_hf, export_hf_gpt2, load_hf, load_hf_gpt2
    from ilql_jax.pretrained import resolve_model
    from ilql_jax.recipe import BCThenILQL
    from ilql_jax.reranking import RerankResult, rerank, rerank_text
    from ilql_jax.sampler import SampleResult, generate_text, sample
    from ilql_jax.state import ILQLState
    from ilql_jax.train import abstract_state
    from ilql_jax.tokenizers import (gguf_tokenizer, gpt2_tokenizer, hf_tokenizer, load_tokenizer, symbol_tokenizer,
                                     train_bpe_tokenizer, wordle_tokenizer)
