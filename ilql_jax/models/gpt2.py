"""GPT-2 trunk in Flax NNX, laid out like Hugging Face's GPT-2.

Parameter names follow `transformers`' GPT-2 (`wte`, `wpe`, `h/i/ln_1`,
`h/i/attn/c_attn`, ...), so that `hf_import.py` is a key map and nothing more.
Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `mlp`);
`sharding.py` maps them onto mesh axes, so no mesh name appears here.

Three entry points, all pure functions of a parameter `State`:

- `forward(params, config, tokens, attention_mask)` → (hidden, logits),
- `prefill(params, config, tokens, attention_mask, cache_len)` → (hidden, logits, cache),
- `decode_step(params, config, cache, token)` → (hidden, logits, cache),
- `lm_logits(params, config, hidden)` → logits (the tied LM head alone).

Prompts may be left-padded and ragged: position ids are counted over real
tokens only, and padded keys are masked, so a left-padded prompt decodes
exactly like the same prompt without padding. A training row may pack several
independent sequences, told apart by segment ids in the attention mask
(`attention_layout`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ilql_jax.models import lora as lora_lib
from ilql_jax.configs import VOCAB_MULTIPLE, GPT2Config  # noqa: F401  (the config's home)

Array = jax.Array
Params = nnx.State

# Parameter names the partial-training split reads (models/partial.py): the blocks' container, the
# parameters after the last block (trained with the top blocks), and the projections LoRA can adapt
# (block-relative paths).
BLOCKS = "h"
FINAL = ("ln_f",)
LORA_PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _meta(*names: str | None) -> dict[str, Any]:
    # eager_sharding=False: the names are annotations only; sharding.py applies
    # them (under logical axis rules) when placing the state on a mesh.
    return {"out_sharding": names, "eager_sharding": False}


def _linear(cfg: GPT2Config, d_in: int, d_out: int, axes: tuple[str, str], std: float, rngs: nnx.Rngs,
            lora: lora_lib.LoRASpec | None = None) -> nnx.Linear:
    """A projection; with `lora`, a `lora.LoRALinear` (the same kernel and bias plus an adapter)."""
    kw = dict(kernel_init=nnx.initializers.normal(std), kernel_metadata=_meta(*axes), bias_metadata=_meta(axes[1]),
              rngs=rngs)
    if lora is not None:
        return lora_lib.LoRALinear(d_in, d_out, spec=lora, axes=axes, dtype=jnp.dtype(cfg.dtype),
                                   param_dtype=jnp.dtype(cfg.param_dtype), **kw)
    return nnx.Linear(d_in, d_out, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), **kw)


def _adapted(lora: lora_lib.LoRASpec | None, layer: int, module: str) -> lora_lib.LoRASpec | None:
    """`lora` where it adapts block `layer`'s `module`, else None."""
    return lora if lora is not None and lora.applies(layer, module) else None


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
        self.c_attn = _linear(cfg, cfg.n_embd, 3 * cfg.n_embd, ("embed", "heads"), 0.02, rngs,
                              _adapted(lora, layer, "attn.c_attn"))
        self.c_proj = _linear(cfg, cfg.n_embd, cfg.n_embd, ("heads", "embed"), 0.02 / (2 * cfg.n_layer) ** 0.5, rngs,
                              _adapted(lora, layer, "attn.c_proj"))
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
        if kv_cache is not None:
            k = jax.lax.dynamic_update_slice(kv_cache[0], k.astype(kv_cache[0].dtype), (0, 0, cache_index, 0))
            v = jax.lax.dynamic_update_slice(kv_cache[1], v.astype(kv_cache[1].dtype), (0, 0, cache_index, 0))
            kv_cache = (k, v)
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
        self.c_fc = _linear(cfg, cfg.n_embd, 4 * cfg.n_embd, ("embed", "mlp"), 0.02, rngs,
                            _adapted(lora, layer, "mlp.c_fc"))
        self.c_proj = _linear(cfg, 4 * cfg.n_embd, cfg.n_embd, ("mlp", "embed"), 0.02 / (2 * cfg.n_layer) ** 0.5, rngs,
                              _adapted(lora, layer, "mlp.c_proj"))
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
    adapters on the projections it names (`lora.LoRASpec`)."""

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

    def __call__(self, tokens, positions, mask, cache=None, cache_index=None, *, rngs=None, with_logits=True,
                 start=0, stop=None, residual=None, final=True):
        """Runs the trunk. Returns (hidden after ln_f [B, T, D] float32, logits [B, T, V_pad] float32 or
        None without `with_logits`, cache).

        A range of blocks (for a frozen bottom shared by several trunks, models/partial.py): blocks
        [start, stop) run on `residual`, the residual stream entering block `start` (None: the
        embeddings, then start is 0); `cache` holds those blocks' layers; without `final` the result is
        the residual stream leaving block stop − 1 (no ln_f, no logits) in place of hidden.
        """
        cfg = self.cfg
        stop = cfg.n_layer if stop is None else stop
        if residual is None:
            x = shard_batch(self.wte(tokens) + self.wpe(positions))
            x = self.drop(x, deterministic=rngs is None, rngs=rngs)
        else:
            x = residual
        new_cache = []
        for i in range(start, stop):
            kv = None if cache is None else cache[i - start]
            x, kv = _run_block(self.h[i], x, mask, kv, cache_index, rngs, cfg.remat)
            new_cache.append(kv)
        if not final:
            return x, None, (None if cache is None else new_cache)
        hidden = shard_batch(self.ln_f(x).astype(jnp.float32))
        logits = self.lm_logits(hidden) if with_logits else None
        return hidden, logits, (None if cache is None else new_cache)

    def lm_logits(self, hidden, mask_padded=True):
        """Tied LM head in float32; padded vocabulary entries -inf, or left as computed (finite)
        without `mask_padded`, for a consumer that masks them inside a fused reduction."""
        cfg = self.cfg
        wte = self.wte.embedding[...]
        logits = jnp.einsum("...d,vd->...v", hidden.astype(cfg.dtype), wte.astype(cfg.dtype), preferred_element_type=jnp.float32)
        return mask_padded_vocab(logits, cfg.vocab_size) if mask_padded else logits


# Set by `batch_layout` while `sharding.py` traces a program on a mesh: rank -> the
# sharding that splits an activation's leading (batch) axis as the batch is. None: no constraint.
_BATCH_LAYOUT: contextvars.ContextVar = contextvars.ContextVar("batch_layout", default=None)


@contextlib.contextmanager
def batch_layout(layout):
    """While tracing under it, `shard_batch(x)` constrains `x` to `layout(x.ndim)` (a `jax.sharding.Sharding`)."""
    token = _BATCH_LAYOUT.set(layout)
    try:
        yield
    finally:
        _BATCH_LAYOUT.reset(token)


def shard_batch(x: Array) -> Array:
    """`x` with its leading (batch) axis kept split like the batch (under `batch_layout`; else `x`).

    Without it, XLA's partitioner may gather a whole batch of activations to
    multiply them by FSDP-sharded weights instead of gathering the weights
    (measured: 25 GiB more per device for one GPT-2 XL layer on 64 devices).
    """
    layout = _BATCH_LAYOUT.get()
    return x if layout is None else jax.lax.with_sharding_constraint(x, layout(x.ndim))


def _run_block(block: Block, x, mask, kv_cache, cache_index, rngs, remat: bool):
    """One block, called directly or (remat) under `jax.checkpoint`.

    The checkpointed call is a pure function of the block's state rather than
    `nnx.remat`: nnx.remat writes the block's variables back after the call,
    which fails for parameters closed over from an outer trace (the target
    trunk runs inside the train step's `jax.grad` without being
    differentiated). The dropout stream is threaded through, so the masks are
    those of the direct call.
    """
    if not remat:
        return block(x, mask, kv_cache, cache_index, rngs=rngs)
    graphdef, state = nnx.split(block)
    rng_def, rng_state = (None, None) if rngs is None else nnx.split(rngs)

    def run(state, rng_state, x, mask, kv_cache, cache_index):
        r = None if rng_state is None else nnx.merge(rng_def, rng_state)
        out = nnx.merge(graphdef, state)(x, mask, kv_cache, cache_index, rngs=r)
        return out, (None if r is None else nnx.state(r))

    out, rng_state = jax.checkpoint(run)(state, rng_state, x, mask, kv_cache, cache_index)
    if rngs is not None:
        nnx.update(rngs, rng_state)
    return out


def mask_padded_vocab(logits: Array, vocab_size: int) -> Array:
    """Sets entries of the padded tail of the vocabulary axis (index >= vocab_size) to -inf."""
    if logits.shape[-1] == vocab_size:
        return logits
    valid = jnp.arange(logits.shape[-1]) < vocab_size
    return jnp.where(valid, logits, -jnp.inf)


# --- functional API -----------------------------------------------------------


def init(config: GPT2Config, key: Array) -> Params:
    """Random GPT-2 parameters, initialised as Hugging Face's GPT-2 (`_init_weights`), the trunk of the
    authors' code and trlx: embeddings and linear kernels ~ N(0, 0.02²), the residual output projections
    (`attn.c_proj`, `mlp.c_proj`) ~ N(0, 0.02² / (2 n_layer)), biases 0, layer norms scale 1 and offset 0.

    Embedding rows of the padded vocabulary are zero: no token id reaches them
    and their logits are masked, so they stay zero and export drops nothing.
    """
    params = nnx.state(GPT2(config, rngs=nnx.Rngs(params=key)), nnx.Param)
    wte = params["wte"]["embedding"]
    wte.value = jnp.where(jnp.arange(wte.value.shape[0])[:, None] < config.vocab_size, wte.value, 0)
    return params


@functools.lru_cache(maxsize=None)
def graphdef(config: GPT2Config, lora: lora_lib.LoRASpec | None = None) -> nnx.GraphDef:
    """The (static) graph definition for a config (with adapters where `lora` says); built abstractly, no FLOPs."""
    gdef, _ = nnx.split(nnx.eval_shape(lambda: GPT2(config, rngs=nnx.Rngs(0), lora=lora)))
    return gdef


def abstract_params(config: GPT2Config, lora: lora_lib.LoRASpec | None = None) -> Params:
    """Parameter shapes and dtypes (with their logical axis metadata), no allocation; with `lora`, the
    adapters' too."""
    return nnx.state(nnx.eval_shape(lambda: GPT2(config, rngs=nnx.Rngs(0), lora=lora)), nnx.Param)


