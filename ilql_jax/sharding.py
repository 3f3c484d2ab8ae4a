"""Device mesh, logical-axis rules, and placing batches and states on the mesh.

The models name parameter axes logically ("vocab", "embed", "heads", "mlp";
see `models/gpt2.py` and `models/llama.py`); this module maps those names onto a mesh with axes
("data", "fsdp", "tensor") through rules kept in config, so no mesh name
appears in a model. Typical use, identical on one CPU and on a multi-host
TPU/GPU slice::

    distributed.maybe_initialize_distributed()   # before any other JAX call
    mesh_cfg = MeshConfig(fsdp=4, fsdp_params=True)
    mesh = make_mesh(mesh_cfg)
    shardings = state_shardings(train.abstract_state(step_cfg), mesh, logical_rules(mesh_cfg))
    state = train.init_sharded_state(step_cfg, jax.random.key(0), shardings)  # born sharded
    step = train.make_sharded_train_step(step_cfg, mesh, shardings)  # the step, jitted on the mesh
    for host_batch in batches:                   # this process's rows, as numpy
        state, metrics = step(state, place_batch(host_batch, mesh))

The batch axis is split over ("data", "fsdp"): every device of those two axes
sees different rows, and "tensor" devices share rows; the trunks' activations
stay split the same way (`activation_layout`). Parameters are replicated
(pure data parallelism) unless the rules shard them.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ilql_jax.configs import AXES, MeshConfig, Rules  # noqa: F401  (the config's home)
from ilql_jax.data.batch import Batch
from ilql_jax.models import layers

BATCH_AXES = ("data", "fsdp")

DATA_PARALLEL_RULES: Rules = (("vocab", None), ("embed", None), ("heads", None), ("mlp", None))


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of all processes).

    Axis types are Auto (jax.make_mesh defaults to Explicit), so XLA propagates
    shardings through the step from the in/out shardings alone. Devices are laid
    out process-major, so each process holds a contiguous block of batch rows.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [getattr(cfg, name) for name in AXES]
    fixed = math.prod(s for s in sizes if s != -1)
    shape = ", ".join(f"{n}={s}" for n, s in zip(AXES, sizes))
    if -1 in sizes:
        if len(devices) % fixed:
            raise ValueError(f"MeshConfig({shape}): the fixed axes need a multiple of {fixed} devices, "
                             f"but there are {len(devices)}")
        sizes[sizes.index(-1)] = len(devices) // fixed
    elif fixed != len(devices):
        raise ValueError(f"MeshConfig({shape}) needs {fixed} devices, but there are {len(devices)}; "
                         "set one axis to -1 to take the remaining devices")
    return jax.make_mesh(sizes, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def logical_rules(cfg: MeshConfig) -> Rules:
    """The logical-axis rules `cfg` implies (or `cfg.rules` when set).

    Default: every parameter axis replicated (data parallelism). `tensor != 1`
    maps "vocab", "heads" and "mlp" to "tensor"; `fsdp_params` maps "embed" to
    "fsdp", then "mlp" and "vocab" as fallbacks, so that the heads' output
    layers (no "embed" axis) are sharded too.
    """
    if cfg.rules is not None:
        # Tuples throughout, also for rules read back from JSON as lists.
        return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in cfg.rules)
    rules = []
    if cfg.fsdp_params:
        rules.append(("embed", "fsdp"))
    if cfg.tensor != 1:
        rules += [("vocab", "tensor"), ("heads", "tensor"), ("mlp", "tensor")]
    if cfg.fsdp_params:
        rules += [("mlp", "fsdp"), ("vocab", "fsdp")]
    # A (name, None) rule would block the fallbacks above, so only unmapped names get one.
    mapped = {name for name, _ in rules}
    return tuple(rules) + tuple(r for r in DATA_PARALLEL_RULES if r[0] not in mapped)


def _fit(spec: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
    """`spec` with every dimension the mesh axes do not divide evenly replicated instead."""
    dims = []
    for size, axes in zip(shape, spec):
        names = (axes,) if isinstance(axes, str) else (axes or ())
        missing = [a for a in names if a not in mesh.shape]
        if missing:
            raise ValueError(f"logical-axis rules name mesh axes {missing} that the mesh {dict(mesh.shape)} lacks")
        n = math.prod(mesh.shape[a] for a in names)
        dims.append(axes if size % n == 0 else None)
    return P(*dims)


def state_shardings(state: Any, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
    """NamedShardings for every leaf of `state`, in the same tree structure.

    `state` may be concrete or abstract (`abstract_state`); any pytree works,
    typically an `ILQLState`. Leaves inside nnx Variables (params, target
    params, and the optimizer moments, which inherit the Variables' metadata)
    are sharded by their logical axis names under `rules`; other leaves (step,
    rng, counts) are replicated. A dimension that the chosen mesh axes do not
    divide is replicated instead (the vocabulary is padded to a multiple of
    128, so it divides any power-of-two axis up to 128).
    """
    logical = nnx.get_partition_spec(state)  # without rules: the names themselves

    def to_sharding(names: P, leaf) -> NamedSharding:
        spec = nn.logical_to_mesh_axes(tuple(names), rules)
        return NamedSharding(mesh, _fit(spec, leaf.shape, mesh))

    return jax.tree.map(to_sharding, logical, state)


def place(tree: Any, shardings: Any) -> Any:
    """`tree` on `shardings` (a matching tree, or a prefix): leaves already there are kept, others
    copied there (`shard_state`). Multi-process: every process passes the same host values."""
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: _keep_or_put(x, s), sub), shardings, tree,
                        is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def _keep_or_put(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    return _put(x if isinstance(x, jax.Array) else np.asarray(x), sharding, donate=False)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over ("data", "fsdp"); the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def place_batch(batch: Batch | Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> Batch | dict[str, jax.Array]:
    """This process's rows → one global batch array per field (a `Batch`, or a dict for a mapping), sharded
    by `batch_sharding`.

    Single-process: `batch` is the whole batch. Multi-process: each process
    passes its own contiguous block of rows, process i holding rows
    [i L, (i + 1) L) of the global batch (as `data.batches.BatchIterator`
    yields them); the global batch has L × process_count rows.
    """
    sharding = batch_sharding(mesh)
    local = mesh.local_mesh.shape
    shards = local["data"] * local["fsdp"]  # distinct row blocks on this process's devices
    out = {}
    for key, value in (batch._asdict() if isinstance(batch, Batch) else batch).items():
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] % shards:
            raise ValueError(f"place_batch: {key!r} has shape {value.shape}; its leading (batch) axis must be "
                             f"divisible by the {shards} batch shards on this process (data × fsdp devices)")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return Batch(**out) if isinstance(batch, Batch) else out


def shard_state(state: Any, shardings: Any, *, donate: bool = False) -> Any:
    """Copies `state` onto the mesh with `shardings` (from `state_shardings`).

    `state` holds host-local values (numpy or single-device arrays, e.g. from
    `train.init_state`); in multi-process runs every process passes the same
    values and fills its own shards from them. With donate=False the result owns fresh buffers:
    device_put may hand back the very input buffers, and the next (donating)
    train step would then delete the caller's `state` too. donate=True
    consumes the source instead, for states too large to hold twice.
    """
    return jax.tree.map(functools.partial(_put, donate=donate), state, shardings)


def _put(x: Any, sharding: NamedSharding, donate: bool) -> jax.Array:
    """One leaf of `shard_state`."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # device_put refuses key arrays for shardings that span other processes
        # (jax 0.10.2); their raw uint32 data goes through fine.
        data = _put(jax.random.key_data(x), sharding, donate)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if not sharding.is_fully_addressable:
        # device_put would check with a collective per leaf that all processes
        # agree; slicing each process's own copy is much faster and always copies.
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    if not donate:
        # Even with may_alias=False, device_put onto a replicated sharding reuses the
        # source buffer (jax 0.10.2): hand it a private copy instead.
        x = x.copy()
    return jax.device_put(x, sharding, donate=True)


def activation_layout(mesh: jax.sharding.Mesh):
    """A context for tracing a program on `mesh`: the trunks' activations stay split by rows
    over ("data", "fsdp"), as the batch is (`layers.shard_batch`); their other axes are left to XLA."""

    def layout(ndim: int) -> NamedSharding:
        return NamedSharding(mesh, P(BATCH_AXES, *(P.UNCONSTRAINED,) * (ndim - 1)))

    return layers.batch_layout(layout)
