"""Training part of a trunk: `num_layers_unfrozen` (trlx's) and LoRA, and the frozen part every trunk shares.

ILQL keeps three trunks (π_β, the value trunk, its Polyak target; models/ilql.py), all started from one
set of weights. When only part of each trains, the rest is the same weights in all three: it is stored
once, run once per step, and never differentiated. A trunk's parameters split into

- the frozen part, `params["frozen"]` of the train state (shared; no gradient, no optimizer state, no
  Polyak copy, not in checkpoints), and
- the trained part, its *delta*, one per trunk (`params["value"]["trunk"]`, `params["policy"]`,
  `target_params["trunk"]`), which the optimizer and the target update see.

What trains, with k = `num_layers_unfrozen` and n = the trunk's blocks:

| | frozen (shared) | trained, per trunk |
|---|---|---|
| k = −1, no LoRA | nothing: today's full training (no split) | everything |
| 0 ≤ k ≤ n, no LoRA | embeddings, blocks 0 .. n−k−1 | blocks n−k .. n−1, the final norm, an untied LM head |
| LoRA, k = −1 | every trunk weight | adapters in every block |
| LoRA, 1 ≤ k ≤ n | every trunk weight | adapters in blocks n−k .. n−1 |

A tied LM head is the (frozen) embedding, as in trlx. k = 0 without LoRA trains the final norm (and an
untied LM head) alone, on frozen features; with LoRA it would train no trunk weight at all and is refused.

The shared bottom is blocks 0 .. b−1 with b = n − k (b = 0 for LoRA with k = −1: the embeddings alone):
no trunk has anything trained there, so its output, the residual stream entering block b, is computed
once (`trunk.residual_stream`) and each trunk's top runs from it (`trunk.forward(..., start=b,
residual=...)`). The bottom runs without dropout: the target trunk, which reads it too, has none.

`plain` rebuilds a whole trunk (adapters merged: W + (α/r)·A·B) for decoding and export;
`fingerprint` is the hash of the frozen weights that checkpoints record in place of the weights.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ilql_jax.models import lora as lora_lib
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.roles import FROZEN  # noqa: F401  (the roles' home)


def is_partial(config: Any) -> bool:
    """Whether a `ModelConfig` trains only part of its trunks (so the state has a frozen part)."""
    return config.is_partial


def bottom_layers(config: Any) -> int:
    """b: blocks 0 .. b−1 are frozen in every trunk and shared (run once per step)."""
    k = config.num_layers_unfrozen
    return 0 if k < 0 else config.trunk.n_layer - k


def lora_spec(config: Any) -> lora_lib.LoRASpec | None:
    """The adapters a `ModelConfig` asks for (None without LoRA)."""
    if config.lora_rank <= 0:
        return None
    targets = lora_lib.resolve_targets(trunk_lib.implementation(config.trunk).LORA_PROJECTIONS, config.lora_targets)
    return lora_lib.LoRASpec(rank=config.lora_rank, alpha=float(config.lora_alpha), targets=targets,
                             first_layer=bottom_layers(config))


def _trained_path(config: Any, path: tuple) -> bool:
    """Whether the parameter at `path` of a trunk trains (is in a trunk's delta)."""
    if config.lora_rank > 0:
        return lora_lib.is_adapter_path(path)
    impl = trunk_lib.implementation(config.trunk)
    if path[0] == impl.BLOCKS:
        return int(path[1]) >= bottom_layers(config)
    return path[0] in impl.FINAL


def _select(tree: nnx.State, keep) -> nnx.State:
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(tree) if keep(p)])


def frozen_part(config: Any, plain_tree: nnx.State) -> nnx.State:
    """The frozen part of a plain trunk's tree (its weights, or a tree of shardings laid out like them)."""
    return _select(plain_tree, lambda p: not _trained_path(config, p))


def split(config: Any, trunk: nnx.State, key: jax.Array) -> tuple[nnx.State, nnx.State]:
    """(frozen, delta) of a plain trunk: with LoRA, the whole trunk and fresh adapters from `key` (B = 0,
    so the adapted trunk starts as `trunk`); else the untrained and the trained blocks."""
    spec = lora_spec(config)
    if spec is not None:
        return trunk, trunk_lib.init_adapters(config.trunk, spec, key)
    return frozen_part(config, trunk), _select(trunk, lambda p: _trained_path(config, p))


def delta_shardings(config: Any, plain_shardings: nnx.State) -> nnx.State:
    """Shardings for one trunk's trained part, given a plain trunk's (`train.trunk_shardings`): its
    blocks' own; LoRA adapters (small) replicated over the same mesh."""
    spec = lora_spec(config)
    if spec is None:
        return _select(plain_shardings, lambda p: _trained_path(config, p))
    mesh = jax.tree.leaves(plain_shardings)[0].mesh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = lora_lib.adapters(trunk_lib.abstract_params(config.trunk, spec))
    return jax.tree.map(lambda _: replicated, abstract)


def combine(frozen: nnx.State, delta: nnx.State) -> nnx.State:
    """A whole trunk (with its adapters, if any) from the frozen part and one trunk's delta; a pytree
    operation, no copy under jit."""
    return nnx.merge_state(frozen, delta)


def plain(config: Any, frozen: nnx.State, delta: nnx.State) -> nnx.State:
    """The plain trunk (no adapters) that a delta stands for: adapters merged into their kernels."""
    spec = lora_spec(config)
    full = combine(frozen, delta)
    return full if spec is None else lora_lib.merge(full, spec)


def plain_layout(tree: nnx.State) -> nnx.State:
    """`tree` (a combined trunk's weights or shardings) without its adapters: laid out as a plain trunk."""
    return _select(tree, lambda p: not lora_lib.is_adapter_path(p))


# --- the frozen weights' hash --------------------------------------------------------


def _mix(h: jax.Array) -> jax.Array:
    """A 32-bit avalanche (murmur3's finaliser), wrapping uint32 arithmetic."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_sums(x: jax.Array) -> jax.Array:
    """Two order-independent 32-bit sums of a leaf's mixed bits and positions: [2] uint32. Sums mod 2³² are
    exact in any order, so a sharded leaf gives the same value on any mesh."""
    x = jnp.asarray(x)
    width = x.dtype.itemsize * 8
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}"))
    if width == 64:
        bits = bits ^ (bits >> 32)
    bits = bits.astype(jnp.uint32)
    i = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    h1 = _mix(bits ^ _mix(i + jnp.uint32(0x9E3779B9)))
    h2 = _mix(bits + _mix(i ^ jnp.uint32(0x165667B1)))
    return jnp.stack([jnp.sum(h1, dtype=jnp.uint32), jnp.sum(h2, dtype=jnp.uint32)])


@jax.jit
def _sums(leaves: list) -> list:
    return [_leaf_sums(x) for x in leaves]


def _host(x: jax.Array) -> np.ndarray:
    return np.asarray(x.addressable_data(0) if x.is_fully_replicated else x)


def fingerprint(tree: Any) -> str:
    """A sha256 hex digest of a weights tree: its paths, shapes, dtypes and per-leaf checksums of every bit,
    computed where the weights lie (one pass, no transfer, the same on any mesh)."""
    with_paths = jax.tree_util.tree_leaves_with_path(tree)
    sums = _sums([x for _, x in with_paths])
    digest = hashlib.sha256()
    for (path, x), s in zip(with_paths, sums):
        digest.update(f"{jax.tree_util.keystr(path)}|{tuple(x.shape)}|{x.dtype}|".encode())
        digest.update(_host(s).astype("<u4").tobytes())
    return digest.hexdigest()
