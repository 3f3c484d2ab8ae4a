"""Q and V heads on the value trunk's final hidden states (docs/algorithm.md §2).

V: MLP d → 2d → 1 (ReLU); Q1, Q2: MLP d → 2d → |vocab| (double Q). The Q
output axis is the trunk's padded vocabulary; the losses and the sampler mask
the padded tail.

Initialisation (`HEAD_INITS`, docs/algorithm.md §2) is a choice with measured
consequences: "pytorch" (the default) is `torch.nn.Linear`'s, kernel and bias
~ U(±1/√fan_in), as in the authors' heads and trlx's; "flax" is Flax's default
(lecun-normal kernel, zero bias), which starts Q about 3× larger and, with a
shared trunk, lets the early TD/CQL gradients swamp π_β's (the graph-walk
benchmark, `experiments/graph_walks`, learns about half as well with it).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from ilql_jax.configs import HEAD_INITS  # noqa: F401  (the config's home)
from ilql_jax.models import layers
from ilql_jax.models.trunk import TrunkConfig



def _meta(*names):
    return {"out_sharding": names, "eager_sharding": False}


def _uniform_fan_in(fan_in: int) -> nnx.Initializer:
    """U(±1/√fan_in): `torch.nn.Linear`'s default for its kernel (kaiming-uniform, a = √5) and its bias."""
    bound = fan_in ** -0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _linear(d_in: int, d_out: int, axes: tuple, init: str, **kw) -> nnx.Linear:
    if init not in HEAD_INITS:
        raise ValueError(f"head init must be one of {HEAD_INITS}, got {init!r}")
    if init == "pytorch":
        kw.update(kernel_init=_uniform_fan_in(d_in), bias_init=_uniform_fan_in(d_in))
    return nnx.Linear(d_in, d_out, kernel_metadata=_meta(*axes), bias_metadata=_meta(axes[1]), **kw)


class MLPHead(nnx.Module):
    """d → 2d → out with a ReLU, as in the authors' heads; `init` is one of `HEAD_INITS`."""

    def __init__(self, d: int, out: int, out_axis: str | None, *, dtype: str, param_dtype: str, rngs: nnx.Rngs,
                 init: str = "pytorch"):
        kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype), rngs=rngs)
        self.fc = _linear(d, 2 * d, ("embed", "mlp"), init, **kw)
        self.out = _linear(2 * d, out, ("mlp", out_axis), init, **kw)

    def __call__(self, h):
        """[..., d] in the compute dtype → [..., out] float32.

        The hidden layer runs in the compute dtype; the output matmul
        accumulates in float32 and its bias is added in float32, so Q and V are
        never rounded to the compute dtype (in bfloat16 a step of 2⁻⁷|Q|, which
        β = 16 would turn into logit shifts larger than the advantages).
        """
        x = jax.nn.relu(self.fc(h))
        kernel = self.out.kernel[...].astype(x.dtype)
        y = jnp.einsum("...i,io->...o", x, kernel, preferred_element_type=jnp.float32)
        return y + self.out.bias[...].astype(jnp.float32)


def init_v_head(config: TrunkConfig, key: jax.Array, init: str = "pytorch") -> nnx.State:
    return nnx.state(MLPHead(config.n_embd, 1, None, dtype=config.dtype, param_dtype=config.param_dtype,
                             rngs=nnx.Rngs(params=key), init=init), nnx.Param)


def init_q_head(config: TrunkConfig, key: jax.Array, init: str = "pytorch") -> nnx.State:
    return nnx.state(MLPHead(config.n_embd, config.padded_vocab_size, "vocab", dtype=config.dtype,
                             param_dtype=config.param_dtype, rngs=nnx.Rngs(params=key), init=init), nnx.Param)


@functools.lru_cache(maxsize=None)
def _graphdef(config: TrunkConfig, out: int):
    model = nnx.eval_shape(lambda: MLPHead(config.n_embd, out, None, dtype=config.dtype,
                                           param_dtype=config.param_dtype, rngs=nnx.Rngs(0)))
    return nnx.graphdef(model)


