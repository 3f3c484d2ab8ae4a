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

Same entry points, same meaning and same `KVCache` as `gpt2.py` (the trunk
interface, `models/trunk.py`): `forward`, `prefill`, `decode_step`,
`lm_logits`, `init`, `abstract_params`, `init_cache`. Position ids count real
tokens only (`gpt2.positions_from_mask`), so left-padded prompts decode as
unpadded ones; packed rows (segment ids in the attention mask) are laid out by
`gpt2.attention_layout`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ilql_jax.models import lora as lora_lib
from ilql_jax.configs import HF_MODEL_TYPES, ROPE_TYPES, LlamaConfig  # noqa: F401  (the config's home)
from ilql_jax.models.gpt2 import (VOCAB_MULTIPLE, KVCache, _adapted, _blocks, attention_layout,  # noqa: F401
                                  mask_padded_vocab, positions_from_mask, shard_batch)

Array = jax.Array
Params = nnx.State

# Parameter names the partial-training split reads (models/partial.py), as gpt2.py's.
BLOCKS = "layers"
FINAL = ("norm", "lm_head")
LORA_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _meta(*names: str | None) -> dict[str, Any]:
    return {"out_sharding": names, "eager_sharding": False}


def _linear(cfg: LlamaConfig, d_in: int, d_out: int, axes: tuple[str, str], bias: bool,
            rngs: nnx.Rngs, lora: lora_lib.LoRASpec | None = None) -> nnx.Linear:
    # Hugging Face's `_init_weights`: N(0, initializer_range² = 0.02²), biases 0.
    kw = dict(use_bias=bias, kernel_init=nnx.initializers.normal(0.02), kernel_metadata=_meta(*axes),
              bias_metadata=_meta(axes[1]), rngs=rngs)
    if lora is not None:  # the same kernel and bias plus an adapter
        return lora_lib.LoRALinear(d_in, d_out, spec=lora, axes=axes, dtype=jnp.dtype(cfg.dtype),
                                   param_dtype=jnp.dtype(cfg.param_dtype), **kw)
    return nnx.Linear(d_in, d_out, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), **kw)


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
        self.q_proj = _linear(cfg, cfg.n_embd, q_out, ("embed", "heads"), cfg.qkv_bias, rngs, at("q_proj"))
        self.k_proj = _linear(cfg, cfg.n_embd, kv_out, ("embed", "heads"), cfg.qkv_bias, rngs, at("k_proj"))
        self.v_proj = _linear(cfg, cfg.n_embd, kv_out, ("embed", "heads"), cfg.qkv_bias, rngs, at("v_proj"))
        self.o_proj = _linear(cfg, q_out, cfg.n_embd, ("heads", "embed"), cfg.o_bias, rngs, at("o_proj"))
        self.attn_dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None, *, rngs=None):
        """x: [B, T, D]; cos, sin: [B, T, Dh]; mask: [B, T, S] bool over keys; kv_cache: ([B, H_kv, S, Dh],) * 2."""
        cfg = self.cfg
        b, t, _ = x.shape
        heads = lambda y, n: y.reshape(b, t, n, cfg.head_dim).transpose(0, 2, 1, 3)  # heads-major, as gpt2.py
        q = apply_rope(heads(self.q_proj(x), cfg.n_head), cos, sin)
        k = apply_rope(heads(self.k_proj(x), cfg.n_kv_head), cos, sin)
        v = heads(self.v_proj(x), cfg.n_kv_head)
        if kv_cache is not None:
            k = jax.lax.dynamic_update_slice(kv_cache[0], k.astype(kv_cache[0].dtype), (0, 0, cache_index, 0))
            v = jax.lax.dynamic_update_slice(kv_cache[1], v.astype(kv_cache[1].dtype), (0, 0, cache_index, 0))
            kv_cache = (k, v)
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
        self.gate_proj = _linear(cfg, cfg.n_embd, cfg.intermediate_size, ("embed", "mlp"), False, rngs, at("gate_proj"))
        self.up_proj = _linear(cfg, cfg.n_embd, cfg.intermediate_size, ("embed", "mlp"), False, rngs, at("up_proj"))
        self.down_proj = _linear(cfg, cfg.intermediate_size, cfg.n_embd, ("mlp", "embed"), False, rngs,
                                 at("down_proj"))

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
    projections it names (`lora.LoRASpec`)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, lora: lora_lib.LoRASpec | None = None):
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(
                cfg.padded_vocab_size, cfg.n_embd, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed"),
                                                     eager_sharding=False), rngs=rngs)
        self.layers = nnx.List([Block(cfg, rngs, i, lora) for i in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(cfg, cfg.n_embd, cfg.padded_vocab_size, ("embed", "vocab"), False, rngs)

    def __call__(self, tokens, positions, mask, cache=None, cache_index=None, *, rngs=None, with_logits=True,
                 start=0, stop=None, residual=None, final=True):
        """Returns (hidden after the final norm [B, T, D] float32, logits [B, T, V_pad] float32 or None, cache).

        A range of blocks, as `gpt2.GPT2.__call__`: blocks [start, stop) on `residual` (None: the
        embeddings); without `final`, the residual stream leaving block stop − 1 in place of hidden.
        """
        cfg = self.cfg
        stop = cfg.n_layer if stop is None else stop
        x = shard_batch(self.embed_tokens(tokens)) if residual is None else residual
        cos, sin = rope_cos_sin(cfg, positions)
        new_cache = []
        for i in range(start, stop):
            kv = None if cache is None else cache[i - start]
            x, kv = _run_block(self.layers[i], x, cos, sin, mask, kv, cache_index, rngs, cfg.remat)
            new_cache.append(kv)
        if not final:
            return x, None, (None if cache is None else new_cache)
        hidden = shard_batch(self.norm(x))
        logits = self.lm_logits(hidden) if with_logits else None
        return hidden, logits, (None if cache is None else new_cache)

    def lm_logits(self, hidden, mask_padded=True):
        """LM head in float32 (the embedding when tied); padded vocabulary entries -inf unless not `mask_padded`."""
        cfg = self.cfg
        h = hidden.astype(cfg.dtype)
        if cfg.tie_word_embeddings:
            w = self.embed_tokens.embedding[...].astype(cfg.dtype)
            logits = jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
        else:
            w = self.lm_head.kernel[...].astype(cfg.dtype)
            logits = jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)
        return mask_padded_vocab(logits, cfg.vocab_size) if mask_padded else logits


def _run_block(block: Block, x, cos, sin, mask, kv_cache, cache_index, rngs, remat: bool):
    """One block, directly or (remat) under `jax.checkpoint` as a pure function of its state (see
    `gpt2._run_block` for why not `nnx.remat`)."""
    if not remat:
        return block(x, cos, sin, mask, kv_cache, cache_index, rngs=rngs)
    graphdef, state = nnx.split(block)
    rng_def, rng_state = (None, None) if rngs is None else nnx.split(rngs)

    def run(state, rng_state, x, cos, sin, mask, kv_cache, cache_index):
        r = None if rng_state is None else nnx.merge(rng_def, rng_state)
        out = nnx.merge(graphdef, state)(x, cos, sin, mask, kv_cache, cache_index, rngs=r)
        return out, (None if r is None else nnx.state(r))

    out, rng_state = jax.checkpoint(run)(state, rng_state, x, cos, sin, mask, kv_cache, cache_index)
    if rngs is not None:
        nnx.update(rngs, rng_state)
    return out


# --- functional API (the trunk interface; see models/trunk.py) ------------------


def init(config: LlamaConfig, key: Array) -> Params:
    """Random parameters as Hugging Face's `LlamaPreTrainedModel._init_weights`: embeddings and linear
    kernels ~ N(0, 0.02²), biases 0, RMSNorm weights 1. Padded vocabulary rows (and LM-head columns) are zero."""
    params = nnx.state(Llama(config, rngs=nnx.Rngs(params=key)), nnx.Param)
    real = jnp.arange(config.padded_vocab_size) < config.vocab_size
    emb = params["embed_tokens"]["embedding"]
    emb.value = jnp.where(real[:, None], emb.value, 0)
    if not config.tie_word_embeddings:
        head = params["lm_head"]["kernel"]
        head.value = jnp.where(real[None, :], head.value, 0)
    return params


@functools.lru_cache(maxsize=None)
def graphdef(config: LlamaConfig, lora: lora_lib.LoRASpec | None = None) -> nnx.GraphDef:
    gdef, _ = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0), lora=lora)))
    return gdef


