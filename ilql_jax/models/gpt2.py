"""GPT-2 trunk modules in Flax NNX, laid out like Hugging Face's GPT-2.

Parameter names follow `transformers`' GPT-2 (`wte`, `wpe`, `h/i/ln_1`,
`h/i/attn/c_attn`, ...), so that `hf_import.py` is a key map and nothing more.
Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `mlp`);
`sharding.py` maps them onto mesh axes, so no mesh name appears here.

The functions of a parameter `State` (forward, prefill, decode step, LM logits,
cache) are the trunk interface's, written once for every architecture
(`models/trunk.py`); this module gives them the modules and what is GPT-2's own:
learned position embeddings, layer norms, the fused GELU projection and the tied LM head.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ilql_jax.models import lora as lora_lib
from ilql_jax.configs import VOCAB_MULTIPLE, GPT2Config  # noqa: F401  (the config's home)
from ilql_jax.models.layers import adapted as _adapted, linear, meta as _meta, shard_batch, write_cache

Array = jax.Array

# Parameter names the partial-training split reads (models/partial.py): the blocks' container, the
# parameters after the last block (trained with the top blocks), and the projections LoRA can adapt
# (block-relative paths); the parameters with a padded-vocabulary axis (path, axis).
BLOCKS = "h"
FINAL = ("ln_f",)
LORA_PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
VOCAB_PARAMS = ((("wte", "embedding"), 0),)


def _layer_norm(cfg: GPT2Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Statistics in float32 whatever the compute dtype.
    return nnx.LayerNorm(
            cfg.n_embd, epsilon=cfg.layer_norm_epsilon, dtype=jnp.float32,
            param_dtype=jnp.dtype(cfg.param_dtype), scale_metadata=_meta("embed"),
            bias_metadata=_meta("embed"), rngs=rngs)


class Attention(nnx.Module):
    """Causal multi-head self-attention with an optional KV cache."""

    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs, layer: int = 0, lora: lora_lib.LoRASpec | None = None):
        self.cfg = cfg
        # GPT-2 scales residual projections by 1/sqrt(2 n_layer) at init.
        d, at = cfg.n_embd, lambda name: _adapted(lora, layer, "attn." + name)
        self.c_attn = linear(cfg, d, 3 * d, ("embed", "heads"), rngs, at("c_attn"))
        self.c_proj = linear(cfg, d, d, ("heads", "embed"), rngs, at("c_proj"), std=0.02 / (2 * cfg.n_layer) ** 0.5)
        self.attn_dropout = nnx.Dropout(cfg.dropout)
        self.resid_dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x, mask, kv_cache=None, cache_index=None, *, rngs=None):
        """x: [B, T, D]; mask: [B, T, S] bool over keys; kv_cache: ([B, H, S, Dh],) * 2."""
        cfg = self.cfg
        b, t, _ = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        # Heads-major [B, H, T, Dh]: both attention matmuls then batch over (B, H)
        # with S contiguous per head, so a cached decode step reads the cache as
        # it lies instead of transposing every layer's whole cache per token.
        q, k, v = (y.reshape(b, t, cfg.n_head, cfg.head_dim).transpose(0, 2, 1, 3) for y in (q, k, v))
        k, v, kv_cache = write_cache(kv_cache, k, v, cache_index)
        scores = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(cfg.head_dim).astype(jnp.float32)
        # A finite fill (not -inf) keeps fully masked rows (left padding) NaN-free.
        scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1)
        weights = self.attn_dropout(weights, deterministic=rngs is None, rngs=rngs).astype(v.dtype)
        y = jnp.einsum("bhts,bhsd->bthd", weights, v).reshape(b, t, cfg.n_embd)
        y = self.resid_dropout(self.c_proj(y), deterministic=rngs is None, rngs=rngs)
        return y, kv_cache


def _gelu_linear_fwd(h, kernel, bias):
    # GPT-2's "gelu_new" is the tanh approximation.
    a = jax.nn.gelu(h, approximate=True)
    y = jax.lax.dot_general(a, kernel, (((a.ndim - 1,), (0,)), ((), ())))
    return y + bias, (h, kernel)


def _gelu_linear_bwd(residuals, g):
    h, kernel = residuals
    lead = tuple(range(g.ndim - 1))
    d_a = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    # gelu(h) and its derivative are recomputed here rather than kept from the forward
    # pass. "+ 0·d_a" makes the recomputation depend on the incoming gradient: else
    # XLA:CPU (which drops optimization barriers) may schedule it in the forward pass
    # and keep its [..., 4d] results alive after all. XLA does not fold 0·x (NaN for
    # a non-finite x).
    h = h + 0 * d_a
    c = np.sqrt(2 / np.pi).astype(h.dtype)
    t = jnp.tanh(c * (h + 0.044715 * h ** 3))
    a = h * (0.5 * (1 + t))
    da_dh = 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * c * (1 + 3 * 0.044715 * h * h)
    d_kernel = jax.lax.dot_general(a, g, ((lead, lead), ((), ())))
    return (d_a * da_dh).astype(h.dtype), d_kernel.astype(kernel.dtype), jnp.sum(g, axis=lead).astype(g.dtype)


@jax.custom_vjp
def gelu_linear(h: Array, kernel: Array, bias: Array) -> Array:
    """gelu_tanh(h) @ kernel + bias, with the GELU recomputed in the backward pass.

    Autodiff would keep both h (for GELU's derivative) and gelu(h) (for the
    kernel's gradient), two [..., 4d] tensors a layer; this keeps h only, a third
    of a trunk's activation memory less per token, for one more tanh per
    element in the backward pass (no extra matmul). Same values as
    `jax.nn.gelu(h, approximate=True) @ kernel + bias`, the same gradients up to rounding.
    """
    return _gelu_linear_fwd(h, kernel, bias)[0]


gelu_linear.defvjp(_gelu_linear_fwd, _gelu_linear_bwd)


def _gelu_lora_linear_fwd(scale, h, kernel, bias, lora_a, lora_b):
    a = jax.nn.gelu(h, approximate=True)
    contract = (((a.ndim - 1,), (0,)), ((), ()))
    u = jax.lax.dot_general(a, lora_a, contract)  # [..., r]: kept, it is small
    y = jax.lax.dot_general(a, kernel, contract) + bias + scale * jax.lax.dot_general(u, lora_b, contract)
    return y, (h, kernel, lora_a, lora_b, u)


def _gelu_lora_linear_bwd(scale, residuals, g):
    h, kernel, lora_a, lora_b, u = residuals
    lead = tuple(range(g.ndim - 1))
    last = lambda x: (((x.ndim - 1,), (1,)), ((), ()))
    d_u = scale * jax.lax.dot_general(g, lora_b, last(g))                        # [..., r]
    d_a = jax.lax.dot_general(g, kernel, last(g)) + jax.lax.dot_general(d_u, lora_a, last(d_u))
    h = h + 0 * d_a  # the GELU recomputed after the gradient arrives, as in `_gelu_linear_bwd`
    c = np.sqrt(2 / np.pi).astype(h.dtype)
    t = jnp.tanh(c * (h + 0.044715 * h ** 3))
    a = h * (0.5 * (1 + t))
    da_dh = 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * c * (1 + 3 * 0.044715 * h * h)
    outer = lambda x, y: jax.lax.dot_general(x, y, ((lead, lead), ((), ())))
    return ((d_a * da_dh).astype(h.dtype), outer(a, g).astype(kernel.dtype), jnp.sum(g, axis=lead).astype(g.dtype),
            outer(a, d_u).astype(lora_a.dtype), (scale * outer(u, g)).astype(lora_b.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gelu_lora_linear(scale: float, h: Array, kernel: Array, bias: Array, lora_a: Array, lora_b: Array) -> Array:
    """gelu_tanh(h) @ kernel + bias + scale · (gelu_tanh(h) @ lora_a) @ lora_b: `gelu_linear` with a LoRA
    adapter (`lora.LoRALinear`) on the projection, the GELU again recomputed in the backward pass (only h and
    the rank-wide x·A are kept)."""
    return _gelu_lora_linear_fwd(scale, h, kernel, bias, lora_a, lora_b)[0]


gelu_lora_linear.defvjp(_gelu_lora_linear_fwd, _gelu_lora_linear_bwd)


class MLP(nnx.Module):

    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs, layer: int = 0, lora: lora_lib.LoRASpec | None = None):
        d, at = cfg.n_embd, lambda name: _adapted(lora, layer, "mlp." + name)
        self.c_fc = linear(cfg, d, 4 * d, ("embed", "mlp"), rngs, at("c_fc"))
        self.c_proj = linear(cfg, 4 * d, d, ("mlp", "embed"), rngs, at("c_proj"), std=0.02 / (2 * cfg.n_layer) ** 0.5)
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x, *, rngs=None):
        dtype = jnp.dtype(self.c_proj.dtype)
        # c_proj as nnx.Linear computes it (inputs, kernel and bias in the compute dtype), fused with the GELU.
        h, kernel, bias = (self.c_fc(x).astype(dtype), self.c_proj.kernel[...].astype(dtype),
                           self.c_proj.bias[...].astype(dtype))
        if isinstance(self.c_proj, lora_lib.LoRALinear):
            adapter = self.c_proj.lora
            y = gelu_lora_linear(self.c_proj.scale, h, kernel, bias, adapter.lora_a[...].astype(dtype),
                                 adapter.lora_b[...].astype(dtype))
        else:
            y = gelu_linear(h, kernel, bias)
        return self.dropout(y, deterministic=rngs is None, rngs=rngs)


class Block(nnx.Module):

    def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs, layer: int = 0, lora: lora_lib.LoRASpec | None = None):
        self.ln_1 = _layer_norm(cfg, rngs)
        self.attn = Attention(cfg, rngs, layer, lora)
        self.ln_2 = _layer_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs, layer, lora)

    def __call__(self, x, mask, kv_cache=None, cache_index=None, *, rngs=None):
        dtype = x.dtype
        a, kv_cache = self.attn(self.ln_1(x).astype(dtype), mask, kv_cache, cache_index, rngs=rngs)
        x = shard_batch(x + a)
        x = shard_batch(x + self.mlp(self.ln_2(x).astype(dtype), rngs=rngs))
        return x, kv_cache


class GPT2(nnx.Module):
    """GPT-2: token + position embeddings, `n_layer` blocks, final layer norm, tied LM head; with `lora`,
    adapters on the projections it names (`lora.LoRASpec`).

    Initialised as Hugging Face's GPT-2 (`_init_weights`), the trunk of the authors' code and trlx:
    embeddings and linear kernels ~ N(0, 0.02²), the residual output projections (`attn.c_proj`,
    `mlp.c_proj`) ~ N(0, 0.02² / (2 n_layer)), biases 0, layer norms scale 1 and offset 0.
    """

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs, lora: lora_lib.LoRASpec | None = None):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.wte = nnx.Embed(cfg.padded_vocab_size, cfg.n_embd, dtype=jnp.dtype(cfg.dtype), param_dtype=pdt,
                                                  embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed"), eager_sharding=False),
                                                  rngs=rngs)
        self.wpe = nnx.Embed(cfg.n_positions, cfg.n_embd, dtype=jnp.dtype(cfg.dtype), param_dtype=pdt,
                                                  embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed"), eager_sharding=False),
                                                  rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        self.h = nnx.List([Block(cfg, rngs, i, lora) for i in range(cfg.n_layer)])
        self.ln_f = _layer_norm(cfg, rngs)

    # The hooks of the trunk interface's forward (`trunk.py`): embeddings, each block's extra inputs, the
    # final norm and the LM head (tied: the token embedding), unmasked.

    def embed(self, tokens, positions, rngs):
        x = shard_batch(self.wte(tokens) + self.wpe(positions))
        return self.drop(x, deterministic=rngs is None, rngs=rngs)

    def block_inputs(self, positions):
        return ()

    def final_norm(self, x):
        return self.ln_f(x).astype(jnp.float32)

    def logits(self, hidden):
        cfg = self.cfg
        wte = self.wte.embedding[...]
        return jnp.einsum("...d,vd->...v", hidden.astype(cfg.dtype), wte.astype(cfg.dtype),
                          preferred_element_type=jnp.float32)


MODEL = GPT2


def kv_heads(config: GPT2Config) -> int:
    """Key/value heads a KV cache holds per layer."""
    return config.n_head
