"""The options of `ilql-jax train`, `generate` and `export`: one frozen dataclass each.

Every field is a command-line flag (`--name value`, nested ones dotted:
`--mesh.fsdp 4`), and `--help` is generated from the `Attributes:` sections
below, so the meaning and default shown there are the ones documented here.
Values are checked here, before any file is read or anything compiles.
"""

from __future__ import annotations

import dataclasses

from ilql_jax.sharding import MeshConfig

__all__ = ["ExportOptions", "GenerateOptions", "TrainOptions", "GENERATE_MODES", "MODES", "TOO_LONG"]

MODES = ("sample", "greedy", "beam", "best_of_n")  # = ilql_jax.sampler.MODES (not imported: --help stays light)
GENERATE_MODES = MODES + ("rerank",)  # rerank: ilql_jax.reranking, for a --per_utterance workdir
TOO_LONG = ("error", "skip")
REWARD_NORMS = ("none", "scale", "zscore")  # = ilql_jax.data.rewards.REWARD_NORMS


def _check_positive(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(obj, name)}")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """`ilql-jax train`: behaviour cloning of π_β, then ILQL starting from it, on your JSONL records.

    The workdir afterwards: `options.json` (these options and the data's
    SHA-256), `tokenizer/`, `bc/` and `ilql/` (each with config.json,
    metrics.jsonl, TensorBoard events in tb/ and checkpoints/). Running the
    same command again resumes from the newest checkpoints; a finished run
    returns at once.

    Attributes:
      data: JSONL file, one record per line: {"prompt", "response", "reward"}, or
        {"turns": [{"role": "env"|"agent", "text", "reward"}, ...], "terminal"} (docs/cli.md).
      workdir: the run's directory (created; reused to resume).
      model: "scratch" (a small GPT-2 shape below and a BPE fitted to the data), "gpt2" (the hub's GPT-2
        weights and tokenizer: needs network) or a local Hugging Face directory of a GPT-2, Llama or Qwen2
        (config.json, safetensors, tokenizer.json; e.g. one `ilql-jax export` wrote), or its hub id.
      tokenizer: model scratch only: "bpe" (a byte-level BPE of bpe_vocab_size ids fitted to the data),
        "symbols" (one id per whitespace-separated symbol of the data, e.g. graph nodes "a f c" or moves
        "e2e4 e7e5"; generations are joined by spaces), "chars" (one id per non-space character; joined
        without spaces), or a directory holding a saved tokenizer (e.g. `symbol_tokenizer([...]).save(dir)`).
      bpe_vocab_size: vocabulary of the fitted BPE (tokenizer bpe only; ≥ 262).
      n_layer: transformer blocks (model scratch only).
      n_embd: model width (model scratch only).
      n_head: attention heads (model scratch only; must divide n_embd).
      max_len: tokens per episode, markup included; longer records follow too_long.
      too_long: "error" (stop, naming the first record longer than max_len) or "skip" (drop and count them).
      eval_fraction: share of the records held out for the evaluation loss (0: none); chosen by seed.
      batch_size: episodes per step.
      bc_steps: steps of behaviour cloning (π_β alone).
      ilql_steps: steps of ILQL after BC.
      bc_learning_rate: AdamW learning rate of BC.
      learning_rate: AdamW learning rate of ILQL.
      tau: expectile τ of the V loss (0.5: single-step RL; larger approaches the best in-data action).
      gamma: per-token discount γ.
      alpha_cql: weight of the CQL term.
      polyak_alpha: target-network update rate (0.005 published, for far more steps).
      reward_norm: "none" (rewards as given), "scale" (r / std) or "zscore" ((r − mean) / std), fitted on the
        training records (ilql_jax.data.rewards; the fitted map goes into options.json). Scaling rewards by 1/s
        scales A by 1/s: generate with β·s to steer as much.
      freeze_policy: keep π_β at the BC result during ILQL (only the values train), so β = 0 decodes exactly BC.
      per_utterance: train per-utterance ILQL (docs/per_utterance.md: one action per utterance, scalar Q read
        at its </a>, gamma per utterance, no CQL) instead of token-level ILQL; generate with --mode rerank.
      dtype: compute dtype: "float32" (CPU) or "bfloat16" (accelerators).
      mesh: the device mesh; the default is data parallelism over every device.
      checkpoint_every: steps between checkpoints (one is always written at the end).
      log_every: steps between train-metric logs.
      seed: data split, initialisation and data order.
      progress: show progress bars.
    """

    data: str
    workdir: str
    model: str = "scratch"
    tokenizer: str = "bpe"
    bpe_vocab_size: int = 2048
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    max_len: int = 128
    too_long: str = "error"
    eval_fraction: float = 0.0
    batch_size: int = 32
    bc_steps: int = 500
    ilql_steps: int = 500
    bc_learning_rate: float = 1e-3
    learning_rate: float = 3e-4
    tau: float = 0.7
    gamma: float = 0.99
    alpha_cql: float = 0.1
    polyak_alpha: float = 0.05
    reward_norm: str = "none"
    freeze_policy: bool = False
    per_utterance: bool = False
    dtype: str = "float32"
    mesh: MeshConfig = MeshConfig()
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if not self.data:
            raise ValueError("--data must name a JSONL file")
        if not self.workdir:
            raise ValueError("--workdir must name a directory")
        if not self.model:
            raise ValueError("--model must be 'scratch', 'gpt2' or a Hugging Face model directory")
        if not self.tokenizer:
            raise ValueError("--tokenizer must be 'bpe', 'symbols', 'chars' or a saved tokenizer's directory")
        if self.tokenizer != "bpe" and self.model != "scratch":
            raise ValueError(f"--tokenizer {self.tokenizer} needs --model scratch (a pretrained model brings its own)")
        if self.too_long not in TOO_LONG:
            raise ValueError(f"--too_long must be one of {TOO_LONG}, got {self.too_long!r}")
        if self.reward_norm not in REWARD_NORMS:
            raise ValueError(f"--reward_norm must be one of {REWARD_NORMS}, got {self.reward_norm!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"--eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_len < 4:
            raise ValueError(f"--max_len must be >= 4, got {self.max_len}")
        _check_positive(self, "batch_size", "bc_steps", "ilql_steps", "n_layer", "n_embd", "n_head",
                        "checkpoint_every", "log_every")
        if self.n_embd % self.n_head:
            raise ValueError(f"--n_embd {self.n_embd} is not divisible by --n_head {self.n_head}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """`ilql-jax generate`: replies from a trained workdir's newest ILQL checkpoint, steered by β·(Q − V).

    Each generation is printed (or written as JSONL to --out) with its log π
    (the steered policy's log-probability of the tokens it chose), log π_β and
    their difference, the KL estimate Σ_t (log π − log π_β) (ILQL_SPEC §5).
    Prompts are decoded in batches of one shape: one compilation per prompt-length bucket.

    Attributes:
      workdir: a directory `ilql-jax train` wrote (its tokenizer/ and ilql/ are read).
      prompt: one prompt text (the env turn the agent replies to); or use prompts.
      prompts: a file of prompts: .jsonl records with "prompt" or "turns" (a history; the agent speaks next), or
        plain text, one prompt per line.
      out: write the generations here as JSONL (default: print them).
      beta: inference β: 0 samples π_β; larger values follow the learned advantages more.
      num: generations per prompt.
      mode: "sample", "greedy", "beam" (the best of num_beams beams), "best_of_n" (of n samples, the one with
        the largest summed advantage), or "rerank" (a --per_utterance workdir: of n samples of π_β, the one
        with the largest Q̄(s, u) + rerank_weight · log π_β(u | s); beta and adv_clip are not used).
      temperature: sampling temperature T.
      top_k: keep the k most likely tokens of π_β (0: off).
      top_p: keep the smallest set of π_β's tokens with this much probability (1: off).
      adv_clip: clip the advantage from above at this value while decoding (none: no clipping).
      max_new_tokens: reply length limit in tokens (the closing </a> included).
      forbid_markup: never emit <s> </s> <a> </eod> <pad> inside a reply (it still ends at </a>); false
        keeps the sampler's distribution, and markup emitted mid-reply is printed as it is.
      num_beams: beam width for mode beam.
      n: samples per generation for modes best_of_n and rerank.
      rerank_weight: w, the weight of log π_β(u | s) in mode rerank's score.
      batch_size: rows decoded at once (the last batch is padded, so every batch has one shape).
      seed: sampling seed.
    """

    workdir: str
    prompt: str | None = None
    prompts: str | None = None
    out: str | None = None
    beta: float = 1.0
    num: int = 1
    mode: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    adv_clip: float | None = None
    max_new_tokens: int = 32
    forbid_markup: bool = False
    num_beams: int = 4
    n: int = 4
    rerank_weight: float = 0.0
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give exactly one of --prompt TEXT and --prompts FILE")
        if self.mode not in GENERATE_MODES:
            raise ValueError(f"--mode must be one of {GENERATE_MODES}, got {self.mode!r}")
        if self.beta < 0:
            raise ValueError(f"--beta must be >= 0, got {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"--top_k must be >= 0, got {self.top_k}")
        _check_positive(self, "num", "max_new_tokens", "num_beams", "n", "batch_size")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """`ilql-jax export`: a trained workdir's networks as files other tools read.

    `out/` gets π_β as a Hugging Face directory of the trained architecture (GPT-2, Llama
    or Qwen2: model.safetensors, config.json, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json: `transformers.AutoTokenizer` and, for GPT-2,
    `FlaxGPT2LMHeadModel.from_pretrained(out)` load it), plus the value networks the sampler adds to it: values.safetensors
    (the value trunk, the V and Q heads, and the target networks) with
    values.json, a manifest of every tensor and how A = min(Q̄1, Q̄2) − V is formed.

    Attributes:
      workdir: a directory `ilql-jax train` wrote.
      out: the directory to write (refused if it exists and is not empty, unless overwrite).
      overwrite: replace an existing out directory.
    """

    workdir: str
    out: str
    overwrite: bool = False