def v_t(params: nnx.State, config: TrunkConfig, hidden: jax.Array) -> jax.Array:
    """V(h_t): [B, T, D] hidden → [B, T] float32."""
    chex.assert_rank(hidden, 3)
    return nnx.merge(_graphdef(config, 1), params)(hidden.astype(config.dtype))[..., 0]


@chex.dataclass(frozen=True)
class VocabMajorQ:
    """A Q head plus its output kernel vocabulary-major, [V_pad, 2d], for a decode step.

    The same function as `head` (`vocab_major`; `q_t` reads either). A step of N ≈ 32 rows is a skinny
    matmul that streams the whole d·V-sized output kernel from memory once; read along its rows (each output's
    2d weights contiguous) it runs 1.3–1.5× faster on XLA:CPU than along the stored [2d, V_pad] layout,
    whose column panels stride across the vocabulary (docs/lean_step.md).
    """

    head: nnx.State    # the head as stored (its hidden layer and output bias are read from here)
    out_t: jax.Array   # [V_pad, 2d] the output kernel transposed, in the compute dtype


def vocab_major(params: nnx.State, config: TrunkConfig) -> VocabMajorQ:
    """One transposed copy of a Q head's output kernel (2d·V_pad values), cast to the compute dtype once
    (not at every step), made once per generation."""
    return VocabMajorQ(head=params, out_t=params["out"]["kernel"][...].T.astype(config.dtype))


def q_t(params: nnx.State | VocabMajorQ, config: TrunkConfig, hidden: jax.Array, a_t: jax.Array | None = None, *,
        mask_padded: bool = True) -> jax.Array:
    """Q(h_t, ·): [..., D] hidden → [..., V_pad] float32, padded entries -inf (left as computed, finite,
    without `mask_padded`, for a consumer that masks them inside a fused reduction:
    `losses.logsumexp_and_gather`).

    One function read in three layouts, all with `MLPHead`'s dtypes (the hidden layer in the compute
    dtype, the output accumulated and biased in float32):

    - a head as stored;
    - a `VocabMajorQ` (a decode step's rows: its output kernel read vocabulary-major, docs/lean_step.md);
    - with actions `a_t` [B, K] in [0, vocab_size), hidden [B, K, D]: Q(h_t)[a_t] alone, [B, K]. The
      first layer runs as usual, then only the output layer's columns a_t (one 2d-long dot per position
      instead of a 2d × V_pad matmul), so no [B, K, V] tensor exists. For the target Q̄, which the loss
      reads at the taken action only.
    """
    vocab_major = isinstance(params, VocabMajorQ)
    head = nnx.merge(_graphdef(config, config.padded_vocab_size), params.head if vocab_major else params)
    if a_t is None and not vocab_major:
        q = head(hidden.astype(config.dtype))
    else:
        z = jax.nn.relu(head.fc(hidden.astype(config.dtype)))
        if a_t is not None:
            chex.assert_rank([hidden, a_t], [3, 2])
            chex.assert_equal_shape_prefix([hidden, a_t], 2)
            dtype = jnp.dtype(config.dtype)
            # Gathered along the kernel's vocabulary axis as it lies ([2d, V_pad]): no transposed copy of the
            # kernel. Cast after the gather, so a compute dtype below param_dtype never copies the whole kernel.
            w_a = jnp.take(head.out.kernel[...], a_t, axis=1).astype(dtype)   # [2d, B, K]
            b_a = jnp.take(head.out.bias[...], a_t).astype(jnp.float32)        # [B, K]
            return jnp.einsum("bkh,hbk->bk", z.astype(dtype), w_a, preferred_element_type=jnp.float32) + b_a
        q = jnp.einsum("...i,oi->...o", z, params.out_t, preferred_element_type=jnp.float32)
        q = q + head.out.bias[...].astype(jnp.float32)
    return layers.mask_padded_vocab(q, config.vocab_size) if mask_padded else q
