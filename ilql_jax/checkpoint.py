"""Checkpoints of the whole train state, resumable anywhere (the only module importing orbax).

Layout of a workdir (local or `gs://`)::

    checkpoints/<step>/state    the ILQLState pytree (orbax StandardSave, OCDBT)
    checkpoints/<step>/extra    JSON: data-iterator position, config dict, ...

Orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it to
`<step>` once everything is written (on GCS, where renames are copies, it
writes `<step>/` in place and commits with a `commit_success.txt` file). A
process killed mid-save (SIGKILL, pre-emption) therefore leaves only that
temporary directory behind; `CheckpointManager` does not list it as a step,
and a later save of the same step removes it. `restore` warns about such
uncommitted steps, and falls back to older steps when the newest committed
one cannot be read (e.g. files lost or truncated on a filesystem without
atomic renames).

Restores always go into an abstract target whose leaves are
`jax.ShapeDtypeStruct`s with shardings (`abstract_like`), so a checkpoint
saved on one mesh restores onto another, and the restored tree has exactly
the pytree structure (nnx `State`s and `Param` nodes included) of a freshly
initialised state.

Partial training (models/partial.py): the trunks' frozen part,
`state.params["frozen"]`, is never written. A save records its hash instead
(`extra["frozen"]["sha256"]`, `partial.fingerprint`), and a restore rebuilds it
from the run's base weights (`frozen_fn`, e.g. `loop.restore_state`), refusing
in one line when the rebuilt weights hash differently.

Typical use::

    state, extra, restored = checkpoint.restore_or_init(workdir, init_fn, shardings)
    ckpt = checkpoint.Checkpointer(workdir, checkpoint.CheckpointConfig())
    for step in ...:
        state, metrics = train_step(state, batch)
        if ckpt.should_save(step + 1):
            ckpt.save(step + 1, state, {"data": it.state(), "config": config_dict})
    ckpt.close()
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from ilql_jax import roles
from ilql_jax.configs import CheckpointConfig  # noqa: F401  (the config's home)
from ilql_jax.models import partial as partial_lib
from ilql_jax.state import has_frozen, with_frozen, without_frozen

__all__ = [
    "CheckpointConfig",
    "Checkpointer",
    "abstract_like",
    "check_frozen",
    "export_params",
    "load_params",
    "load_policy_from_checkpoint",
    "read_extra",
    "restore",
    "restore_or_init",
    "stored_arrays",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# A step directory, committed (`12`) or left behind by an interrupted save (`12.orbax-checkpoint-tmp...`).
_STEP_DIR = re.compile(r"^(\d+)(\.orbax-checkpoint-tmp.*)?$")

PyTree = Any


def _path(path: str | epath.PathLike) -> epath.Path:
    """`path` as an epath, a relative local one made absolute: orbax refuses relative paths (gs:// ones stay)."""
    path = epath.Path(path)
    return path if "://" in str(path) else path.absolute()


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_like(state_or_init_fn: PyTree | Callable[[], PyTree], shardings: Any = None) -> PyTree:
    """A pytree of `jax.ShapeDtypeStruct`s with shardings: the target of a restore.

    Args:
      state_or_init_fn: a state (concrete or abstract), or a function returning
        one (traced with `jax.eval_shape`, so nothing is computed or allocated).
      shardings: where each leaf goes: None (keep a concrete array's own
        sharding, else a single local device), one `jax.sharding.Sharding` for
        every leaf, or a pytree of shardings with the state's structure (or a
        prefix of it).

    Returns:
      The state's tree (same node types and metadata) with abstract leaves.
    """
    tree = jax.eval_shape(state_or_init_fn) if callable(state_or_init_fn) else state_or_init_fn
    default = _default_sharding()

    def leaf(x, sharding=None):
        sharding = sharding or getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    if shardings is None:
        return jax.tree.map(leaf, tree)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: leaf(x, shardings), tree)
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: leaf(x, s), sub), shardings, tree,
                        is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def _manager(directory: epath.Path, cfg: CheckpointConfig | None,
             state_handler: ocp.CheckpointHandler | None = None) -> ocp.CheckpointManager:
    """A manager that saves (`cfg` given) or only reads (`cfg` None: creates nothing).

    The handlers are named up front so that a read-only manager can read
    metadata before any save or restore has told it how.
    """
    if cfg is None:
        options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save,
                                               create=True)
    handlers = {"state": state_handler or ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, item_handlers=handlers, options=options)


