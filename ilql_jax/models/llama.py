"""Llama-architecture trunk in Flax NNX (Llama 2/3, TinyLlama, SmolLM2, Qwen2), laid out like Hugging Face's.

Parameter names follow `transformers`' `LlamaForCausalLM` (`embed_tokens`,
`layers/i/self_attn/q_proj`, `layers/i/mlp/gate_proj`, `norm`, `lm_head`), so
that `hf_import.py` is a key map (Hugging Face's `nn.Linear` weights are
[out, in]; our kernels are [in, out], so linear weights are transposed there).
Every parameter carries the logical axis names GPT-2's do (`vocab`, `embed`,
`heads`, `mlp`), so `sharding.py`'s rules lay it out with no change.

The block (Touvron et al. 2023; `modeling_llama.py`)::

    x ← x + o_proj(attn(RoPE(q_proj(RMSNorm₁(x))), RoPE(k_proj(·)), v_proj(·)))
    x ← x + down_proj(silu(gate_proj(RMSNorm₂(x))) ⊙ up_proj(RMSNorm₂(x)))

with RMSNorm(x) = w ⊙ x / √(mean(x²) + ε) (statistics in float32), rotary
position embeddings on q and k (`rope_frequencies`: θ^(−2i/d), optionally
rescaled as Llama 3.1 does), grouped-query attention (`n_kv_head` key/value
heads, each shared by n_head / n_kv_head query heads), optional q/k/v biases
(Qwen2) and o_proj bias (Llama's `attention_bias`), and a tied or untied LM head.

The functions of a parameter `State` (forward, prefill, decode step, LM logits,
cache) are the trunk interface's, the same as GPT-2's (`models/trunk.py`):
position ids count real tokens only, so left-padded prompts decode as unpadded
ones, and packed rows (segment ids in the attention mask) attend within their runs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ilql_jax.models import lora as lora_lib
from ilql_jax.configs import HF_MODEL_TYPES, ROPE_TYPES, LlamaConfig  # noqa: F401  (the config's home)
from ilql_jax.models.layers import adapted as _adapted, linear, meta as _meta, shard_batch, write_cache

Array = jax.Array

# Parameter names the partial-training split reads (models/partial.py), as gpt2.py's.
BLOCKS = "layers"
FINAL = ("norm", "lm_head")
LORA_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
VOCAB_PARAMS = ((("embed_tokens", "embedding"), 0), (("lm_head", "kernel"), 1))  # lm_head: untied only


class RMSNorm(nnx.Module):
    """w ⊙ x / √(mean(x²) + ε), the statistics and the product in float32 (`LlamaRMSNorm`)."""

    def __init__(self, cfg: LlamaConfig):
        self.eps = cfg.rms_norm_eps
        self.weight = nnx.Param(jnp.ones((cfg.n_embd,), jnp.dtype(cfg.param_dtype)), **_meta("embed"))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(jnp.float32) * x32


def rope_frequencies(cfg: LlamaConfig) -> np.ndarray:
    """Inverse frequencies θ^(−2i/d), i < d/2, float32, rescaled as `rope_type` says.

    "llama3" (Llama 3.1, transformers' `_compute_llama3_parameters`): with
    wavelength λ = 2π / f, frequencies with λ < L / high_freq_factor are kept,
    those with λ > L / low_freq_factor are divided by `factor`, and those in
    between are interpolated: (1 − s) f / factor + s f with
    s = (L / λ − low) / (high − low), L the original context length.
    """
    d = cfg.head_dim
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32)
                                                      / np.float32(d)))).astype(np.float32)
    if cfg.rope_type == "linear":
        return (inv_freq / np.float32(cfg.rope_factor)).astype(np.float32)
    if cfg.rope_type == "llama3":
        factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old = cfg.rope_original_max_position
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_cos_sin(cfg: LlamaConfig, positions: Array) -> tuple[Array, Array]:
    """cos and sin of position × frequency, [B, T, head_dim] float32 (each frequency twice, as
    `rotate_half` pairs dimension i with i + d/2)."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_frequencies(cfg))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x·cos + rotate_half(x)·sin on [B, H, T, Dh] heads (`apply_rotary_pos_emb`), in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, None] + rotated * sin[:, None]).astype(x.dtype)


class Attention(nnx.Module):
    """Causal grouped-query self-attention with rotary positions and an optional KV cache."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, layer: int = 0, lora: lora_lib.LoRASpec | None = None):
        self.cfg = cfg
        q_out, kv_out = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        at = lambda name: _adapted(lora, layer, "self_attn." + name)
        self.q_proj = linear(cfg, cfg.n_embd, q_out, ("embed", "heads"), rngs, at("q_proj"), bias=cfg.qkv_bias)
        self.k_proj = linear(cfg, cfg.n_embd, kv_out, ("embed", "heads"), rngs, at("k_proj"), bias=cfg.qkv_bias)
        self.v_proj = linear(cfg, cfg.n_embd, kv_out, ("embed", "heads"), rngs, at("v_proj"), bias=cfg.qkv_bias)
        self.o_proj = linear(cfg, q_out, cfg.n_embd, ("heads", "embed"), rngs, at("o_proj"), bias=cfg.o_bias)
        self.attn_dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None, *, rngs=None):
        """x: [B, T, D]; cos, sin: [B, T, Dh]; mask: [B, T, S] bool over keys; kv_cache: ([B, H_kv, S, Dh],) * 2."""
        cfg = self.cfg
        b, t, _ = x.shape
        heads = lambda y, n: y.reshape(b, t, n, cfg.head_dim).transpose(0, 2, 1, 3)  # heads-major, as gpt2.py
        q = apply_rope(heads(self.q_proj(x), cfg.n_head), cos, sin)
        k = apply_rope(heads(self.k_proj(x), cfg.n_kv_head), cos, sin)
        v = heads(self.v_proj(x), cfg.n_kv_head)
        k, v, kv_cache = write_cache(kv_cache, k, v, cache_index)
        # Query head h reads KV head h // G (transformers' repeat_kv): group the query heads instead of
        # repeating the keys and values G times.
        g = cfg.n_head // cfg.n_kv_head
        q = q.reshape(b, cfg.n_kv_head, g, t, cfg.head_dim)
        scores = jnp.einsum("bkgtd,bksd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
        scores = scores / jnp.sqrt(cfg.head_dim).astype(jnp.float32)
        # A finite fill (not -inf) keeps fully masked rows (left padding) NaN-free.
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1)
        weights = self.attn_dropout(weights, deterministic=rngs is None, rngs=rngs).astype(v.dtype)
        y = jnp.einsum("bkgts,bksd->btkgd", weights, v).reshape(b, t, cfg.n_head * cfg.head_dim)
        return self.o_proj(y), kv_cache


class MLP(nnx.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) ⊙ up_proj(x))."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, layer: int = 0, lora: lora_lib.LoRASpec | None = None):
        at = lambda name: _adapted(lora, layer, "mlp." + name)
        d, m = cfg.n_embd, cfg.intermediate_size
        self.gate_proj = linear(cfg, d, m, ("embed", "mlp"), rngs, at("gate_proj"), bias=False)
        self.up_proj = linear(cfg, d, m, ("embed", "mlp"), rngs, at("up_proj"), bias=False)
        self.down_proj = linear(cfg, m, d, ("mlp", "embed"), rngs, at("down_proj"), bias=False)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs, layer: int = 0, lora: lora_lib.LoRASpec | None = None):
        self.input_layernorm = RMSNorm(cfg)
        self.self_attn = Attention(cfg, rngs, layer, lora)
        self.post_attention_layernorm = RMSNorm(cfg)
        self.mlp = MLP(cfg, rngs, layer, lora)

    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None, *, rngs=None):
        dtype = x.dtype
        a, kv_cache = self.self_attn(self.input_layernorm(x).astype(dtype), cos, sin, mask, kv_cache, cache_index,
                                     rngs=rngs)
        x = shard_batch(x + a)
        x = shard_batch(x + self.mlp(self.post_attention_layernorm(x).astype(dtype)))
        return x, kv_cache


class Llama(nnx.Module):
    """Token embedding, `n_layer` blocks, final RMSNorm, tied or untied LM head; with `lora`, adapters on the
    projections it names (`lora.LoRASpec`). Initialised as Hugging Face's `LlamaPreTrainedModel._init_weights`:
    embeddings and linear kernels ~ N(0, 0.02²), biases 0, RMSNorm weights 1."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, lora: lora_lib.LoRASpec | None = None):
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(
                cfg.padded_vocab_size, cfg.n_embd, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed"),
                                                     eager_sharding=False), rngs=rngs)
        self.layers = nnx.List([Block(cfg, rngs, i, lora) for i in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg, cfg.n_embd, cfg.padded_vocab_size, ("embed", "vocab"), rngs, bias=False)

    # The hooks of the trunk interface's forward (`trunk.py`), as `gpt2.GPT2`'s.

    def embed(self, tokens, positions, rngs):
        return shard_batch(self.embed_tokens(tokens))

    def block_inputs(self, positions):
        return rope_cos_sin(self.cfg, positions)

    def final_norm(self, x):
        return self.norm(x)

    def logits(self, hidden):
        """The LM head in float32 (the embedding when tied), unmasked."""
        cfg = self.cfg
        h = hidden.astype(cfg.dtype)
        if cfg.tie_word_embeddings:
            w = self.embed_tokens.embedding[...].astype(cfg.dtype)
            return jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
        w = self.lm_head.kernel[...].astype(cfg.dtype)
        return jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)


MODEL = Llama


def kv_heads(config: LlamaConfig) -> int:
    """Key/value heads a KV cache holds per layer (grouped-query attention stores only these)."""
    return config.n_kv_head
