"""The ILQL (and BC) train step and the train state's birth, on one device or on a mesh.

One device: `make_train_step(config)(state, batch) -> (state, metrics)`. On a
mesh (`sharding.py` lays the state out)::

    shardings = sharding.state_shardings(abstract_state(step_cfg), mesh, sharding.logical_rules(mesh_cfg))
    state = init_sharded_state(step_cfg, jax.random.key(0), shardings)  # born sharded; or with weights:
    # weights = hf_import.load_hf(path, shardings=trunk_shardings(shardings))[1]   # GPT-2, Llama, Qwen2
    # state = init_sharded_state(step_cfg, jax.random.key(0), shardings, trunk=weights)
    step = make_sharded_train_step(step_cfg, mesh, shardings)
    for host_batch in batches:                   # this process's rows, as numpy
        state, metrics = step(state, sharding.place_batch(host_batch, mesh))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ilql_jax import losses, roles, sharding, utterance
from ilql_jax.configs import MODES, StepConfig  # noqa: F401  (the config's home)
from ilql_jax.data.batch import Batch
from ilql_jax.models import ilql
from ilql_jax.models import partial as partial_lib
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.state import ILQLState, create_state, learning_rate_schedule, make_optimizer, polyak_update


def init_state(config: StepConfig, key: jax.Array, trunk: trunk_lib.Params | None = None,
               policy: trunk_lib.Params | None = None) -> ILQLState:
    """A fresh state: random or given trunk weights, optimizer state, RNG.

    Under partial training (`ModelConfig.num_layers_unfrozen`, `lora_rank`)
    every trunk starts from the same weights, whose frozen part the state
    holds once (`params["frozen"]`); `policy` must then be None or `trunk`
    itself (the same objects).

    Jitted: run eagerly, every initialiser is its own small compilation
    (seconds on a CPU); as one program it is a single one.
    """
    if partial_lib.is_partial(config.model) and config.mode == "ilql" and same_weights(trunk, policy):
        policy = None
    return _init_state_jit(config, key, trunk, policy)


def same_weights(a: Any, b: Any) -> bool:
    """Whether two weight trees are the same arrays (the same objects, leaf by leaf)."""
    if a is None or b is None:
        return a is b
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return a is b or (len(la) == len(lb) and all(x is y for x, y in zip(la, lb)))


@functools.partial(jax.jit, static_argnums=0)
def _init_state_jit(config: StepConfig, key: jax.Array, trunk: trunk_lib.Params | None,
                    policy: trunk_lib.Params | None) -> ILQLState:
    k_params, k_rng = jax.random.split(key)
    if config.mode == "bc":
        start = policy if policy is not None else trunk
        start = trunk_lib.init(config.model.trunk, k_params) if start is None else start
        params = {roles.POLICY: start}
        if partial_lib.is_partial(config.model):
            frozen, params[roles.POLICY] = partial_lib.split(config.model, start, jax.random.fold_in(k_params, 1))
            params[roles.FROZEN] = frozen
        target = {}
    elif config.mode == "ilql_utt":
        params, target = utterance.init(config.model, k_params, trunk, policy)
    else:
        params, target = ilql.init(config.model, k_params, trunk, policy)
    return create_state(params, target, make_optimizer(config.optim), k_rng, trained_params(config, params))


def trained_params(config: StepConfig, params: Any) -> Any:
    """The online parameters the optimizer moves: all but a frozen π_β and the frozen part of partial
    training (no gradient, no Adam moments)."""
    if config.mode != "bc" and config.model.frozen_policy:
        params = {k: v for k, v in params.items() if k != roles.POLICY}
    if roles.has_frozen(params):
        params = {k: v for k, v in params.items() if k != roles.FROZEN}
    return params


def with_action_capacity(config: StepConfig, action_masks: Mapping[str, np.ndarray], multiple: int = 8) -> StepConfig:
    """`config` with an `action_capacity` that holds every row of these named `[N, T]` action masks.

    None: set to the most actions any row has, rounded up to a multiple of
    `multiple` (at most T). Set: checked, with a ValueError naming the first row
    that holds more (its loss would be NaN).
    """
    counts = {name: np.sum(np.asarray(m) > 0, axis=-1).reshape(-1) for name, m in action_masks.items()}
    if not counts:
        return config
    if config.action_capacity is not None:
        for name, c in counts.items():
            if c.size and c.max() > config.action_capacity:
                row = int(np.argmax(c > config.action_capacity))
                raise ValueError(f"{name} row {row} has {int(c[row])} action positions, more than "
                                 f"step.action_capacity={config.action_capacity}; raise it, or set it to none "
                                 "to fit it to the data")
        return config
    most = max(int(c.max()) if c.size else 0 for c in counts.values())
    length = max(np.shape(m)[-1] for m in action_masks.values())
    return dataclasses.replace(config, action_capacity=min(max(-(-most // multiple) * multiple, multiple), length))


def loss_fn(config: StepConfig, params: Any, target_params: Any, batch: Batch | Mapping[str, jax.Array],
            dropout_key: jax.Array | None, *, every_position: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The scalar loss of one batch and its metrics (docs/algorithm.md §3), computed where the losses read.

    The action states are packed into `config.action_capacity` slots per row
    (`losses.pack_actions`); the vocabulary-sized heads run only there, and the
    target Q̄ only at the taken action (`ilql.apply` with the slots). With
    `every_position` (`reference_loss_fn`), every head runs over the whole
    vocabulary at every position and the same objective reads them there
    (`losses.every_position`): same values and gradients, the yardstick for the
    packed path's exactness and memory. Mode "ilql_utt" has one way only (`utterance.loss_fn`).
    """
    batch = Batch.of(batch)
    if config.mode == "ilql_utt":
        return utterance.loss_fn(config, params, target_params, batch, dropout_key)
    trunk = config.model.trunk
    packed = None if every_position else losses.pack_actions(batch, config.action_capacity)
    slots = losses.every_position(batch) if every_position else packed
    if config.mode == "bc":  # π_β's NLL alone; its LM head runs at the slots only
        hidden = ilql.trunk_runner(config.model, params, batch.tokens, batch.attention_mask)(roles.policy(params),
                                                                                              dropout_key)
        hidden = hidden if every_position else losses.gather_packed(hidden, packed.idx)
        logits = trunk_lib.lm_logits(ilql.lm_head_params(config.model, params), trunk, hidden,
                                     mask_padded=every_position)
        return losses.bc_only_loss(logits, slots, trunk.vocab_size, config.loss.bc_normaliser)
    out = ilql.apply(config.model, params, target_params, batch.tokens, batch.attention_mask, packed, dropout_key)
    if every_position:
        target_q_a, v_next = losses.gather_actions(out.target_q_t, slots.a_k), losses.gather_next(out.v_t, slots.next_k)
    else:
        target_q_a, v_next = out.target_q_t, out.v_next_t
    return losses.ilql_loss(out.q1_t, out.q2_t, target_q_a, out.v_t, v_next, out.pi_logits_t, slots,
                            config.loss_config)