def init_adapters(config: GPT2Config, lora: lora_lib.LoRASpec, key: Array) -> Params:
    """Fresh adapters (A as PEFT's, B zero) for the projections `lora` names: the LoRA leaves alone."""
    return nnx.state(GPT2(config, rngs=nnx.Rngs(params=key), lora=lora), nnx.LoRAParam)


def _model(params: Params, config: GPT2Config, lora: lora_lib.LoRASpec | None = None) -> GPT2:
    return nnx.merge(graphdef(config, lora), params)


def positions_from_mask(attention_mask: Array) -> Array:
    """Position ids counted over real tokens (mask > 0), so left padding does not shift them."""
    return jnp.maximum(jnp.cumsum(attention_mask > 0, axis=-1) - 1, 0).astype(jnp.int32)


def attention_layout(attention_mask: Array) -> tuple[Array, Array]:
    """The causal mask `[B, T, T]` (query, key) and the position ids `[B, T]` of a batch of rows.

    `attention_mask` is 0 on padding and a segment id (≥ 1) on real tokens. A row
    of 0/1 is one sequence (left or right padded). A packed row holds several
    independent sequences, one contiguous run of tokens per id (`data/packing.py`):
    a token attends only to earlier tokens of its own run, and positions restart
    at 0 at the start of each run, so every run computes exactly what it would
    alone in a row of its own. Padding queries see every earlier real key (their
    outputs are never read; the fill keeps them finite).
    """
    chex.assert_rank(attention_mask, 2)
    t = attention_mask.shape[1]
    segment = attention_mask.astype(jnp.int32)
    real = segment > 0
    same = (segment[:, :, None] == segment[:, None, :]) | ~real[:, :, None]
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & real[:, None, :] & same
    # Real tokens before t, and that count at the first token of t's run: their difference is t's position.
    before = jnp.cumsum(real, axis=-1) - 1
    starts = real & (segment != jnp.pad(segment, ((0, 0), (1, 0)))[:, :-1])
    run_start = jax.lax.cummax(jnp.where(starts, before, 0), axis=1)
    return mask, jnp.maximum(before - run_start, 0).astype(jnp.int32)


