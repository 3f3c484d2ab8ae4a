"""The ILQL networks as parameter pytrees (docs/algorithm.md §2).

Online parameters::

    {"value":  {"trunk": trunk, "v": V head, "q1": Q head, "q2": Q head},
     "policy": trunk}                      # π_β; absent when shared_policy

Target parameters (a Polyak copy, no target V)::

    {"trunk": trunk, "q1": Q head, "q2": Q head}   # "trunk" absent when target_on_online_trunk

All trunks start from one trunk parameter tree (random or imported); π_β may
start from its own (a BC checkpoint).

Partial training (`num_layers_unfrozen`, LoRA; models/partial.py): every
"trunk" above is then that trunk's trained part (its top blocks, or its LoRA
adapters), and the frozen rest, the same weights for all three, is stored
once as ``online["frozen"]``, which neither the optimizer nor the target
update touches. The forwards run the shared frozen bottom once and each
trunk's top from its output; `materialize` gives whole plain trunks back.

The trunks' hidden states come from one place (`hiddens`), and `apply` reads the
heads on them at every position (the direct computation, kept as the reference
and for diagnostics) or only where the losses read them (the train step's; see
docs/lean_step.md). Dropout in the target trunk is off: the reference leaves it
on, but a noisy target only adds variance to Q̄.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ilql_jax import losses, roles
from ilql_jax.models import heads, partial as partial_lib, trunk as trunk_lib
from ilql_jax.configs import ModelConfig  # noqa: F401  (the config's home)

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The ILQL networks read at K slots per row: every position (K = T, slot k is position k), or the
    action states `losses.pack_actions` packed (where the train step's losses read)."""

    q1_t: jax.Array                # [B, K, V_pad], online
    q2_t: jax.Array
    target_q_t: jax.Array          # min(Q̄1, Q̄2), no gradient: [B, T, V_pad]; packed, at a_k alone: [B, K]
    v_t: jax.Array                 # [B, K] V(h_t), online
    pi_logits_t: jax.Array | None  # [B, K, V_pad], π_β; None when frozen
    v_next_t: jax.Array | None     # packed: [B, K] V(h_next(t)), online, no gradient; else None (v_t at next(t))


def init(config: ModelConfig, key: jax.Array, trunk: trunk_lib.Params | None = None,
         policy: trunk_lib.Params | None = None) -> tuple[Params, Params]:
    """Online and target parameters.

    Args:
      trunk: GPT-2 parameters every trunk starts from (random when None).
      policy: π_β's own starting parameters (e.g. a BC checkpoint); defaults to `trunk`.
    """
    k_trunk, k_v, k_q1, k_q2 = jax.random.split(key, 4)
    cfg = config.trunk
    trunk = trunk_lib.init(cfg, k_trunk) if trunk is None else trunk
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # distinct buffers, so donation never aliases
    frozen = None
    if partial_lib.is_partial(config):
        if policy is not None:
            raise ValueError("ModelConfig: with num_layers_unfrozen or LoRA every trunk starts from the same weights "
                             "(their frozen part is stored once), but a separate π_β start was given; start both "
                             "from it (init='bc:DIR' does)")
        # From here on "trunk" is a trunk's trained part (models/partial.py).
        frozen, trunk = partial_lib.split(config, trunk, jax.random.fold_in(k_trunk, 1))
    value = {"trunk": trunk, "v": heads.init_v_head(cfg, k_v, config.head_init),
             "q1": heads.init_q_head(cfg, k_q1, config.head_init), "q2": heads.init_q_head(cfg, k_q2, config.head_init)}
    online = {"value": value}
    if frozen is not None:
        online[partial_lib.FROZEN] = frozen
    if not config.shared_policy:
        online["policy"] = copy(trunk if policy is None else policy)
    elif policy is not None:
        raise ValueError("a separate π_β checkpoint was given, but shared_policy=True")
    target = {"q1": copy(value["q1"]), "q2": copy(value["q2"])}
    if not config.target_on_online_trunk:
        target["trunk"] = copy(trunk)
    return online, target


def trunk_runner(config: ModelConfig, online: Params, tokens: jax.Array,
                 attention_mask: jax.Array) -> Callable[[trunk_lib.Params, jax.Array | None], jax.Array]:
    """`run(trunk, dropout_key)`: a trunk's final hidden states [B, T, D] on this batch, no LM head run. Under
    partial training `trunk` is a trunk's trained part: the frozen bottom runs here once (no dropout, no
    gradient), and each run continues from its output."""
    cfg = config.trunk
    if partial_lib.FROZEN not in online:
        return lambda trunk, key: trunk_lib.forward(trunk, cfg, tokens, attention_mask, dropout_key=key,
                                                    with_logits=False)[0]
    spec, frozen, b = partial_lib.lora_spec(config), online[partial_lib.FROZEN], partial_lib.bottom_layers(config)
    whole = lambda delta: partial_lib.combine(frozen, delta)
    # Blocks below b read frozen weights only: any trunk's whole parameters serve.
    any_trunk = roles.policy(online) if roles.is_bc(online) else roles.value_trunk(online)
    x = jax.lax.stop_gradient(trunk_lib.residual_stream(whole(any_trunk), cfg, tokens, attention_mask, stop=b,
                                                        lora=spec))
    return lambda delta, key: trunk_lib.forward(whole(delta), cfg, tokens, attention_mask, dropout_key=key,
                                                with_logits=False, lora=spec, start=b, residual=x)[0]


