"""Q and V heads on the value trunk's final hidden states (ILQL_SPEC.md §2).

V: MLP d → 2d → 1 (ReLU); Q1, Q2: MLP d → 2d → |vocab| (double Q). The Q
output axis is the trunk's padded vocabulary; the losses and the sampler mask
the padded tail.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from ilql_jax.models import gpt2


def _meta(*names):
    return {"out_sharding": names, "eager_sharding": False}


class MLPHead(nnx.Module):
    """d → 2d → out with a ReLU, as in the authors' heads."""

    def __init__(self, d: int, out: int, out_axis: str | None, *, dtype: str, param_dtype: str, rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype), rngs=rngs)
        self.fc = nnx.Linear(d, 2 * d, kernel_metadata=_meta("embed", "mlp"), bias_metadata=_meta("mlp"), **kw)
        self.out = nnx.Linear(2 * d, out, kernel_metadata=_meta("mlp", out_axis), bias_metadata=_meta(out_axis), **kw)

    def __call__(self, h):
        y = self.out(jax.nn.relu(self.fc(h)))
        return y.astype(jnp.float32)


def init_v_head(config: gpt2.GPT2Config, key: jax.Array) -> nnx.State:
    return nnx.state(MLPHead(config.n_embd, 1, None, dtype=config.dtype, param_dtype=config.param_dtype,
                             rngs=nnx.Rngs(params=key)), nnx.Param)


def init_q_head(config: gpt2.GPT2Config, key: jax.Array) -> nnx.State:
    return nnx.state(MLPHead(config.n_embd, config.padded_vocab_size, "vocab", dtype=config.dtype,
                             param_dtype=config.param_dtype, rngs=nnx.Rngs(params=key)), nnx.Param)


@functools.lru_cache(maxsize=None)
def _graphdef(config: gpt2.GPT2Config, out: int):
    model = nnx.eval_shape(lambda: MLPHead(config.n_embd, out, None, dtype=config.dtype,
                                           param_dtype=config.param_dtype, rngs=nnx.Rngs(0)))
    return nnx.graphdef(model)


def v_t(params: nnx.State, config: gpt2.GPT2Config, hidden: jax.Array) -> jax.Array:
    """V(h_t): [B, T, D] hidden → [B, T] float32."""
    chex.assert_rank(hidden, 3)
    return nnx.merge(_graphdef(config, 1), params)(hidden.astype(config.dtype))[..., 0]


def q_t(params: nnx.State, config: gpt2.GPT2Config, hidden: jax.Array) -> jax.Array:
    """Q(h_t, ·): [B, T, D] hidden → [B, T, V_pad] float32, padded entries -inf."""
    chex.assert_rank(hidden, 3)
    q = nnx.merge(_graphdef(config, config.padded_vocab_size), params)(hidden.astype(config.dtype))
    return gpt2.mask_padded_vocab(q, config.vocab_size)