def forward(params: Params, config: GPT2Config, tokens: Array, attention_mask: Array | None = None,
                        *, dropout_key: Array | None = None, with_logits: bool = True,
                        lora: lora_lib.LoRASpec | None = None, start: int = 0,
                        residual: Array | None = None) -> tuple[Array, Array | None]:
    """Full causal forward pass.

    Args:
        tokens: [B, T] int token ids.
        attention_mask: [B, T], 1 on real tokens (left or right padding both work), or
            segment ids of packed rows (`attention_layout`); None means all real.
        dropout_key: enables dropout when given.
        with_logits: False skips the LM head (logits None), for callers that
            read only the hidden states or only some positions' logits.
        lora: the adapters `params` carry (`lora.LoRASpec`), if any.
        start, residual: run blocks start .. n_layer − 1 on `residual` [B, T, D], the residual stream
            entering block `start` (from `residual_stream`), instead of the whole trunk.

    Returns:
        hidden [B, T, D] (after ln_f, float32) and logits [B, T, V_pad] (float32,
        padded vocabulary entries -inf). hidden[:, t] predicts tokens[:, t + 1].
    """
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


def residual_stream(params: Params, config: GPT2Config, tokens: Array, attention_mask: Array | None = None, *,
                    stop: int, dropout_key: Array | None = None,
                    lora: lora_lib.LoRASpec | None = None) -> Array:
    """The residual stream leaving block stop − 1 (the embeddings for stop = 0): [B, T, D] in the compute
    dtype, what `forward(..., start=stop, residual=...)` continues from. Only the embeddings and blocks
    [0, stop) of `params` are read."""
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


