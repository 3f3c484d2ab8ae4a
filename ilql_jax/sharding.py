"""Device mesh, logical-axis rules, batch placement and the sharded train step.

The models name parameter axes logically ("vocab", "embed", "heads", "mlp";
see `models/gpt2.py` and `models/llama.py`); this module maps those names onto a mesh with axes
("data", "fsdp", "tensor") through rules kept in config, so no mesh name
appears in a model. Typical use, identical on one CPU and on a multi-host
TPU/GPU slice::

    maybe_initialize_distributed()               # before any other JAX call
    mesh_cfg = MeshConfig(fsdp=4, fsdp_params=True)
    mesh = make_mesh(mesh_cfg)
    shardings = state_shardings(abstract_state(step_cfg), mesh, logical_rules(mesh_cfg))
    state = init_sharded_state(step_cfg, jax.random.key(0), shardings)  # born sharded; or with GPT-2 weights:
    # weights = hf_import.load_hf(path, shardings=trunk_shardings(shardings))[1]   # GPT-2, Llama, Qwen2
    # state = init_sharded_state(step_cfg, jax.random.key(0), shardings, trunk=weights)
    step = make_sharded_train_step(step_cfg, mesh, shardings)
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
import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ilql_jax import train
from ilql_jax.configs import AXES, MeshConfig, Rules  # noqa: F401  (the config's home)
from ilql_jax.models import gpt2
from ilql_jax.models import partial as partial_lib
from ilql_jax.state import ILQLState

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


def abstract_state(step_config: train.StepConfig) -> ILQLState:
    """Shapes, dtypes and logical names of a fresh state; allocates nothing."""
    return jax.eval_shape(lambda: train.init_state(step_config, jax.random.key(0)))


def make_init(step_config: train.StepConfig, shardings: Any) -> Callable[..., ILQLState]:
    """`init(key, trunk=None, policy=None) -> state`: `train.init_state` jitted (`.lower` works) with
    `shardings` as its output shardings, so every device computes (or copies) only its own shards of the state.

    `trunk` and `policy` (GPT-2 weights) should already lie on the mesh in
    their own shardings (`trunk_shardings`; `place`, `hf_import.load_hf_gpt2(...,
    shardings=...)` and `checkpoint.load_policy_from_checkpoint` put them
    there), so that no device ever holds the whole state, nor a whole trunk,
    unless the mesh has one device.
    """
    return jax.jit(lambda key, trunk=None, policy=None: train.init_state(step_config, key, trunk, policy),
                   out_shardings=shardings)


def init_sharded_state(step_config: train.StepConfig, key: jax.Array, shardings: Any,
                       trunk: Any = None, policy: Any = None) -> ILQLState:
    """A fresh state, as `train.init_state` makes it (random, or from `trunk` / `policy` weights),
    built directly in `shardings` (see `make_init`; weights not yet on the mesh are placed first)."""
    if partial_lib.is_partial(step_config.model) and train.same_weights(trunk, policy):
        policy = None  # one set of starting weights, which placing them would hide
    trunk, policy = (None if w is None else place(w, trunk_shardings(shardings)) for w in (trunk, policy))
    return make_init(step_config, shardings)(key, trunk, policy)


def trunk_shardings(shardings: ILQLState) -> Any:
    """The shardings of one (plain, whole) trunk's parameters, taken from a state's shardings
    (`state_shardings`): every trunk of the state (value, target, π_β) is laid out alike. Under partial
    training, the frozen part's and a trunk's trained part's together, less any LoRA adapters: the layout
    of the weights a run starts from."""
    params = shardings.params
    trunk = params["value"]["trunk"] if "value" in params else params["policy"]
    if partial_lib.FROZEN in params:
        return partial_lib.plain_layout(partial_lib.combine(params[partial_lib.FROZEN], trunk))
    return trunk


def make_frozen_init(step_config: train.StepConfig, shardings: Any) -> Callable[..., Any]:
    """`frozen(key, trunk=None, policy=None)`: the frozen part (`params["frozen"]`) of the state `make_init`
    would build, alone, in its shardings: the same program less what it does not need (partial training's
    resume rebuilds the frozen weights this way)."""
    return jax.jit(lambda key, trunk=None, policy=None:
                   train.init_state(step_config, key, trunk, policy).params[partial_lib.FROZEN],
                   out_shardings=shardings.params[partial_lib.FROZEN])


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


def place_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows → one global batch array per key, sharded by `batch_sharding`.

    Single-process: `batch` is the whole batch. Multi-process: each process
    passes its own contiguous block of rows, process i holding rows
    [i L, (i + 1) L) of the global batch (as `data.batches.BatchIterator`
    yields them); the global batch has L × process_count rows.
    """
    sharding = batch_sharding(mesh)
    local = mesh.local_mesh.shape
    shards = local["data"] * local["fsdp"]  # distinct row blocks on this process's devices
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] % shards:
            raise ValueError(f"place_batch: {key!r} has shape {value.shape}; its leading (batch) axis must be "
                             f"divisible by the {shards} batch shards on this process (data × fsdp devices)")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


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