def abstract_params(config: LlamaConfig, lora: lora_lib.LoRASpec | None = None) -> Params:
    """Parameter shapes and dtypes (with their logical axis metadata), no allocation; with `lora`, the
    adapters' too."""
    return nnx.state(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0), lora=lora)), nnx.Param)


def init_adapters(config: LlamaConfig, lora: lora_lib.LoRASpec, key: Array) -> Params:
    """Fresh adapters (A as PEFT's, B zero) for the projections `lora` names: the LoRA leaves alone."""
    return nnx.state(Llama(config, rngs=nnx.Rngs(params=key), lora=lora), nnx.LoRAParam)


def _model(params: Params, config: LlamaConfig, lora: lora_lib.LoRASpec | None = None) -> Llama:
    return nnx.merge(graphdef(config, lora), params)


def forward(params: Params, config: LlamaConfig, tokens: Array, attention_mask: Array | None = None,
            *, dropout_key: Array | None = None, with_logits: bool = True, lora: lora_lib.LoRASpec | None = None,
            start: int = 0, residual: Array | None = None) -> tuple[Array, Array | None]:
    """Full causal forward pass (or blocks start .. n_layer − 1 on `residual`); arguments and results as
    `gpt2.forward`'s."""
    chex.assert_rank(tokens, 2)
    b, t = tokens.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    chex.assert_equal_shape([tokens, attention_mask])
    _check_length(config, t)
    mask, positions = attention_layout(attention_mask)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    if residual is None and start == 0:
        hidden, logits, _ = _model(params, config, lora)(tokens, positions, mask, rngs=rngs,
                                                         with_logits=with_logits)
        return hidden, logits
    chex.assert_shape(residual, (b, t, config.n_embd))
    hidden, logits, _ = _model(params, config, lora)(None, positions, mask, rngs=rngs,
                                                     with_logits=with_logits, start=start, residual=residual)
    return hidden, logits