class Checkpointer:
    """Saves and restores `(state, extra)` under `workdir/checkpoints`.

    Every process of a multi-host job must create one and call `save` with
    the same steps (orbax coordinates the processes; each writes its shards).

    Args:
      workdir: the run's directory, local or `gs://`.
      cfg: when to save and how many to keep; None opens it read-only.
    """

    def __init__(self, workdir: str | epath.PathLike, cfg: CheckpointConfig | None = CheckpointConfig()):
        self.cfg = cfg
        self.directory = _path(workdir) / CHECKPOINT_DIR
        self._manager = _manager(self.directory, cfg)

    def should_save(self, step: int) -> bool:
        """Whether `step` (the number of steps taken) is a checkpoint step."""
        return self.cfg is not None and step > 0 and step % self.cfg.every_steps == 0

    def save(self, step: int, state: PyTree, extra: Mapping[str, Any] | None = None) -> bool:
        """Saves the state and a JSON-serialisable `extra` dict as checkpoint `step`.

        `extra` comes back from `restore` as parsed JSON (tuples become lists).

        With `async_save`, returns once the arrays are copied off the devices,
        so the caller may donate `state` to the next train step right away.
        Returns False (and saves nothing) when `step` is not newer than the
        latest checkpoint, e.g. a save right after resuming from that step.

        A state with a frozen part (partial training) is saved without it;
        `extra["frozen"]` records its hash (computed here unless the caller
        gave it, with the `reference` the weights come from).
        """
        if self.cfg is None:
            raise ValueError(f"Checkpointer for {self.directory} was opened read-only (cfg=None)")
        if has_frozen(state):
            extra = dict(extra or {})
            if "sha256" not in extra.get("frozen", {}):
                extra["frozen"] = {**extra.get("frozen", {}),
                                   "sha256": partial_lib.fingerprint(roles.frozen(state.params))}
            state = without_frozen(state)
        saved = self._manager.save(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {}))))
        if not saved:
            logger.info("checkpoint step %d not saved: latest is step %s", step, self._manager.latest_step())
        return saved

    def latest_step(self) -> int | None:
        """The newest committed step (None when there is none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Committed steps, oldest first (interrupted saves are not listed)."""
        return sorted(self._manager.all_steps())

    def restore(self, abstract_state: PyTree, step: int | None = None,
                frozen_fn: Callable[[], PyTree] | None = None) -> tuple[PyTree, dict[str, Any]]:
        """`(state, extra)` from checkpoint `step`, or from the newest readable one.

        Args:
          abstract_state: the target (see `abstract_like`); leaves without a
            sharding go to a single local device.
          step: a step to restore exactly (errors propagate); None means the
            newest committed step, falling back to older ones with a warning
            if it cannot be read.
          frozen_fn: for a state with a frozen part (partial training): builds
            it (from the run's base weights, in its shardings); its hash must
            equal the checkpoint's (`check_frozen`).
        """
        if has_frozen(abstract_state):
            if frozen_fn is None:
                raise ValueError(f"{self.directory}: this run trains part of its trunks, so its checkpoints hold no "
                                 "frozen weights; restore it with ilql_jax.restore_state (or pass frozen_fn)")
            state, extra = self.restore(without_frozen(abstract_state), step)
            frozen = frozen_fn()
            check_frozen(frozen, extra, f"{self.directory} (step {int(state.step)})")
            return with_frozen(state, frozen), extra
        target = abstract_like(abstract_state)
        if step is not None:
            return self._restore_step(int(step), target)
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._warn_uncommitted(steps[-1])
        first_error = None
        for candidate in reversed(steps):
            try:
                restored = self._restore_step(candidate, target)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: try the previous one
                first_error = first_error or e
                # TensorStore errors carry the whole store spec: keep the first line.
                reason = str(e).strip().split("\n")[0][:300]
                logger.warning("skipping checkpoint step %d in %s: it cannot be restored (%s: %s)",
                               candidate, self.directory, type(e).__name__, reason)
                continue
            logger.info("restored checkpoint step %d from %s", candidate, self.directory)
            return restored
        raise RuntimeError(f"no checkpoint in {self.directory} could be restored (steps {steps}); "
                           "the newest failed with the error above") from first_error

    def _restore_step(self, step: int, target: PyTree) -> tuple[PyTree, dict[str, Any]]:
        restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
        return restored.state, dict(restored.extra or {})

    def _warn_uncommitted(self, latest: int) -> None:
        # Orbax already ignores these; the warning tells the user a save was lost.
        if not self.directory.exists():
            return
        committed = set(self.all_steps())
        for path in self.directory.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and int(match.group(1)) > latest and int(match.group(1)) not in committed:
                logger.warning("skipping checkpoint step %s: %s was never committed (interrupted save?)",
                               match.group(1), path)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def restore(workdir: str | epath.PathLike, abstract_state: PyTree, step: int | None = None,
            frozen_fn: Callable[[], PyTree] | None = None) -> tuple[PyTree, dict[str, Any]]:
    """`(state, extra)` from the newest readable checkpoint in `workdir` (see `Checkpointer.restore`)."""
    with Checkpointer(workdir, cfg=None) as ckpt:
        return ckpt.restore(abstract_state, step, frozen_fn)


