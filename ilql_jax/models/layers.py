"""What the trunks' modules (`gpt2.py`, `llama.py`) share: parameter annotations, projections and which
carry LoRA adapters, the batch sharding constraint and the KV-cache write; and the one mask of the padded
vocabulary, for the trunks' logits, the Q heads and the losses."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ilql_jax.models import lora as lora_lib

Array = jax.Array


def meta(*names: str | None) -> dict[str, Any]:
    # eager_sharding=False: the names are annotations only; sharding.py applies
    # them (under logical axis rules) when placing the state on a mesh.
    return {"out_sharding": names, "eager_sharding": False}


def linear(cfg: Any, d_in: int, d_out: int, axes: tuple[str, str], rngs: nnx.Rngs,
           lora: lora_lib.LoRASpec | None = None, *, std: float = 0.02, bias: bool = True) -> nnx.Linear:
    """A projection in `cfg`'s dtypes, kernel ~ N(0, std²) (Hugging Face's `_init_weights`), bias 0; with
    `lora`, a `lora.LoRALinear` (the same kernel and bias plus an adapter)."""
    kw = dict(use_bias=bias, kernel_init=nnx.initializers.normal(std), kernel_metadata=meta(*axes),
              bias_metadata=meta(axes[1]), rngs=rngs)
    if lora is not None:
        return lora_lib.LoRALinear(d_in, d_out, spec=lora, axes=axes, dtype=jnp.dtype(cfg.dtype),
                                   param_dtype=jnp.dtype(cfg.param_dtype), **kw)
    return nnx.Linear(d_in, d_out, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), **kw)


def adapted(lora: lora_lib.LoRASpec | None, layer: int, module: str) -> lora_lib.LoRASpec | None:
    """`lora` where it adapts block `layer`'s `module`, else None."""
    return lora if lora is not None and lora.applies(layer, module) else None


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


def write_cache(kv_cache: tuple[Array, Array] | None, k: Array, v: Array, index: Array | None
                ) -> tuple[Array, Array, tuple[Array, Array] | None]:
    """(keys, values, new cache) of one attention call: heads-major [B, H, T, Dh] `k`, `v` written into the
    cache's slots index .. index + T − 1 when there is a cache ([B, H, S, Dh] each), else as they are."""
    if kv_cache is None:
        return k, v, None
    k = jax.lax.dynamic_update_slice(kv_cache[0], k.astype(kv_cache[0].dtype), (0, 0, index, 0))
    v = jax.lax.dynamic_update_slice(kv_cache[1], v.astype(kv_cache[1].dtype), (0, 0, index, 0))
    return k, v, (k, v)


def mask_padded_vocab(logits: Array, vocab_size: int) -> Array:
    """Sets entries of the padded tail of the vocabulary axis (index >= vocab_size) to -inf."""
    if logits.shape[-1] == vocab_size:
        return logits
    valid = jnp.arange(logits.shape[-1]) < vocab_size
    return jnp.where(valid, logits, -jnp.inf)