def hiddens(config: ModelConfig, online: Params, target: Params, tokens: jax.Array, attention_mask: jax.Array,
            dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """(value, target, π_β) final hidden states [B, T, D] (`trunk_runner`). π_β's is the value trunk's when
    shared, None when frozen; the target's (no gradient, no dropout) is the value trunk's when
    `target_on_online_trunk`."""
    k_value, k_policy = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    run = trunk_runner(config, online, tokens, attention_mask)
    h_value = run(roles.value_trunk(online), k_value)
    h_target = h_value if config.target_on_online_trunk else run(target["trunk"], None)
    if config.frozen_policy:
        h_policy = None
    elif config.shared_policy:
        h_policy = h_value
    else:
        h_policy = run(roles.policy(online), k_policy)
    return h_value, jax.lax.stop_gradient(h_target), h_policy


def apply(config: ModelConfig, online: Params, target: Params, tokens: jax.Array, attention_mask: jax.Array,
          packed: losses.PackedActions | None = None, dropout_key: jax.Array | None = None) -> Outputs:
    """The value trunk and heads, the target networks and π_β on a batch, read at the slots of `Outputs`.

    The trunks run on every position (each state's hidden depends on the whole prefix; `hiddens`); no
    trunk computes LM logits over [B, T]. Then the heads run at the slots:

    - `packed` None: every head over the whole vocabulary at every position, padded vocabulary entries
      -inf. The direct computation: the reference loss and the diagnostics read it.
    - `packed`: only at the action states `packed.idx` (the train step's; see docs/lean_step.md): the
      online Q heads (whole vocabulary: CQL needs it), V, π_β's LM head (BC), their padded vocabulary tail
      left as computed for the loss's fused logsumexp; the target Q heads' first layer and the output
      columns of a_t only (`heads.q_t` with actions); V at the next states `packed.next_k`. Same values
      as every position at those slots (same dropout draws too).
    """
    cfg, every = config.trunk, packed is None
    value = roles.value(online)
    hidden, target_hidden, h_policy = hiddens(config, online, target, tokens, attention_mask, dropout_key)
    at = (lambda h: h) if every else (lambda h: losses.gather_packed(h, packed.idx))
    a_k, h_k, target_h_k = None if every else packed.a_k, at(hidden), at(target_hidden)
    target_q = jnp.minimum(heads.q_t(target["q1"], cfg, target_h_k, a_k),
                           heads.q_t(target["q2"], cfg, target_h_k, a_k))
    return Outputs(
        q1_t=heads.q_t(value["q1"], cfg, h_k, mask_padded=every),
        q2_t=heads.q_t(value["q2"], cfg, h_k, mask_padded=every),
        target_q_t=jax.lax.stop_gradient(target_q),
        v_t=heads.v_t(value["v"], cfg, h_k),
        pi_logits_t=None if h_policy is None else trunk_lib.lm_logits(lm_head_params(config, online), cfg,
                                                                      at(h_policy), mask_padded=every),
        v_next_t=None if every else heads.v_t(value["v"], cfg,
                                              jax.lax.stop_gradient(losses.gather_packed(hidden, packed.next_k))),
    )


def policy_params(config: ModelConfig, online: Params) -> trunk_lib.Params:
    """π_β's trunk parameters (the value trunk's when shared; a BC state's own); its trained part under
    partial training."""
    return roles.value_trunk(online) if config.shared_policy and not roles.is_bc(online) else roles.policy(online)


def lm_head_params(config: ModelConfig, online: Params) -> trunk_lib.Params:
    """Parameters of the plain trunk graph from which `trunk.lm_logits` gives π_β's logits: π_β's own, or
    under partial training with LoRA the frozen trunk (its LM head is frozen), else the frozen part and
    π_β's top. A BC state (online holding π_β alone) works too."""
    delta = policy_params(config, online)
    if not roles.has_frozen(online):
        return delta
    if partial_lib.lora_spec(config) is not None:
        return roles.frozen(online)
    return partial_lib.combine(roles.frozen(online), delta)


def materialize(config: ModelConfig, online: Params, target: Params) -> tuple[Params, Params]:
    """(online, target) with whole plain trunks, the layout of full training: under partial training each
    trunk is its frozen part plus its trained part, adapters merged into the kernels (W + (α/r)·A·B);
    otherwise the parameters as they are. What decoding, export and diagnostics read. A BC state
    (online holding π_β alone) works too."""
    if partial_lib.FROZEN not in online:
        return online, target
    frozen = online[partial_lib.FROZEN]
    whole = lambda delta: partial_lib.plain(config, frozen, delta)
    out = {k: v for k, v in online.items() if k != partial_lib.FROZEN}
    if not roles.is_bc(out):
        out["value"] = {**out["value"], "trunk": whole(out["value"]["trunk"])}
    if roles.has_policy(out):
        out["policy"] = whole(out["policy"])
    target = dict(target)
    if roles.has_target_trunk(target):
        target["trunk"] = whole(target["trunk"])
    return out, target


def target_tracked(config: ModelConfig, online: Params) -> Params:
    """The online parameters that the target tracks, in the target's tree layout."""
    tracked = {"q1": roles.value(online)["q1"], "q2": roles.value(online)["q2"]}
    if not config.target_on_online_trunk:
        tracked["trunk"] = roles.value_trunk(online)
    return tracked
