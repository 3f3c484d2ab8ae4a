"""One train-state pytree, the optimizer, and the Polyak target update (docs/algorithm.md §4)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ilql_jax.configs import OptimConfig  # noqa: F401  (the config's home)

from ilql_jax.roles import FROZEN


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps, cfg.total_steps)
    if cfg.warmup_steps:
        return optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.constant_schedule(cfg.learning_rate)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW with optional clipping, wrapped in `optax.MultiSteps` when accumulating.

    Without accumulation MultiSteps is left out: its `lax.cond` over the whole
    tree costs compile time (seconds on CPU) and buys nothing.
    """
    tx = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    if cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum).gradient_transformation()
    return tx


@flax.struct.dataclass
class ILQLState:
    """Everything a train step reads and writes.

    Attributes:
      step: micro-steps taken; optimizer steps are step // grad_accum.
      params: online parameters (see `models/ilql.py`; BC mode holds only "policy"). Under partial
        training `params["frozen"]` is the trunks' shared frozen part (models/partial.py), which the
        optimizer, the target update and checkpoints leave out.
      target_params: Polyak target parameters ({} in BC mode).
      opt_state: optimizer state over the trained `params` (all but a frozen π_β).
      rng: base key; step t uses `fold_in(rng, t)`.
    """

    step: jax.Array
    params: Any
    target_params: Any
    opt_state: Any
    rng: jax.Array


def create_state(params: Any, target_params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                 trained: Any = None) -> ILQLState:
    """A step-0 state; the optimizer covers `trained` (default: all of `params`)."""
    return ILQLState(step=jnp.zeros((), jnp.int32), params=params, target_params=target_params,
                     opt_state=tx.init(params if trained is None else trained), rng=rng)


def has_frozen(state: ILQLState) -> bool:
    """Whether `state` (concrete or abstract) holds a frozen part (partial training)."""
    return isinstance(state, ILQLState) and isinstance(state.params, dict) and FROZEN in state.params


def without_frozen(state: ILQLState) -> ILQLState:
    """`state` less its frozen part (what a checkpoint holds); unchanged when it has none."""
    if not has_frozen(state):
        return state
    return state.replace(params={k: v for k, v in state.params.items() if k != FROZEN})


def with_frozen(state: ILQLState, frozen: Any) -> ILQLState:
    """`state` (from `without_frozen`) with its frozen part back."""
    return state.replace(params={**state.params, FROZEN: frozen})


def polyak_update(online: Any, target: Any, alpha: float) -> Any:
    """θ̄ ← α θ + (1 − α) θ̄ (docs/algorithm.md §4), leaf by leaf."""
    return optax.incremental_update(online, target, step_size=alpha)