def reference_loss_fn(config: StepConfig, params: Any, target_params: Any, batch: Batch | Mapping[str, jax.Array],
                      dropout_key: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`loss_fn` computed the direct way: every head over the whole vocabulary at every position."""
    return loss_fn(config, params, target_params, batch, dropout_key, every_position=True)


def _after(tree: Any, scalar: jax.Array) -> Any:
    """`tree`, the same values, made to depend on `scalar`: x · (1 + 0·s), which XLA cannot fold (0·s is NaN
    for a non-finite s, and then so is every leaf).

    Used to order the in-place updates. The state is donated, so each weight is
    updated in place, and XLA:CPU runs independent operations concurrently: a
    weight's update does not depend on the backward pass's other read of it (g·Wᵀ
    feeds earlier layers' gradients, not W's), nor a target weight's Polyak update
    on the forward pass's read of it, so without an ordering XLA keeps a copy of
    every such weight for the whole step (1.9 GB at GPT-2 small). The global
    gradient norm depends on every read; updates made to wait for it run in place.
    """
    return jax.tree.map(lambda x: x * (1.0 + 0.0 * scalar).astype(x.dtype), tree)


def train_step(config: StepConfig, state: ILQLState, batch: Batch) -> tuple[ILQLState, dict[str, jax.Array]]:
    """One micro-step: gradients, AdamW (through MultiSteps), and the Polyak update after every
    `target_update_every`-th real optimizer step only (docs/algorithm.md §4)."""
    tx = make_optimizer(config.optim)
    dropout_key = jax.random.fold_in(state.rng, state.step)
    if config.model.trunk.dropout == 0.0:
        dropout_key = None
    trained = trained_params(config, state.params)
    loss = lambda p: loss_fn(config, {**state.params, **p}, state.target_params, batch, dropout_key)
    grads, metrics = jax.grad(loss, has_aux=True)(trained)
    grad_norm = optax.global_norm(grads)
    grads = _after(grads, grad_norm)  # in-place updates: see _after
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    params = {**state.params, **optax.apply_updates(trained, updates)}
    target = state.target_params
    # MultiSteps applies the accumulated update on every grad_accum-th micro-step.
    updated = (state.step + 1) % config.optim.grad_accum == 0
    sync = updated & (((state.step + 1) // config.optim.grad_accum) % config.target_update_every == 0)
    if config.mode != "bc":
        moved = polyak_update(ilql.target_tracked(config.model, params), _after(target, grad_norm),
                              config.polyak_alpha)
        target = jax.tree.map(lambda new, old: jnp.where(sync, new, old), moved, target)
    optimizer_step = state.step // config.optim.grad_accum
    metrics = {**metrics, "grad_norm": grad_norm,
               "learning_rate": jnp.asarray(learning_rate_schedule(config.optim)(optimizer_step), jnp.float32)}
    state = state.replace(step=state.step + 1, params=params, target_params=target, opt_state=opt_state)
    return state, metrics


def make_train_step(config: StepConfig, *, donate: bool = True) -> Callable[[ILQLState, Batch],
                                                                           tuple[ILQLState, dict[str, jax.Array]]]:
    """`(state, batch) -> (state, metrics)`, jitted, with the state donated."""
    return jax.jit(lambda state, batch: train_step(config, state, batch), donate_argnums=(0,) if donate else ())


def make_eval_step(config: StepConfig) -> Callable[[ILQLState, Batch], dict[str, jax.Array]]:
    """Held-out loss metrics, without dropout and without updating anything."""
    return jax.jit(lambda state, batch: loss_fn(config, state.params, state.target_params, batch, None)[1])


def abstract_state(step_config: StepConfig) -> ILQLState:
    """Shapes, dtypes and logical names of a fresh state; allocates nothing."""
    return jax.eval_shape(lambda: init_state(step_config, jax.random.key(0)))


def make_init(step_config: StepConfig, shardings: Any) -> Callable[..., ILQLState]:
    """`init(key, trunk=None, policy=None) -> state`: `init_state` jitted (`.lower` works) with
    `shardings` as its output shardings, so every device computes (or copies) only its own shards of the state.

    `trunk` and `policy` (GPT-2 weights) should already lie on the mesh in
    their own shardings (`trunk_shardings`; `sharding.place`, `hf_import.load_hf_gpt2(...,
    shardings=...)` and `checkpoint.load_policy_from_checkpoint` put them
    there), so that no device ever holds the whole state, nor a whole trunk,
    unless the mesh has one device.
    """
    return jax.jit(lambda key, trunk=None, policy=None: init_state(step_config, key, trunk, policy),
                   out_shardings=shardings)


def make_frozen_init(step_config: StepConfig, shardings: Any) -> Callable[..., Any]:
    """`frozen(key, trunk=None, policy=None)`: the frozen part (`params["frozen"]`) of the state `make_init`
    would build, alone, in its shardings: the same program less what it does not need (partial training's
    resume rebuilds the frozen weights this way)."""
    return jax.jit(lambda key, trunk=None, policy=None:
                   roles.frozen(init_state(step_config, key, trunk, policy).params),
                   out_shardings=roles.frozen(shardings.params))


def init_sharded_state(step_config: StepConfig, key: jax.Array, shardings: Any,
                       trunk: Any = None, policy: Any = None) -> ILQLState:
    """A fresh state, as `init_state` makes it (random, or from `trunk` / `policy` weights),
    built directly in `shardings` (see `make_init`; weights not yet on the mesh are placed first)."""
    if partial_lib.is_partial(step_config.model) and same_weights(trunk, policy):
        policy = None  # one set of starting weights, which placing them would hide
    trunk, policy = (None if w is None else sharding.place(w, trunk_shardings(shardings)) for w in (trunk, policy))
    return make_init(step_config, shardings)(key, trunk, policy)


def trunk_shardings(shardings: ILQLState) -> Any:
    """The shardings of one (plain, whole) trunk's parameters, taken from a state's shardings
    (`sharding.state_shardings`): every trunk of the state (value, target, π_β) is laid out alike. Under partial
    training, the frozen part's and a trunk's trained part's together, less any LoRA adapters: the layout
    of the weights a run starts from."""
    params = shardings.params
    trunk = roles.policy(params) if roles.is_bc(params) else roles.value_trunk(params)
    if roles.has_frozen(params):
        return partial_lib.plain_layout(partial_lib.combine(roles.frozen(params), trunk))
    return trunk


def make_sharded_train_step(step_config: StepConfig, mesh: jax.sharding.Mesh,
                            state_shardings: Any) -> Callable[[ILQLState, Batch],
                                                              tuple[ILQLState, dict[str, jax.Array]]]:
    """`(state, batch) -> (state, metrics)`, jitted with the state donated.

    The state keeps `state_shardings` across steps, the batch comes in as
    `sharding.batch_sharding(mesh)` (use `sharding.place_batch`), activations stay split like
    the batch (`sharding.activation_layout`), and metrics come out replicated, so
    every process can read them.
    """
    replicated = NamedSharding(mesh, P())

    def step(state, batch):
        with sharding.activation_layout(mesh):
            return train_step(step_config, state, batch)

    return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def make_sharded_eval_step(step_config: StepConfig, mesh: jax.sharding.Mesh,
                           state_shardings: Any) -> Callable[[ILQLState, Batch], dict[str, jax.Array]]:
    """`(state, batch) -> metrics` (`make_eval_step`) on the mesh; metrics replicated."""

    def step(state, batch):
        with sharding.activation_layout(mesh):
            return loss_fn(step_config, state.params, state.target_params, batch, None)[1]

    return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=NamedSharding(mesh, P()))