def residual_stream(params: Params, config: LlamaConfig, tokens: Array, attention_mask: Array | None = None, *,
                    stop: int, dropout_key: Array | None = None,
                    lora: lora_lib.LoRASpec | None = None) -> Array:
    """The residual stream leaving block stop − 1 (the embedding for stop = 0); as `gpt2.residual_stream`."""
    chex.assert_rank(tokens, 2)
    b, t = tokens.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    chex.assert_equal_shape([tokens, attention_mask])
    _check_length(config, t)
    mask, positions = attention_layout(attention_mask)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    x, _, _ = _model(params, config, lora)(tokens, positions, mask, rngs=rngs,
                                           stop=stop, final=False, with_logits=False)
    return x


def init_cache(config: LlamaConfig, batch_size: int, cache_len: int, n_layers: int | None = None) -> KVCache:
    """An empty cache: per layer [B, n_kv_head, cache_len, head_dim] keys and values (GQA stores only the KV heads)."""
    _check_length(config, cache_len)
    shape = (batch_size, config.n_kv_head, cache_len, config.head_dim)
    dt = jnp.dtype(config.dtype)
    return KVCache(k=[jnp.zeros(shape, dt) for _ in range(config.n_layer if n_layers is None else n_layers)],
                   v=[jnp.zeros(shape, dt) for _ in range(config.n_layer if n_layers is None else n_layers)],
                   key_mask=jnp.zeros((batch_size, cache_len), bool), index=jnp.zeros((), jnp.int32),
                   position=jnp.zeros((batch_size,), jnp.int32))


def _run_cached(params, config, cache: KVCache, tokens, key_mask_new, positions, with_logits=True, **blocks):
    """`blocks`: `start`, `stop`, `residual`, `final` of the model's call (a range of blocks, whose layers `cache` holds)."""
    b, t = tokens.shape
    key_mask = jax.lax.dynamic_update_slice(cache.key_mask, key_mask_new, (0, cache.index))
    s = key_mask.shape[1]
    causal = jnp.arange(s)[None, :] <= (cache.index + jnp.arange(t))[:, None]
    mask = causal[None] & key_mask[:, None, :]
    hidden, logits, kv = _model(params, config)(tokens, positions, mask, list(zip(cache.k, cache.v)), cache.index,
                                                with_logits=with_logits, **blocks)
    new = KVCache(k=[k for k, _ in kv], v=[v for _, v in kv], key_mask=key_mask, index=cache.index + t,
                  position=positions[:, -1] + 1)
    return hidden, logits, new


def prefill(params: Params, config: LlamaConfig, tokens: Array, attention_mask: Array, cache_len: int,
            *, with_logits: bool = True, start: int = 0, stop: int | None = None, residual: Array | None = None,
            final: bool = True) -> tuple[Array, Array | None, KVCache]:
    """Runs a (left-padded) prompt batch into a cache of `cache_len` slots (or a range of blocks); as
    `gpt2.prefill`."""
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, attention_mask])
    b, p = tokens.shape
    if cache_len < p:
        raise ValueError(f"prefill: cache_len={cache_len} is shorter than the prompt length {p}")
    blocks = _blocks(config, start, stop, residual, final)
    n_layers = None if not blocks else (config.n_layer if stop is None else stop) - start
    cache = init_cache(config, b, cache_len, n_layers)
    return _run_cached(params, config, cache, tokens, attention_mask.astype(bool), positions_from_mask(attention_mask),
                       with_logits, **blocks)


def decode_step(params: Params, config: LlamaConfig, cache: KVCache, token: Array, *,
                with_logits: bool = True, start: int = 0, stop: int | None = None, residual: Array | None = None,
                final: bool = True) -> tuple[Array, Array | None, KVCache]:
    """Feeds one token per row; as `gpt2.decode_step`."""
    chex.assert_rank(token, 1)
    b = token.shape[0]
    blocks = _blocks(config, start, stop, None if residual is None else residual[:, None], final)
    hidden, logits, cache = _run_cached(params, config, cache, token[:, None], jnp.ones((b, 1), bool),
                                        cache.position[:, None], with_logits, **blocks)
    return hidden[:, 0], (None if logits is None else logits[:, 0]), cache


def lm_logits(params: Params, config: LlamaConfig, hidden: Array, *, mask_padded: bool = True) -> Array:
    """The LM head on final hidden states: [..., D] → [..., V_pad] float32."""
    return _model(params, config).lm_logits(hidden, mask_padded)


def _check_length(config: LlamaConfig, t: int) -> None:
    if t > config.n_positions:
        raise ValueError(f"sequence length {t} exceeds the model's n_positions={config.n_positions}")