@chex.dataclass
class KVCache:
    """Decoding state of one trunk; a pytree, so it can live in a `lax.while_loop`.

    Attributes:
        k, v: per layer, [B, H, S, Dh] keys and values for S = cache_len slots
            (heads-major, the layout the attention matmuls read).
        key_mask: [B, S] bool, slots holding a real token.
        index: [] int32, next slot to write.
        position: [B] int32, position id of the next token of each row.
    """
    k: list
    v: list
    key_mask: Array
    index: Array
    position: Array


def init_cache(config: GPT2Config, batch_size: int, cache_len: int, n_layers: int | None = None) -> KVCache:
    _check_length(config, cache_len)
    shape = (batch_size, config.n_head, cache_len, config.head_dim)
    dt = jnp.dtype(config.dtype)
    return KVCache(
            k=[jnp.zeros(shape, dt) for _ in range(config.n_layer if n_layers is None else n_layers)],
            v=[jnp.zeros(shape, dt) for _ in range(config.n_layer if n_layers is None else n_layers)],
            key_mask=jnp.zeros((batch_size, cache_len), bool),
            index=jnp.zeros((), jnp.int32),
            position=jnp.zeros((batch_size,), jnp.int32))


def _run_cached(params, config, cache: KVCache, tokens, key_mask_new, positions, with_logits=True, **blocks):
    """`blocks`: `start`, `stop`, `residual`, `final` of the model's call (a range of blocks, whose layers `cache` holds)."""
    b, t = tokens.shape
    key_mask = jax.lax.dynamic_update_slice(cache.key_mask, key_mask_new, (0, cache.index))
    s = key_mask.shape[1]
    # Query at slot index+i sees keys in slots <= index+i that hold real tokens.
    causal = jnp.arange(s)[None, :] <= (cache.index + jnp.arange(t))[:, None]
    mask = causal[None] & key_mask[:, None, :]
    hidden, logits, kv = _model(params, config)(
            tokens, positions, mask, list(zip(cache.k, cache.v)), cache.index, with_logits=with_logits, **blocks)
    new = KVCache(k=[k for k, _ in kv], v=[v for _, v in kv], key_mask=key_mask,
                                index=cache.index + t, position=positions[:, -1] + 1)
    return hidden, logits, new


def prefill(params: Params, config: GPT2Config, tokens: Array, attention_mask: Array,
                        cache_len: int, *, with_logits: bool = True, start: int = 0, stop: int | None = None,
                        residual: Array | None = None, final: bool = True) -> tuple[Array, Array | None, KVCache]:
    """Runs a (left-padded) prompt batch and returns a cache with `cache_len` slots.

    Returns hidden [B, P, D], logits [B, P, V_pad] (None without `with_logits`)
    and the cache; the last column of logits is the distribution over the first new token.

    A range of blocks (a bottom shared by several trunks, models/partial.py): blocks [start, stop) on
    `residual` [B, P, D] (None: the embeddings of `tokens`), the cache holding those blocks' layers;
    without `final`, the residual stream leaving block stop − 1 in place of hidden.
    """
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


def lm_logits(params: Params, config: GPT2Config, hidden: Array, *, mask_padded: bool = True) -> Array:
    """The tied LM head on final hidden states: [..., D] → [..., V_pad] float32, padded entries -inf
    (left as computed without `mask_padded`)."""
    return _model(params, config).lm_logits(hidden, mask_padded)


def decode_step(params: Params, config: GPT2Config, cache: KVCache, token: Array, *,
                with_logits: bool = True, start: int = 0, stop: int | None = None, residual: Array | None = None,
                final: bool = True) -> tuple[Array, Array | None, KVCache]:
    """Feeds one token per row. Returns hidden [B, D], logits [B, V_pad] (None without
    `with_logits`) and the new cache. A range of blocks as `prefill`'s, `residual` [B, D]."""
    chex.assert_rank(token, 1)
    b = token.shape[0]
    blocks = _blocks(config, start, stop, None if residual is None else residual[:, None], final)
    hidden, logits, cache = _run_cached(params, config, cache, token[:, None], jnp.ones((b, 1), bool),
                                        cache.position[:, None], with_logits, **blocks)
    return hidden[:, 0], (None if logits is None else logits[:, 0]), cache


def _blocks(config, start: int, stop: int | None, residual: Array | None, final: bool) -> dict[str, Any]:
    """The block-range keywords of a cached call ({} for the whole trunk, so that call is unchanged)."""
    if start == 0 and stop in (None, config.n_layer) and residual is None and final:
        return {}
    return dict(start=start, stop=stop, residual=residual, final=final)


def _check_length(config: GPT2Config, t: int) -> None:
    if t > config.n_positions:
        raise ValueError(f"sequence length {t} exceeds the model's n_positions={config.n_positions}")


def num_params(params: Params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
