"""The run's configuration dataclasses, on the ground floor: they import the standard library only.

Every frozen dataclass a `TrainConfig` nests lives here, and the sampler's, so that `ilql_jax.config`
(dotted flags, `config.json`) and the `ilql-jax` command's `--help` load no JAX,
Flax, Optax or Orbax. Each is re-exported from the module that uses it
(`models.gpt2.GPT2Config`, `train.StepConfig`, `sharding.MeshConfig`, ...),
where its meaning is documented at length.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["CheckpointConfig", "GPT2Config", "LlamaConfig", "LossConfig", "MeshConfig", "ModelConfig",
           "OptimConfig", "SamplerConfig", "StepConfig"]


# --- trunks (models/gpt2.py, models/llama.py) ------------------------------------------------

# The embedding is padded to a multiple of this, so the vocabulary axis divides mesh axes.
VOCAB_MULTIPLE = 128


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Trunk:
    """What `GPT2Config` and `LlamaConfig` share: the fields both have (documented here, with GPT-2 small's
    defaults; a subclass gives its own as class keywords), their checks, the padded vocabulary and `tiny`.
    Fields are keyword-only: the base's come first, so positions would not follow a subclass's declaration.

    Attributes:
        vocab_size: real vocabulary size (50257 for GPT-2 BPE, 35 for Wordle; a Llama checkpoint's plus any ids
            added for ILQL's markup). The embedding is padded to a multiple of 128; padded logits are -inf.
        n_positions: longest sequence accepted (GPT-2's position embedding; Llama's max_position_embeddings).
        n_embd: model width d (Hugging Face's hidden_size).
        n_layer: number of transformer blocks.
        n_head: attention (for Llama: query) heads; for GPT-2 it must divide `n_embd`.
        dropout: only active when `forward` gets a dropout key. GPT-2: one rate for embedding, attention-weight
            and residual dropout (Hugging Face's embd/attn/resid_pdrop, 0.1 in GPT-2); Llama: attention-weight
            dropout (Hugging Face's attention_dropout, 0 in every Llama).
        dtype: compute dtype: "float32" on CPU, "bfloat16" on accelerators. Logits, softmax, normalisation
            statistics (and Llama's RoPE) stay float32 either way.
        param_dtype: storage dtype of the parameters.
        remat: rematerialise each block in the backward pass (less activation memory, about one more forward).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    dropout: float = 0.1
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __init_subclass__(cls, **defaults):
        """`class LlamaConfig(_Trunk, n_layer=22, ...)`: the subclass's own defaults of fields declared here."""
        super().__init_subclass__()
        for name, value in defaults.items():
            cls.__annotations__[name] = _Trunk.__annotations__[name]
            setattr(cls, name, value)

    def _check(self, positive: tuple[str, ...]) -> None:
        """ValueError naming the field unless shape and `positive` fields are >= 1, dropout in [0, 1), dtypes known."""
        name = type(self).__name__
        for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", *positive):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}: {field} must be >= 1, got {getattr(self, field)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name}: unknown {field} {getattr(self, field)!r}")

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @classmethod
    def tiny(cls, **overrides) -> "_Trunk":
        """A 2-layer, 64-wide shape for tests and smoke runs (4 heads, 256 ids, 128 positions, no dropout)."""
        return cls(**{**dict(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4, dropout=0.0),
                      **overrides})


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config(_Trunk):
    """Shape and numerics of a GPT-2 trunk (the fields it shares with `LlamaConfig` are `_Trunk`'s).

    Attributes:
        layer_norm_epsilon: as in GPT-2.
    """

    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT2Config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        self._check(())

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def gpt2_small(cls, **overrides) -> "GPT2Config":
        """The 124M GPT-2 shape."""
        return cls(**overrides)


ROPE_TYPES = ("default", "linear", "llama3")
HF_MODEL_TYPES = ("llama", "qwen2")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig(_Trunk, vocab_size=32000, n_positions=2048, n_embd=2048, n_layer=22, n_head=32, dropout=0.0):
    """Shape and numerics of a Llama-architecture trunk, read from a Hugging Face `config.json` by
    `hf_import.read_config` (defaults: TinyLlama-1.1B's shape; the fields shared with `GPT2Config` are `_Trunk`'s).

    Attributes:
        n_kv_head: key/value heads (grouped-query attention); must divide n_head.
        head_dim: width of one head (hidden_size // n_head unless the checkpoint says otherwise).
        intermediate_size: SwiGLU hidden width.
        rms_norm_eps: ε of RMSNorm.
        rope_type: "default", "linear" (every frequency / rope_factor) or "llama3" (Llama 3.1's
            wavelength-dependent rescaling, with the four fields after rope_theta).
        rope_theta: RoPE base θ.
        rope_factor: the scaling factor (rope_scaling["factor"]).
        rope_low_freq_factor: Llama 3 scaling's low_freq_factor.
        rope_high_freq_factor: Llama 3 scaling's high_freq_factor.
        rope_original_max_position: Llama 3 scaling's original_max_position_embeddings.
        tie_word_embeddings: the LM head is the embedding (else its own `lm_head`).
        qkv_bias: q, k and v projections have biases (Qwen2; Llama's attention_bias).
        o_bias: the output projection has a bias (Llama's attention_bias; not Qwen2).
        hf_model_type: the Hugging Face model_type written on export ("llama" or "qwen2").
        arch: always "llama": tells this config from a GPT2Config in a saved config.json.
    """

    n_kv_head: int = 4
    head_dim: int = 64
    intermediate_size: int = 5632
    rms_norm_eps: float = 1e-5
    rope_type: str = "default"
    rope_theta: float = 10000.0
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    hf_model_type: str = "llama"
    arch: str = "llama"

    def __post_init__(self):
        self._check(("n_kv_head", "head_dim", "intermediate_size"))
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim={self.head_dim} must be even (RoPE rotates pairs)")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"LlamaConfig: rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}")
        if self.rope_factor <= 0 or self.rope_theta <= 0:
            raise ValueError("LlamaConfig: rope_factor and rope_theta must be > 0")
        if self.rope_type == "llama3" and not self.rope_low_freq_factor < self.rope_high_freq_factor:
            raise ValueError("LlamaConfig: llama3 RoPE scaling needs rope_low_freq_factor < rope_high_freq_factor")
        if self.hf_model_type not in HF_MODEL_TYPES:
            raise ValueError(f"LlamaConfig: hf_model_type must be one of {HF_MODEL_TYPES}, got {self.hf_model_type!r}")
        if self.arch != "llama":
            raise ValueError(f"LlamaConfig: arch must be 'llama', got {self.arch!r}")

    @classmethod
    def tiny(cls, **overrides) -> "LlamaConfig":
        """A 2-layer, 64-wide shape for tests and smoke runs: GQA (4 query heads, 2 KV heads), untied head."""
        return super().tiny(**{**dict(n_kv_head=2, head_dim=16, intermediate_size=128), **overrides})

    @classmethod
    def llama_3_2_1b(cls, **overrides) -> "LlamaConfig":
        """The shape of Llama 3.2 1B (meta-llama/Llama-3.2-1B's config.json): 16 layers, 2048 wide, 32 query and
        8 KV heads, SwiGLU 8192, tied embeddings, RoPE θ = 500000 with Llama 3 scaling (factor 32)."""
        return cls(**{**dict(vocab_size=128256, n_positions=131072, n_embd=2048, n_layer=16, n_head=32, n_kv_head=8,
                             head_dim=64, intermediate_size=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                             rope_type="llama3", rope_factor=32.0, rope_low_freq_factor=1.0,
                             rope_high_freq_factor=4.0, rope_original_max_position=8192,
                             tie_word_embeddings=True), **overrides})


# --- the ILQL networks (models/ilql.py, models/heads.py) -----------------------------------------

HEAD_INITS = ("pytorch", "flax")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which ILQL networks exist.

    Attributes:
      trunk: the trunk's shape (`GPT2Config` or `LlamaConfig`) shared by the value trunk, the target trunk and π_β.
      shared_policy: π_β is the value trunk's LM head (trlx-style; lighter, but
        the value and BC losses then compete for one representation).
      target_on_online_trunk: target Q heads read the online value trunk's
        hidden states (trlx-style; saves a trunk forward) instead of a Polyak
        copy of the trunk.
      frozen_policy: π_β is held fixed where it starts (a BC checkpoint,
        docs/algorithm.md §2): training neither runs it nor updates it, and L_BC is 0.
        Then π_β is exactly the BC baseline, and what decoding adds is β·A.
      head_init: how the V and Q heads start: "pytorch" (kernel and bias
        ~ U(±1/√fan_in), `torch.nn.Linear`'s default, as in the authors' code and
        trlx) or "flax" (lecun-normal kernel, zero bias); see `HEAD_INITS`.
      num_layers_unfrozen: trlx's: only the top k blocks of every trunk train
        (with the final norm and an untied LM head); the embeddings and the
        bottom blocks are frozen, stored once and run once per step for all
        trunks. -1: every block trains; 0: no block (docs/partial_training.md).
      lora_rank: r > 0 adds LoRA adapters (rank r) to the projections
        `lora_targets` names, in the top `num_layers_unfrozen` blocks (every
        block at -1); then every trunk weight is frozen and shared, and only the
        adapters (and the heads) train. 0: no LoRA.
      lora_alpha: α: the adapters' output is scaled by α / r.
      lora_targets: the projections that get adapters: "all", or names as in the
        checkpoint (GPT-2: c_attn, c_proj, c_fc, or attn.c_proj / mlp.c_proj;
        Llama: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj).
    """

    trunk: GPT2Config | LlamaConfig = GPT2Config()
    shared_policy: bool = False
    target_on_online_trunk: bool = False
    frozen_policy: bool = False
    head_init: str = "pytorch"
    num_layers_unfrozen: int = -1
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("all",)

    def __post_init__(self):
        _check_partial(self)
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"ModelConfig.head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.shared_policy and self.frozen_policy:
            raise ValueError("ModelConfig: frozen_policy needs a separate π_β; with shared_policy π_β is the "
                             "value trunk's LM head, which the value losses train")

    @property
    def is_partial(self) -> bool:
        """Whether only part of the trunks trains (so the state has a frozen part; models/partial.py)."""
        return self.num_layers_unfrozen >= 0 or self.lora_rank > 0


def _check_partial(config: ModelConfig) -> None:
    """ValueError (naming the field) unless a `ModelConfig`'s partial-training fields are consistent."""
    n, k = config.trunk.n_layer, config.num_layers_unfrozen
    if not isinstance(k, int) or not -1 <= k <= n:
        raise ValueError(f"ModelConfig.num_layers_unfrozen must be -1 (all) or in [0, n_layer={n}], got {k!r}")
    if not isinstance(config.lora_rank, int) or config.lora_rank < 0:
        raise ValueError(f"ModelConfig.lora_rank must be an int >= 0 (0: no LoRA), got {config.lora_rank!r}")
    if not config.lora_alpha > 0:
        raise ValueError(f"ModelConfig.lora_alpha must be > 0, got {config.lora_alpha!r}")
    if config.lora_rank > 0:
        if k == 0:
            raise ValueError("ModelConfig: lora_rank > 0 with num_layers_unfrozen=0 puts adapters in no block; "
                             "use num_layers_unfrozen=-1 (every block) or >= 1")
        # The targets are checked against the architecture's projections, which its model module names:
        # loaded here only for a LoRA config, so a default config (and --help) stays free of JAX.
        from ilql_jax.models import partial  # noqa: PLC0415
        try:
            partial.lora_spec(config)
        except ValueError as e:
            raise ValueError(f"ModelConfig.{e}") from None


# --- the objective, the optimizer and the train step (losses.py, state.py, train.py) ------------

BC_NORMALISERS = ("agent", "non_pad")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyper-parameters of the ILQL objective (docs/algorithm.md §3, §6).

    Defaults are the authors' Wordle config (τ = 0.7, α_cql = 1e-4);
    Reddit toxicity uses τ = 0.6, α_cql = 0.25; Visual Dialogue τ = 0.8,
    α_cql = 1.0.

    Attributes:
        gamma: per-token discount γ.
        tau: expectile τ of the V loss (0.5 = single-step RL / SARSA values).
        alpha_cql: weight α_cql of the CQL term.
        beta_awac: AWAC temperature of the BC term (0 = plain BC, as published).
            Distinct from the sampler's β.
        vocab_size: real vocabulary size; Q / logits tensors may be padded past
            it on the last axis. ``None``: no padding. In a `StepConfig` leave it
            None: the step takes the trunk's (a different value is refused).
        bc_normaliser: what L_BC's sum is divided by: "agent", the agent tokens
            (ours), or "non_pad", every token the LM predicts (the official
            code's ``awac_loss``; docs/fidelity.md). Same gradient direction
            within a batch; "non_pad" weighs batches with few agent tokens less.
    """

    gamma: float = 0.99
    tau: float = 0.7
    alpha_cql: float = 1e-4
    beta_awac: float = 0.0
    vocab_size: Optional[int] = None
    bc_normaliser: str = "agent"

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"LossConfig.gamma={self.gamma} must be in [0, 1].")
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"LossConfig.tau={self.tau} must be in (0, 1).")
        if self.alpha_cql < 0.0:
            raise ValueError(f"LossConfig.alpha_cql={self.alpha_cql} must be >= 0.")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ValueError(f"LossConfig.vocab_size={self.vocab_size} must be > 0.")
        if self.bc_normaliser not in BC_NORMALISERS:
            raise ValueError(f"LossConfig.bc_normaliser={self.bc_normaliser!r} must be one of {BC_NORMALISERS}.")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW, as in the reference (no schedule, no clipping by default).

    Attributes:
      learning_rate: peak learning rate.
      warmup_steps: linear warm-up from 0 (optimizer steps).
      schedule: "constant" or "cosine" (cosine decays to 0 at `total_steps`).
      total_steps: optimizer steps, needed by "cosine".
      weight_decay: AdamW decoupled weight decay (0 in every published config).
      b1, b2, eps: Adam moments.
      clip_norm: global gradient-norm clip; None for none.
      grad_accum: micro-batches per optimizer step (`optax.MultiSteps`).
    """

    learning_rate: float = 1e-4
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int | None = None
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = None
    grad_accum: int = 1

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"OptimConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.schedule == "cosine" and not self.total_steps:
            raise ValueError("OptimConfig: schedule='cosine' needs total_steps")
        if self.grad_accum < 1:
            raise ValueError(f"OptimConfig.grad_accum must be >= 1, got {self.grad_accum}")


MODES = ("ilql", "ilql_utt", "bc")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the train step computes.

    Attributes:
      mode: "ilql" (value trunk, heads, targets and π_β), "ilql_utt" (per-utterance
        ILQL: the same networks with scalar Q heads, one action per utterance;
        `ilql_jax.utterance`, docs/per_utterance.md) or "bc" (π_β alone: the BC
        and %BC baselines).
      model: which networks exist and their trunk shape.
      loss: γ, τ, α_cql, β_awac, the BC normaliser (the vocabulary size is taken from the trunk).
        In mode "ilql_utt" γ discounts per utterance, and α_cql and β_awac are unused.
      optim: AdamW settings, schedule, clipping, accumulation.
      polyak_alpha: target update rate α (θ̄ ← α θ + (1 − α) θ̄), 0.005 published;
        1.0 is a hard copy (θ̄ ← θ).
      target_update_every: the target moves after every k-th optimizer step
        only (k = 1 published; trlx syncs every 5 steps with α = 0.1, DQN-style
        designs hard-copy every k steps with α = 1).
      action_capacity: action states per row that the step evaluates the
        vocabulary-sized heads at (`losses.pack_actions`); None: the whole row.
        A batch with a row holding more actions gets a NaN loss. The training
        loop sets it from the data when None (`with_action_capacity`).
      end_a_id: the tokenizer's `</a>` id, which ends an utterance; mode
        "ilql_utt" needs it (to find each utterance's end in the token arrays).
    """

    mode: str = "ilql"
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    polyak_alpha: float = 0.005
    target_update_every: int = 1
    action_capacity: int | None = None
    end_a_id: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"StepConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "ilql_utt" and (self.end_a_id is None or self.end_a_id < 0):
            raise ValueError("StepConfig.mode 'ilql_utt' needs end_a_id, the tokenizer's </a> id")
        if self.mode == "ilql_utt" and self.model.is_partial:
            raise ValueError("StepConfig.mode 'ilql_utt' (per-utterance ILQL) trains whole trunks: set "
                             "model.num_layers_unfrozen=-1 and model.lora_rank=0")
        if not 0.0 < self.polyak_alpha <= 1.0:
            raise ValueError(f"StepConfig.polyak_alpha must be in (0, 1], got {self.polyak_alpha}")
        if self.target_update_every < 1:
            raise ValueError(f"StepConfig.target_update_every must be >= 1, got {self.target_update_every}")
        if self.action_capacity is not None and self.action_capacity < 1:
            raise ValueError(f"StepConfig.action_capacity must be >= 1 or None, got {self.action_capacity}")
        vocab = self.model.trunk.vocab_size
        if self.loss.vocab_size not in (None, vocab):  # never silently replaced by `loss_config`
            raise ValueError(f"StepConfig: loss.vocab_size={self.loss.vocab_size} differs from the trunk's "
                             f"vocab_size={vocab}; leave it none, the step takes it from the trunk")

    @property
    def loss_config(self) -> LossConfig:
        return dataclasses.replace(self.loss, vocab_size=self.model.trunk.vocab_size)


# --- devices and checkpoints (sharding.py, checkpoint.py) ------------------------------------

AXES = ("data", "fsdp", "tensor")
# (logical name, mesh axis | tuple of mesh axes | None), in priority order, as
# in `flax.linen.logical_axis_rules`: rules are applied in order, a mesh axis is
# used at most once per array, and a name with no applicable rule is replicated.
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Shape of the device mesh and how parameters are laid out on it.

    Attributes:
      data: pure data-parallel replicas (batch split, parameters replicated
        along this axis). -1 takes all devices the other axes leave.
      fsdp: devices that split the batch and, with `fsdp_params`, also shard
        parameters and optimizer state (ZeRO-3 / FSDP). -1 as for `data`.
      tensor: devices that share a batch slice and shard the "vocab", "heads"
        and "mlp" axes of the parameters (Megatron-style). Keep it within a host.
        -1 as for `data`.
      fsdp_params: shard parameters, target parameters and optimizer state over
        "fsdp" (every matrix along "embed", or "mlp"/"vocab" when it has no
        "embed" axis). False: replicate them over "data" and "fsdp".
      rules: your own logical-axis rules (see `Rules`); when given they replace
        the rules the fields above imply.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    fsdp_params: bool = False
    rules: Rules | None = None

    def __post_init__(self):
        sizes = {name: getattr(self, name) for name in AXES}
        for name, size in sizes.items():
            if not isinstance(size, int) or (size < 1 and size != -1):
                raise ValueError(f"MeshConfig.{name} must be a positive int or -1, got {size!r}")
        if list(sizes.values()).count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {sizes}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When and how train-state checkpoints are written.

    Attributes:
      every_steps: save when the step count is a multiple of this (see
        `Checkpointer.should_save`).
      keep: how many of the most recent checkpoints to keep; older ones are
        deleted after each successful save.
      async_save: write in a background thread, so training continues while
        the files are written; `Checkpointer.wait()` / `close()` block until done.
    """

    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        for name in ("every_steps", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CheckpointConfig.{name} must be an int >= 1, got {value!r}")


# --- decoding (sampler.py) ----------------------------------------------------------------------

DECODE_MODES = ("sample", "greedy", "beam", "best_of_n")
# Where temperature, filtering and the advantage go (docs/algorithm.md §5):
#   "spec":             filter(l / T) + β·A          (the spec's order, default)
#   "adv_first":        filter((l + β·A) / T)
#   "temperature_last": (filter(l) + β·A) / T
ORDERS = ("spec", "adv_first", "temperature_last")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static decoding settings (changing any of them recompiles).

    β, temperature and adv_clip are not here: they are traced arguments of
    `sample`, so sweeping them reuses one compilation.

    Attributes:
      max_new_tokens: generation length limit M (the stop token included).
      mode: "sample", "greedy" (argmax of l'), "beam" (beam search on the
        log-probabilities of softmax(l'); the best beam per prompt) or
        "best_of_n" (n samples per prompt; the one with the largest Σ_t A).
      num_beams: beam width for "beam".
      n: samples per prompt for "best_of_n".
      top_k: keep the k largest logits (0 = off).
      top_p: keep the smallest set of tokens with cumulative probability ≥ p
        (1.0 = off). Applied after top_k.
      order: where temperature, filtering and β·A go; one of `ORDERS`.
      prompt_buckets: prompt lengths are left-padded up to the next bucket, so
        compilation happens once per (batch size, bucket, max_new_tokens).
      debug: also return the perturbed logits l' of every step ([B, M, V_pad]).
      vocab_major_q: decode with a transposed copy of the Q̄ heads' output kernels
        (`heads.vocab_major`), made once per call: 2 · 2d · V_pad more values in
        memory, and on a 2-core CPU a GPT-2-small step about 10% faster at batch 32
        (docs/lean_step.md). False reads the kernels as stored.
    """

    max_new_tokens: int = 32
    mode: str = "sample"
    num_beams: int = 4
    n: int = 4
    top_k: int = 0
    top_p: float = 1.0
    order: str = "spec"
    prompt_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    debug: bool = False
    vocab_major_q: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplerConfig: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.mode not in DECODE_MODES:
            raise ValueError(f"SamplerConfig: mode must be one of {DECODE_MODES}, got {self.mode!r}")
        if self.order not in ORDERS:
            raise ValueError(f"SamplerConfig: order must be one of {ORDERS}, got {self.order!r}")
        if self.num_beams < 1 or self.n < 1 or self.top_k < 0:
            raise ValueError(f"SamplerConfig: need num_beams >= 1, n >= 1, top_k >= 0; got "
                             f"{self.num_beams}, {self.n}, {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplerConfig: top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "prompt_buckets", tuple(sorted(int(b) for b in self.prompt_buckets)))

    @property
    def width(self) -> int:
        """Decoding rows per prompt."""
        return {"beam": self.num_beams, "best_of_n": self.n}.get(self.mode, 1)