def make_sharded_train_step(step_config: train.StepConfig, mesh: jax.sharding.Mesh,
                            state_shardings: Any) -> Callable[[ILQLState, Mapping[str, jax.Array]],
                                                              tuple[ILQLState, dict[str, jax.Array]]]:
    """`(state, batch) -> (state, metrics)`, jitted with the state donated.

    The state keeps `state_shardings` across steps, the batch comes in as
    `batch_sharding(mesh)` (use `place_batch`), activations stay split like
    the batch (`activation_layout`), and metrics come out replicated, so
    every process can read them.
    """
    replicated = NamedSharding(mesh, P())

    def step(state, batch):
        with activation_layout(mesh):
            return train.train_step(step_config, state, batch)

    return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def make_sharded_eval_step(step_config: train.StepConfig, mesh: jax.sharding.Mesh,
                           state_shardings: Any) -> Callable[[ILQLState, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """`(state, batch) -> metrics` (`train.make_eval_step`) on the mesh; metrics replicated."""

    def step(state, batch):
        with activation_layout(mesh):
            return train.loss_fn(step_config, state.params, state.target_params, batch, None)[1]

    return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh)),
                   out_shardings=NamedSharding(mesh, P()))


def activation_layout(mesh: jax.sharding.Mesh):
    """A context for tracing a program on `mesh`: the trunks' activations stay split by rows
    over ("data", "fsdp"), as the batch is (`gpt2.shard_batch`); their other axes are left to XLA."""

    def layout(ndim: int) -> NamedSharding:
        return NamedSharding(mesh, P(BATCH_AXES, *(P.UNCONSTRAINED,) * (ndim - 1)))

    return gpt2.batch_layout(layout)


def _multi_process_cluster() -> bool:
    """True under a launcher that started several processes and that JAX auto-detects."""
    env = os.environ
    # Set per process by `mpirun` and `srun` (not by a bare `sbatch` script, which is one process).
    counts = (env.get("OMPI_COMM_WORLD_SIZE"), env.get("SLURM_STEP_NUM_TASKS"))
    if any(c is not None and c.isdigit() and int(c) > 1 for c in counts):
        return True
    # Multi-host TPU slices on GKE list their workers here.
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def maybe_initialize_distributed(force: bool = False) -> bool:
    """Calls `jax.distributed.initialize()` when this is one process of several.

    Call it first thing, before any other JAX call. Explicit setup: set
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID on every process. Otherwise jobs launched by `mpirun`
    (Open MPI) or `srun` (Slurm) with more than one task, and multi-host GKE
    TPU jobs, are detected and JAX finds the rest itself; `force=True` asks JAX
    to auto-detect in any other environment it supports (e.g. a Cloud TPU VM
    pod). Anything else (one host, a laptop, Colab) is a no-op. Returns
    whether JAX runs distributed.
    """
    if jax.distributed.is_initialized():
        return True
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        num, pid = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
        jax.distributed.initialize(address, num_processes=None if num is None else int(num),
                                   process_id=None if pid is None else int(pid))
        return True
    if force or _multi_process_cluster():
        jax.distributed.initialize()
        return True
    return False