def check_frozen(frozen: PyTree, extra: Mapping[str, Any], where: str) -> None:
    """ValueError (one line) unless `frozen`'s hash is the one a checkpoint's `extra` recorded."""
    saved = (extra.get("frozen") or {}).get("sha256")
    if saved is None:
        raise ValueError(f"{where}: the checkpoint records no hash of its frozen weights (extra['frozen']), so "
                         "they cannot be rebuilt safely; was it written by another version?")
    now = partial_lib.fingerprint(frozen)
    if now != saved:
        reference = (extra.get("frozen") or {}).get("reference", "the run's base weights")
        raise ValueError(f"{where}: the frozen weights it was trained on had hash {saved[:16]}, but {reference} now "
                         f"gives {now[:16]}: the base weights changed; restore them, or start a new workdir")


def read_extra(workdir: str | epath.PathLike, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """`(step, extra)`: the JSON a checkpoint of `workdir` was saved with (the newest when `step` is None)."""
    directory = _path(workdir) / CHECKPOINT_DIR
    with _manager(directory, None) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
    return int(step), dict(restored.extra or {})


def stored_arrays(workdir: str | epath.PathLike, step: int | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
    """What a train-state checkpoint of `workdir` holds: {path ("params.value.trunk..."): (shape, dtype)}, read
    from its metadata (the newest checkpoint when `step` is None)."""
    directory = _path(workdir) / CHECKPOINT_DIR
    with _manager(directory, None, ocp.PyTreeCheckpointHandler()) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        tree = manager.item_metadata(step)["state"].tree
    name = lambda path: ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    return {name(path): (tuple(meta.shape), str(meta.dtype)) for path, meta in jax.tree_util.tree_leaves_with_path(tree)}


def restore_or_init(workdir: str | epath.PathLike, init_fn: Callable[[], PyTree], shardings: Any = None, *,
                    resume: bool = True, abstract_state: PyTree | None = None,
                    frozen_fn: Callable[[], PyTree] | None = None) -> tuple[PyTree, dict[str, Any], bool]:
    """Resumes from the newest checkpoint in `workdir`, else starts from `init_fn()`.

    Args:
      workdir: the run's directory.
      init_fn: builds a fresh state; the caller decides what "fresh" means
        (random init, imported GPT-2 weights, π_β from a BC run via
        `load_policy_from_checkpoint`). Unless `abstract_state` is given, it is
        traced once with `jax.eval_shape` for the restore target; it is called
        only when nothing is restored, and its state is returned as it is:
        build it in `shardings` (jit it with `out_shardings`, as
        `train.make_init` does, so that no device holds the whole state, or
        place it with `sharding.place`).
      shardings: as in `abstract_like`: where a restored state goes.
      resume: False ignores existing checkpoints.
      abstract_state: the restore target's shapes and dtypes, when tracing
        `init_fn` would do real work (e.g. read weights from disk).
      frozen_fn: for a state with a frozen part: rebuilds it on a restore
        (see `Checkpointer.restore`).

    Returns:
      `(state, extra, restored)`: `extra` is the saved JSON dict ({} when fresh).
    """
    abstract = abstract_like(init_fn if abstract_state is None else abstract_state, shardings)
    if resume and (epath.Path(workdir) / CHECKPOINT_DIR).exists():
        with Checkpointer(workdir, cfg=None) as ckpt:
            if ckpt.latest_step() is not None:
                state, extra = ckpt.restore(abstract, frozen_fn=frozen_fn)
                return state, extra, True
    return init_fn(), {}, False


def export_params(directory: str | epath.PathLike, params: PyTree) -> None:
    """Writes a parameter tree alone (for the sampler and evaluation); replaces an earlier export."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(_path(directory), params, force=True)
        ckptr.wait_until_finished()


def load_params(directory: str | epath.PathLike, abstract_params: PyTree) -> PyTree:
    """Reads an `export_params` directory into `abstract_params`' structure and shardings."""
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(_path(directory), abstract_like(abstract_params))


def load_policy_from_checkpoint(workdir: str | epath.PathLike, abstract_policy: PyTree,
                                step: int | None = None) -> PyTree:
    """π_β's GPT-2 parameters from a train-state checkpoint, to start another run's π_β.

    Reads only those parameters (`roles.policy_path`: π_β's own trunk, else
    the value trunk it shares). Use as `train.init_state(config, key, policy=...)`.

    Args:
      workdir: the earlier run's directory.
      abstract_policy: the target, e.g. `trunk.abstract_params(trunk_config)`
        (see `abstract_like` for shardings).
      step: the checkpoint step; None means the newest.
    """
    directory = _path(workdir) / CHECKPOINT_DIR
    # A PyTree handler: the Standard one that wrote the state has no partial restore.
    with _manager(directory, None, ocp.PyTreeCheckpointHandler()) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        saved_params = manager.item_metadata(step)["state"].tree["params"]
        path = roles.policy_path(saved_params)
        target: PyTree = abstract_like(abstract_policy)
        for key in reversed(path):
            target = {key: target}
        target = {"params": target}
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True)))
    params = restored.state["params"]
    for key in path:
        params = params[key]
    return params
