"""Low-rank adapters (LoRA; Hu et al. 2021, arXiv 2106.09685) on a trunk's attention and MLP projections.

An adapted projection computes, with our [in, out] kernel layout,

    y = x W + b + (α / r) · (x A) B,        A: [in, r],  B: [r, out],

W and b frozen, A and B trained. The adapter is `flax.nnx.LoRA` (its `lora_a`,
`lora_b` are `nnx.LoRAParam`s); nnx has no α, so `LoRALinear` scales its output
by α/r itself, as PEFT does. B starts at zero, so an adapted trunk starts as
the base model; A starts as PEFT's (`kaiming_uniform_(a=√5)` on [r, in]:
U(±1/√in)). No dropout on the adapter path.

Which projections: `LoRASpec.targets` holds block-relative module paths
("attn.c_attn", "self_attn.q_proj", ...; each architecture lists its own as
`LORA_PROJECTIONS`), resolved from the user's names by `resolve_targets`
(a name matches a path equal to it or ending in "." + it, as PEFT's
`target_modules`: "c_proj" is both of GPT-2's). Which blocks: those from
`first_layer` on (the top k when `num_layers_unfrozen` = k, else all).

`merge` folds the adapters into the kernels (W + (α/r)·A·B) and drops them:
the plain trunk that export and decoding read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

ALL = "all"


@dataclasses.dataclass(frozen=True)
class LoRASpec:
    """Where the adapters are and how they scale (hashable: part of a trunk's graph definition).

    Attributes:
      rank: r, the adapters' inner width.
      alpha: α; the adapter's output is scaled by α / r.
      targets: block-relative module paths of the adapted projections (resolved, see `resolve_targets`).
      first_layer: blocks first_layer .. n_layer − 1 carry adapters.
    """

    rank: int
    alpha: float
    targets: tuple[str, ...]
    first_layer: int = 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def applies(self, layer: int, module: str) -> bool:
        """Whether block `layer`'s projection `module` (e.g. "attn.c_attn") carries an adapter."""
        return layer >= self.first_layer and module in self.targets


def resolve_targets(projections: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """The projections (of an architecture's `LORA_PROJECTIONS`) that `names` select, or a ValueError naming
    the first name that selects none. ("all",) selects every one."""
    if not names:
        raise ValueError(f"lora_targets is empty; give projection names from {projections} or 'all'")
    chosen = set()
    for name in names:
        if name == ALL:
            chosen.update(projections)
            continue
        hits = [p for p in projections if p == name or p.endswith("." + name)]
        if not hits:
            raise ValueError(f"lora_targets: {name!r} names no projection of this architecture; choose from "
                             f"{', '.join(projections)} (or their last part, or 'all')")
        chosen.update(hits)
    return tuple(p for p in projections if p in chosen)


def _a_init(key, shape, dtype=jnp.float32):
    """PEFT's A: kaiming_uniform_(a=√5) on torch's [r, in], i.e. U(±1/√in); ours is [in, r]."""
    bound = shape[0] ** -0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRALinear(nnx.LoRALinear):
    """`nnx.Linear` plus an `nnx.LoRA` adapter scaled by α/r: y = x W + b + (α/r)·(x A) B.

    The kernel and bias keep `nnx.Linear`'s paths (so a base checkpoint maps
    onto them unchanged); the adapter is `lora/lora_a` [in, r] and
    `lora/lora_b` [r, out], with the kernel's logical axes on their outer
    dimension (`axes`) and none on the rank.
    """

    def __init__(self, d_in: int, d_out: int, *, spec: LoRASpec, axes: tuple[str | None, str | None], dtype,
                 param_dtype, rngs: nnx.Rngs, **linear_kwargs: Any):
        meta = lambda *names: {"out_sharding": names, "eager_sharding": False}
        super().__init__(d_in, d_out, lora_rank=spec.rank, lora_dtype=dtype, lora_param_dtype=param_dtype,
                         a_initializer=_a_init, b_initializer=nnx.initializers.zeros,
                         a_metadata=meta(axes[0], None), b_metadata=meta(None, axes[1]), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs, **linear_kwargs)
        self.scale = spec.scale

    def __call__(self, x):
        return nnx.Linear.__call__(self, x) + self.scale * self.lora(x)


def is_adapter_path(path: tuple) -> bool:
    """Whether a flat parameter path is an adapter's (`.../lora/lora_a` or `lora_b`)."""
    return bool(path) and path[-1] in ("lora_a", "lora_b")


def adapters(params: nnx.State) -> nnx.State:
    """The adapter leaves of a trunk's parameters (an empty State when there are none)."""
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(params) if is_adapter_path(p)])


def without_adapters(params: nnx.State) -> nnx.State:
    """A trunk's parameters minus its adapters (the base weights, as the plain graph holds them)."""
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(params) if not is_adapter_path(p)])


def merge(params: nnx.State, spec: LoRASpec) -> nnx.State:
    """The plain trunk: every adapted kernel replaced by W + (α/r)·A·B (in float32, stored in W's dtype),
    the adapters dropped. Same function as the adapted trunk, up to rounding."""
    flat = dict(nnx.to_flat_state(params))
    out = {}
    for path, var in flat.items():
        if is_adapter_path(path):
            continue
        if path[-1] == "kernel" and path[:-1] + ("lora", "lora_a") in flat:
            a = flat[path[:-1] + ("lora", "lora_a")][...].astype(jnp.float32)
            b = flat[path[:-1] + ("lora", "lora_b")][...].astype(jnp.float32)
            w = var[...]
            var = var.replace(value=(w.astype(jnp.float32) + spec.scale * (a @ b)).astype(w.dtype))
        out[path] = var
    return nnx.from_flat_state(list(out.items()))
