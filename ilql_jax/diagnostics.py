"""What value-guided decoding does to π_β: how much of β·A is a sharpening of π_β itself.

The CQL term trains each Q head as the logits of a softmax over the data's actions
(ILQL_SPEC §3), so Q, and A = min(Q̄1, Q̄2) − V with it, grows a component k·log π_β.
Decoding then samples from

    π_β · exp(β·A) = π_β^(1 + β·k) · exp(β·(A − k·log π_β)),

i.e. it lowers π_β's temperature to 1 / (1 + β·k) before the values' own
preferences act. When β·k is not small (k ≳ 1/β) the generations lose diversity
for a reason that has nothing to do with the reward. `advantage_slope` measures k.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ilql_jax.models import gpt2, ilql
from ilql_jax.models import trunk as trunk_lib

__all__ = ["advantage_slope"]


@functools.partial(jax.jit, static_argnums=(0, 5))
def _slopes(model_config: ilql.ModelConfig, online, target, tokens, attention_mask, top_k: int):
    cfg = model_config.trunk
    online, target = ilql.materialize(model_config, online, target)  # whole trunks, as decoding reads them
    out = ilql.apply(model_config, online, target, tokens, attention_mask)
    pi_logits = out.pi_logits_t
    if pi_logits is None:  # a frozen π_β: apply() skips it, since training does not need it
        _, pi_logits = trunk_lib.forward(ilql.policy_params(model_config, online), cfg, tokens, attention_mask)
    v = cfg.vocab_size
    log_pi = jax.nn.log_softmax(pi_logits[..., :v], axis=-1)
    adv = (jnp.minimum(out.target_q1_t, out.target_q2_t) - out.v_t[..., None])[..., :v]
    x, ids = jax.lax.top_k(log_pi, top_k)
    y = jnp.take_along_axis(adv, ids, axis=-1)
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    return jnp.sum(x * y, -1) / jnp.maximum(jnp.sum(x * x, -1), 1e-12)


def advantage_slope(model_config: ilql.ModelConfig, online: ilql.Params, target: ilql.Params, tokens, attention_mask,
                    positions, *, top_k: int = 50) -> np.ndarray:
    """The least-squares slope k of A(h_t, a) on log π_β(a | h_t) over π_β's `top_k` most likely ids, at every
    position where `positions` [B, T] is true (e.g. the states that chose a generated reply's tokens).

    Returns the slopes as a flat float array; their median summarises a model: decoding at β acts on π_β
    like a temperature of 1 / (1 + β·k) (see the module docstring).
    """
    tokens, attention_mask, positions = (np.asarray(a) for a in (tokens, attention_mask, positions))
    chex.assert_rank([tokens, attention_mask, positions], 2)
    chex.assert_equal_shape([tokens, attention_mask, positions])
    top_k = min(top_k, model_config.trunk.vocab_size)
    k = _slopes(model_config, online, target, tokens, attention_mask, top_k)
    return np.asarray(k)[positions.astype(bool)]
