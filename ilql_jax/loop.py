"""`train_and_evaluate`: the one training loop every experiment shares.

In execution order: check the data and the mesh (before anything is written
or compiled), keep the %BC rows, write `config.json`, resume from the newest
checkpoint in the workdir or build a fresh state (`TrainConfig.init`) on the
device mesh, then for each micro-step: this process's host batch -> one global
sharded batch -> jitted train step (state donated) -> every `log_every` steps
fetch the averaged metrics and check the loss (the loop's only host sync
besides saves) -> every `eval_every` steps and at the end, a held-out
evaluation -> every `checkpoint.every_steps` steps and at the end, a
checkpoint -> `on_step_end`. Evaluations (`eval_every`, `eval_steps`, the end;
step 0 when `eval_steps` holds it) run the held-out loss and `on_eval`.

The workdir afterwards::

    config.json     the TrainConfig (`config.config_from_dict(TrainConfig, ...)` reloads it)
    metrics.jsonl   {"step": k, "train/loss": ..., "train/tokens_per_sec": ..., "eval/loss": ...}
                    (while the run writes, its lines are in metrics.parts/: `logging.read_metrics`)
    tb/             TensorBoard events of the same scalars
    checkpoints/    the train state of the last `checkpoint.keep` saves, with (as JSON) the
                    data position, the config and the train metrics of the unfinished log window

Partial training (`num_layers_unfrozen`, LoRA; docs/partial_training.md): the
trunks' frozen part is not in the checkpoints. They record its hash and where
it comes from (`TrainConfig.init`, or the `trunk`/`policy` weights given); a
resume rebuilds it from there and refuses, in one line, weights whose hash
differs. `restore_state` reads such a run back outside the loop.

Resuming: run the same command again. The loop restores the newest readable
checkpoint (`TrainConfig.resume`) and continues on the batches, and with the
logged metrics, of a straight run: the data position is `state.step`, and the
log window a checkpoint cuts is saved with it. Lines of `metrics.jsonl` past
the restored step (logged after the last checkpoint, before a crash) are
dropped, since the resumed run logs those steps again; TensorBoard keeps its
old events for those steps beside the new ones.

Faults:

* SIGTERM or SIGINT (Ctrl-C) during training: the loop finishes the current
  step (and its `on_step_end`), saves a checkpoint and raises `Preempted`,
  whose message says how to resume (the same command). A second signal aborts
  at once with KeyboardInterrupt, saving nothing. The previous signal handlers
  are restored when the loop ends (handlers are only set from the main
  thread). A command-line main catches it and exits 128 + the signal's number
  (130 for SIGINT, 143 for SIGTERM, as a shell reports a process the signal
  ended), so a script that chains commands stops there (`ilql_jax.cli.report_errors`)::

      try:
          run(cfg, args.workdir)
      except Preempted as e:
          print(e, file=sys.stderr)
          return 128 + signal.Signals[e.signal].value
      return 0

* A NaN or infinite loss raises FloatingPointError naming the first such
  step. The loss is checked at every log step and before every save, so no
  checkpoint holds a state reached after it: the newest one is the last good one.

Multi-host: call `distributed.maybe_initialize_distributed()` first thing, before
any other JAX call, then run `train_and_evaluate` with the same arguments on
every process. Each process reads its own rows of every global batch; every
process saves its shards (orbax coordinates them); only process 0 writes logs.
A stop signal takes effect at the next log step, where the processes agree on
it (they must all save the same step).

%BC: set `bc_top_fraction` (mode "bc") and pass `returns`, one return per
row of `train_data`; the loop keeps `top_fraction_indices(returns, fraction)`.
Recording the fraction in the config (rather than filtering episodes before
the call) keeps `config.json` a complete description of the run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils

from ilql_jax import checkpoint, files, pretrained, roles, sharding, train
from ilql_jax.config import TrainConfig, config_from_dict, config_to_dict
from ilql_jax.data.batches import BatchIterator, top_fraction_indices
from ilql_jax.data.batch import DTYPES, Batch
from ilql_jax.logging import MetricWriter
from ilql_jax.models import hf_import
from ilql_jax.models import partial as partial_lib
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.state import ILQLState, has_frozen

__all__ = ["Preempted", "check_arrays", "evaluate", "init_weights", "restore_state", "select_train_rows",
           "train_and_evaluate"]

Arrays = Mapping[str, np.ndarray] | Batch


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving a checkpoint; the same command resumes it.

    Attributes:
      signal: the signal's name, e.g. "SIGTERM".
      step: the step saved (and the step a rerun resumes from).
      workdir: the run's directory.
    """

    def __init__(self, signal_name: str, step: int, workdir: str):
        super().__init__(f"{signal_name}: stopped after step {step} and saved it as a checkpoint in {workdir}; "
                         "run the same command again to resume from it")
        self.signal, self.step, self.workdir = signal_name, step, workdir


def check_arrays(data: Arrays, config: TrainConfig, name: str = "train_data", *,
                 min_examples: int | None = None) -> Batch:
    """The `Batch` of `data`'s arrays in their canonical dtypes, or a ValueError naming the problem.

    Checks: every key present, each `[N, max_len]` with one N > 0, N >= batch_size
    (or `min_examples`; batches are never padded), integer ids where ids are
    expected, token ids below the trunk's vocab_size and `next_idx` inside the
    row. Other keys are ignored.
    """
    if isinstance(data, Batch):
        data = data._asdict()
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must be a mapping of name -> array (episodes_to_arrays' output), "
                         f"got {type(data).__name__}")
    out = {}
    for key, dtype in DTYPES._asdict().items():
        if key not in data:
            raise ValueError(f"{name} is missing key {key!r}; needs {', '.join(Batch._fields)}")
        array = np.asarray(data[key])
        if array.ndim != 2 or array.shape[1] != config.max_len:
            raise ValueError(f"{name}[{key!r}] has shape {array.shape}; expected [N, max_len={config.max_len}]")
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name}[{key!r}] must hold integers, got dtype {array.dtype}")
        if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
            raise ValueError(f"{name}[{key!r}] must be numeric, got dtype {array.dtype}")
        out[key] = array.astype(dtype, copy=False)
    sizes = {key: a.shape[0] for key, a in out.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{name} arrays disagree on the number of examples: {sizes}")
    n = sizes["tokens"]
    if n == 0:
        raise ValueError(f"{name} is empty (0 examples)")
    if n < (config.batch_size if min_examples is None else min_examples):
        raise ValueError(f"{name} has {n} examples, fewer than batch_size={config.batch_size}; "
                         "lower batch_size (batches are never padded with repeats)")
    vocab_size = config.step.model.trunk.vocab_size
    if out["tokens"].min() < 0 or out["tokens"].max() >= vocab_size:
        raise ValueError(f"{name}['tokens'] holds ids in [{out['tokens'].min()}, {out['tokens'].max()}], "
                         f"outside the trunk's vocab_size={vocab_size} (tokenizer and model disagree?)")
    if out["next_idx"].min() < 0 or out["next_idx"].max() >= config.max_len:
        raise ValueError(f"{name}['next_idx'] points outside [0, max_len={config.max_len})")
    return Batch(**out)


def select_train_rows(config: TrainConfig, train_data: Arrays, returns: np.ndarray | None = None) -> Batch:
    """The rows the loop trains on: all of them, or for %BC the top `bc_top_fraction` by `returns`."""
    if config.bc_top_fraction is None:
        if returns is not None:
            raise ValueError("returns were given but bc_top_fraction is None; set bc_top_fraction for %BC")
        return check_arrays(train_data, config)
    if returns is None:
        raise ValueError(f"bc_top_fraction={config.bc_top_fraction} (%BC) needs `returns`, one per train_data row")
    # Check the full set first, so its errors name the data rather than the selection.
    data = check_arrays(train_data, config, min_examples=1)
    returns = np.asarray(returns, np.float64)
    if returns.shape != (len(data.tokens),):
        raise ValueError(f"returns has shape {returns.shape}; expected ({len(data.tokens)},), one per row")
    keep = top_fraction_indices(returns, config.bc_top_fraction)
    return check_arrays(Batch(*(a[keep] for a in data)), config,
                        f"train_data (top {config.bc_top_fraction:g} by return)")


@functools.lru_cache(maxsize=8)
def _programs(step_config: train.StepConfig, mesh: jax.sharding.Mesh, rules: sharding.Rules):
    """The state's abstract shape and shardings on `mesh`, and the jitted train and eval steps,
    reused across calls (e.g. in a notebook)."""
    abstract = train.abstract_state(step_config)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    # Each device computes (or copies) only its own shards of a fresh state.
    init = train.make_init(step_config, shardings)
    train_step = train.make_sharded_train_step(step_config, mesh, shardings)
    eval_step = train.make_sharded_eval_step(step_config, mesh, shardings)
    return abstract, shardings, init, train_step, eval_step


def _place_batch(batch: Batch, mesh: jax.sharding.Mesh) -> Batch:
    """This process's rows as one global batch. With one process, the jitted steps' own
    in_shardings place the numpy rows, faster than `sharding.place_batch` would."""
    return batch if jax.process_count() == 1 else sharding.place_batch(batch, mesh)


def _mean(metrics: list[Mapping[str, Any]]) -> dict[str, float]:
    """Host means of a list of metric dicts (device or host values): one transfer, one sync."""
    host = jax.device_get(metrics)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _say(message: str) -> None:
    """A status line from process 0, printed above the progress bar."""
    if jax.process_index() == 0:
        tqdm.tqdm.write(message)


def evaluate(config: TrainConfig, state: ILQLState, eval_data: Arrays,
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
    """Mean held-out metrics over the first `eval_batches` batches of a fixed-seed iterator.

    The same batches every time, so successive evaluations are comparable.
    `eval_data` must have passed `check_arrays`; `mesh` defaults to `config.mesh`'s.
    """
    mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
    *_, eval_step = _programs(config.step, mesh, sharding.logical_rules(config.mesh))
    batches = BatchIterator(eval_data, config.batch_size, config.seed, process_index=jax.process_index(),
                            process_count=jax.process_count())
    return _mean([eval_step(state, _place_batch(batches.batch_at(k), mesh))
                  for k in range(config.eval_batches)])


def _is_eval_step(config: TrainConfig, step: int) -> bool:
    return (step == config.num_steps or step in config.eval_steps
            or bool(config.eval_every and step and step % config.eval_every == 0))


def _evaluations(config: TrainConfig, step: int, state: ILQLState, eval_data: Arrays | None,
                 mesh: jax.sharding.Mesh, on_eval: Callable | None) -> dict[str, float]:
    """The `eval/` metrics at `step`: the held-out loss (with eval data) and what `on_eval` returns."""
    logs = {}
    if eval_data is not None:
        logs.update({f"eval/{k}": v for k, v in evaluate(config, state, eval_data, mesh).items()})
    if on_eval is not None:
        jax.block_until_ready(state)  # the callback sees the step's results, not a pending computation
        logs.update({f"eval/{k}": float(v) for k, v in (on_eval(step, state) or {}).items()})
    return logs


def init_weights(init: str, trunk: trunk_lib.TrunkConfig, shardings: Any = None) -> trunk_lib.Params | None:
    """The trunk weights that `TrainConfig.init` names (None for "scratch": random).

    "bc:DIR" reads π_β from the newest checkpoint of the run in DIR (a BC run,
    or an ILQL run's π_β; one that trained part of its trunk is rebuilt whole
    from its own base weights, checked against the hash it recorded, plus its
    trained part, LoRA adapters merged); anything else is a Hugging Face directory or hub id
    (GPT-2, Llama or Qwen2), a `.gguf` file or a model name (Llama or Qwen2,
    `ilql_jax.pretrained`), whose shape must match `trunk` (its vocabulary may
    grow: within the embedding's padding for GPT-2, as with added markup
    tokens; to `trunk.vocab_size` for Llama, new rows starting as the mean
    row, see `hf_import`). The weights start the value trunk and π_β
    (`train.init_state(config, key, trunk=weights)`).
    With `shardings` (`train.trunk_shardings`), every device reads only its
    own shards (orbax restores them; safetensors slices are read per device);
    otherwise they come back whole (host numpy or one device).
    """
    if init == "scratch":
        return None
    if init.startswith("bc:"):
        step, extra = checkpoint.read_extra(init[3:])
        if "frozen" in extra:
            return _partial_policy(init[3:], step, extra, trunk, shardings)
        return checkpoint.load_policy_from_checkpoint(init[3:], checkpoint.abstract_like(
            trunk_lib.abstract_params(trunk), shardings), step)
    overrides = dict(dtype=trunk.dtype, param_dtype=trunk.param_dtype, dropout=trunk.dropout, remat=trunk.remat,
                     **hf_import.import_overrides(trunk))
    loaded = pretrained.read_trunk_config(init, **overrides)  # a Hugging Face directory, a .gguf, a known name
    if type(loaded) is not type(trunk):
        raise ValueError(f"init={init!r} is a {type(loaded).__name__} checkpoint, but step.model.trunk is a "
                         f"{type(trunk).__name__}")
    for name in hf_import.matching_fields(trunk):
        if getattr(loaded, name) != getattr(trunk, name):
            raise ValueError(f"init={init!r} has {name}={getattr(loaded, name)}, but step.model.trunk has "
                             f"{name}={getattr(trunk, name)}")
    return pretrained.load_trunk(init, shardings=shardings, **overrides)[1]


def _read_run_config(workdir: str) -> TrainConfig:
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"{workdir}: no config.json, so the base weights of its partially trained π_β are unknown")
    return config_from_dict(TrainConfig, json.loads(path.read_text()))


def _shapes(tree: Any) -> list:
    return [(jax.tree_util.keystr(p), tuple(x.shape), str(x.dtype)) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _partial_policy(workdir: str, step: int, extra: Mapping[str, Any], trunk: trunk_lib.TrunkConfig,
                    shardings: Any) -> trunk_lib.Params:
    """π_β, whole and plain, of a run in `workdir` that trained part of its trunks: its frozen part rebuilt
    from that run's own base weights (`init_weights` of its config's init, its seed) and checked against
    the hash checkpoint `step` recorded, plus the trained part read from that checkpoint, adapters merged."""
    run = _read_run_config(workdir)
    model = run.step.model
    if _shapes(trunk_lib.abstract_params(model.trunk)) != _shapes(trunk_lib.abstract_params(trunk)):
        raise ValueError(f"init='bc:{workdir}': that run's trunk ({type(model.trunk).__name__}, {model.trunk.n_layer} "
                         f"layers, width {model.trunk.n_embd}) has other parameter shapes than step.model.trunk")
    base = init_weights(run.init, model.trunk, shardings)
    build = lambda key, base: roles.frozen(train.init_state(run.step, key, base).params)
    if shardings is None:
        frozen = jax.jit(build)(jax.random.key(run.seed), base)
        delta_shardings = None
    else:
        frozen = jax.jit(build, out_shardings=partial_lib.frozen_part(model, shardings))(jax.random.key(run.seed),
                                                                                         base)
        delta_shardings = partial_lib.delta_shardings(model, shardings)
    checkpoint.check_frozen(frozen, extra, f"init='bc:{workdir}' (step {step})")
    abstract = jax.eval_shape(lambda: train.init_state(run.step, jax.random.key(0)).params)
    delta = roles.policy_trunk(abstract)
    delta = checkpoint.load_policy_from_checkpoint(workdir, checkpoint.abstract_like(delta, delta_shardings), step)
    merge = lambda frozen, delta: partial_lib.plain(model, frozen, delta)
    return (jax.jit(merge) if shardings is None else jax.jit(merge, out_shardings=shardings))(frozen, delta)


def _frozen_part(step_config: train.StepConfig, config: TrainConfig, shardings: Any,
                 trunk: trunk_lib.Params | None, policy: trunk_lib.Params | None) -> Any:
    """The frozen part of a fresh state (`params["frozen"]`), alone, from the weights a fresh state starts
    from (`_fresh_state`'s): what a partially trained run's resume rebuilds. `shardings` None: one device."""
    key = jax.random.key(config.seed)
    if train.same_weights(trunk, policy):
        policy = None  # one set of starting weights (inside the jitted init they would look like two)
    if shardings is None:
        if trunk is None and policy is None:
            trunk = init_weights(config.init, config.step.model.trunk)
        build = lambda key, trunk, policy: roles.frozen(train.init_state(step_config, key, trunk, policy).params)
        return jax.jit(build)(key, trunk, policy)
    trunk_shardings = train.trunk_shardings(shardings)
    if trunk is None and policy is None:
        trunk = init_weights(config.init, config.step.model.trunk, trunk_shardings)
    trunk, policy = (None if w is None else sharding.place(w, trunk_shardings) for w in (trunk, policy))
    return train.make_frozen_init(step_config, shardings)(key, trunk, policy)


def _frozen_reference(config: TrainConfig, given: str | None) -> str:
    """Where a partially trained run's frozen weights come from, for its checkpoints and their errors."""
    if given:
        return f"the {given} given to train_and_evaluate"
    return f"init={config.init!r}" + (f" (seed {config.seed})" if config.init == "scratch" else "")


def restore_state(config: TrainConfig, workdir: str, step: int | None = None) -> tuple[ILQLState, dict[str, Any]]:
    """`(state, extra)` of checkpoint `step` (the newest readable when None) of the run in `workdir`, on one
    device, its frozen part rebuilt from `config.init` when it trained part of its trunks (and refused when
    that gives weights with another hash); what `ilql-jax generate` and `export` read a run back with."""
    abstract = train.abstract_state(config.step)
    frozen_fn = (functools.partial(_frozen_part, config.step, config, None, None, None) if has_frozen(abstract)
                 else None)
    return checkpoint.restore(workdir, checkpoint.abstract_like(abstract), step, frozen_fn)


def _fresh_state(config: TrainConfig, shardings: Any, init: Callable[..., ILQLState],
                 trunk: trunk_lib.Params | None, policy: trunk_lib.Params | None) -> ILQLState:
    """A new state built on the mesh in its shardings, from given weights, from `config.init`'s, or random.

    Weights are placed shard by shard first (given ones copied onto the mesh
    unless already there), so no device holds a whole trunk or state.
    """
    key = jax.random.key(config.seed)
    trunk_shardings = train.trunk_shardings(shardings)
    if trunk is None and policy is None:
        trunk = init_weights(config.init, config.step.model.trunk, trunk_shardings)
    if partial_lib.is_partial(config.step.model) and train.same_weights(trunk, policy):
        policy = None  # one set of starting weights, which placing them would hide
    trunk, policy = (None if w is None else sharding.place(w, trunk_shardings) for w in (trunk, policy))
    return init(key, trunk, policy)


def _latest_checkpoint(workdir: epath.Path) -> int | None:
    if not (workdir / checkpoint.CHECKPOINT_DIR).exists():
        return None
    with checkpoint.Checkpointer(workdir, cfg=None) as ckpt:  # read-only: creates nothing
        return ckpt.latest_step()


def _changed_keys(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = []
    for name in sorted(set(saved) | set(current)):
        a, b = saved.get(name), current.get(name)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += _changed_keys(a, b, f"{prefix}{name}.")
        elif a != b:
            keys.append(prefix + name)
    return keys


def _fetch_finite(window: list, ckpt: checkpoint.Checkpointer) -> list:
    """The window's `(step, metrics)` on the host; FloatingPointError at the first step whose loss is not finite."""
    window = jax.device_get(window)
    for step, metrics in window:
        if not np.isfinite(metrics["loss"]):
            ckpt.wait()  # so that the newest checkpoint named below is complete
            raise FloatingPointError(
                f"the train loss is {float(metrics['loss'])} at step {step}; stopping. No checkpoint holds a "
                f"later state: the newest is step {ckpt.latest_step()} in {ckpt.directory}. Lower the learning "
                "rate, clip gradients (step.optim.clip_norm) or check the rewards.")
    return window


def _save(ckpt: checkpoint.Checkpointer, step: int, state: ILQLState, window: list, batches: BatchIterator,
          config_dict: dict, frozen: dict | None = None) -> list:
    """Saves checkpoint `step` once the losses since the last check are finite; returns the window on the host.
    `frozen`: the hash and source of a partially trained run's frozen weights (saved in their place)."""
    window = _fetch_finite(window, ckpt)
    extra = {"data": batches.state(), "config": config_dict,
             "window": [[s, {k: float(v) for k, v in m.items()}] for s, m in window]}
    if frozen is not None:
        extra["frozen"] = frozen
    ckpt.save(step, state, extra)
    return window


class _Progress:
    """The progress bar, counting finished steps rather than dispatched ones.

    Steps are dispatched asynchronously, so a bar advanced at dispatch races
    ahead and then stalls at every host sync (log steps, saves). Where the bar is
    shown, each dispatch waits for the step `LAG` before it (its loss), which
    keeps that many steps queued on the device: the bar then moves as steps
    finish and its rate is theirs. Where it is hidden nothing waits.
    """

    LAG = 2

    def __init__(self, bar: tqdm.tqdm, enabled: bool):
        self.bar, self.enabled = bar, enabled
        self._pending: collections.deque = collections.deque()

    def dispatched(self, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._pending.append(metrics["loss"])
        while len(self._pending) > self.LAG:
            jax.block_until_ready(self._pending.popleft())
            self.bar.update()

    def synced(self) -> None:
        """Every dispatched step has finished (the caller fetched their results)."""
        self.bar.update(len(self._pending))
        self._pending.clear()


class _StopSignals:
    """While active, SIGTERM and SIGINT set `received` (the signal's name) instead of ending the process.

    A second signal raises KeyboardInterrupt at once. Handlers can only be set
    from the main thread; elsewhere (e.g. a worker thread) this does nothing.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise KeyboardInterrupt(f"second stop signal ({name}): aborted without saving a checkpoint")
        self.received = name
        _say(f"{name} received: finishing this step, then saving a checkpoint (send it again to abort at once)")

    def stop(self, at_log: bool) -> bool:
        """Whether to stop after this step; every process gets the same answer."""
        if jax.process_count() == 1:
            return self.received is not None
        # All processes must save the same step. Agreeing takes a collective,
        # so it happens only at log steps, which sync anyway.
        return at_log and bool(np.max(multihost_utils.process_allgather(np.int32(self.received is not None))))

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is closest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def train_and_evaluate(
    config: TrainConfig,
    workdir: str,
    train_data: Arrays,
    eval_data: Arrays | None = None,
    *,
    returns: np.ndarray | None = None,
    state: ILQLState | None = None,
    trunk: trunk_lib.Params | None = None,
    policy: trunk_lib.Params | None = None,
    on_step_end: Callable[[int, ILQLState], None] | None = None,
    on_eval: Callable[[int, ILQLState], Mapping[str, float] | None] | None = None,
) -> ILQLState:
    """Trains for `config.num_steps` micro-steps, logging, evaluating and checkpointing; returns the final state.

    Args:
      config: the run.
      workdir: receives `config.json`, `metrics.jsonl`, `tb/` and
        `checkpoints/` (created if needed); a run resumes from its newest checkpoint.
      train_data, eval_data: `[N, max_len]` arrays keyed by the `Batch` fields,
        as `episodes_to_arrays` makes them, or a `Batch` (every process passes all of them).
      returns: for %BC only: the return of each train_data row.
      state: a state to continue instead of resuming or initialising; training
        runs from `state.step` to `num_steps`, on the same batches a straight
        run would see at those steps. It is copied onto the mesh (yours stays usable).
      trunk, policy: starting GPT-2 weights for a fresh state (see
        `train.init_state`), used only when no checkpoint is restored. Prefer
        `config.init`, which config.json records and which is read only when needed.
      on_step_end: called as `on_step_end(step, state)` after every micro-step
        (after its logging, evaluation and checkpoint save), once the step's
        results are computed (it waits for them: a host sync per step, paid only
        when the hook is given). `state` is donated to the next step: copy what
        you keep, don't hold on to it.
      on_eval: called as `on_eval(step, state)` at every evaluation (see
        `TrainConfig.eval_every` and `eval_steps`; `eval_steps=(0,)` includes the
        fresh state), after the step's results are computed, e.g. to sample and
        score generations. The scalars it returns are logged as `eval/<name>`
        (metrics.jsonl, TensorBoard). Same donation rule as `on_step_end`.

    Raises:
      Preempted: on SIGTERM or SIGINT, after saving a checkpoint of the step just finished.
      FloatingPointError: on a NaN or infinite loss, naming the step (see the module docstring).
    """
    # Validate everything before writing or compiling anything.
    train_data = select_train_rows(config, train_data, returns)
    if eval_data is not None:
        eval_data = check_arrays(eval_data, config, "eval_data")
    if state is not None and (trunk is not None or policy is not None):
        raise ValueError("pass either a state to continue or trunk/policy weights for a fresh one, not both")
    if (trunk is not None or policy is not None) and config.init != "scratch":
        raise ValueError(f"pass trunk/policy weights or set init={config.init!r}, not both")
    mesh = sharding.make_mesh(config.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.batch_size % batch_shards:
        raise ValueError(f"batch_size={config.batch_size} does not split over the mesh's {batch_shards} batch shards "
                         f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); make it a multiple")
    # The vocabulary-sized heads run at this many action states per row: fitted to all the data when
    # unset (config.json keeps "none": the fit is a function of the data), so every batch fits; checked when set.
    masks = {"train_data": train_data.action_mask}
    if eval_data is not None:
        masks["eval_data"] = eval_data.action_mask
    fitted = dataclasses.replace(config, step=train.with_action_capacity(config.step, masks))
    workdir = epath.Path(workdir)
    # Saves never replace a newer checkpoint, so a run that does not resume needs a workdir without later ones.
    latest = None if state is None and config.resume else _latest_checkpoint(workdir)
    if state is None and latest is not None:
        raise ValueError(f"{workdir} holds checkpoints (newest: step {latest}) and resume=False; use a new workdir "
                         f"or delete {workdir / checkpoint.CHECKPOINT_DIR} to start over")
    if state is not None and latest is not None and int(state.step) < latest:
        raise ValueError(f"the given state is at step {int(state.step)}, but {workdir} holds a later checkpoint "
                         f"(step {latest}), which its saves would not replace; use another workdir")

    workdir.mkdir(parents=True, exist_ok=True)
    config_dict = config_to_dict(config)
    files.write_json(workdir / "config.json", config_dict, indent=2)  # process 0 only

    abstract, shardings, init, train_step, _ = _programs(fitted.step, mesh, sharding.logical_rules(config.mesh))
    partial_run = has_frozen(abstract)
    frozen_info, given_state = None, state is not None
    if partial_run and train.same_weights(trunk, policy):
        policy = None  # one set of starting weights (placing them on the mesh would hide that they are one)
    if state is None:
        init_fn = functools.partial(_fresh_state, config, shardings, init, trunk, policy)
        frozen_fn = (functools.partial(_frozen_part, fitted.step, config, shardings, trunk, policy) if partial_run
                     else None)
        state, extra, restored = checkpoint.restore_or_init(workdir, init_fn, shardings, resume=config.resume,
                                                            abstract_state=abstract, frozen_fn=frozen_fn)
    else:
        # A copy: the train step donates its input.
        state, extra, restored = sharding.shard_state(state, shardings), {}, False
    start = int(state.step)
    if partial_run:
        given = ("state" if given_state else "trunk/policy weights" if trunk is not None or policy is not None
                 else None)
        frozen_info = {"sha256": partial_lib.fingerprint(roles.frozen(state.params)),
                       "reference": _frozen_reference(config, given)}
    if restored:
        _say(f"resumed from checkpoint step {start} in {workdir}")
        changed = _changed_keys(extra.get("config", {}), json.loads(json.dumps(config_dict)))
        if changed:
            _say(f"the config differs from the checkpoint's in: {', '.join(changed)}")

    batches = BatchIterator(train_data, config.batch_size, config.seed, start_step=start,
                            process_index=jax.process_index(), process_count=jax.process_count())
    if "data" in extra:
        batches.restore(extra["data"])  # refuses a checkpoint made with another data seed
        if batches.step != start:
            raise ValueError(f"checkpoint step {start} holds data position {batches.step}; expected {start}")
    # Train metrics of the log window the checkpoint cut: the next log averages the same steps as a straight run.
    # The metrics are float32; JSON holds their values exactly.
    window = [(s, {k: np.float32(v) for k, v in m.items()}) for s, m in extra.get("window", [])]

    show_bar = config.progress and jax.process_index() == 0
    with (checkpoint.Checkpointer(workdir, config.checkpoint) as ckpt, _StopSignals() as signals,
          MetricWriter(workdir, purge_step=start + 1 if start else None) as writer,
          tqdm.tqdm(total=config.num_steps, initial=start, disable=not show_bar, desc="train",
                    dynamic_ncols=True) as bar):
        if writer.dropped:
            _say(f"metrics.jsonl: dropped {writer.dropped} line(s) from step {start + 1} on, which this run logs again")
        if start == 0 and 0 in config.eval_steps:
            writer.write(0, _evaluations(config, 0, state, eval_data, mesh, on_eval))
        progress = _Progress(bar, show_bar)
        window_tokens, window_start = 0, time.perf_counter()
        for step in range(start + 1, config.num_steps + 1):
            host_batch = next(batches)
            # Host numpy, no device sync; this process's rows scaled to the global batch (packed rows hold segment ids).
            window_tokens += int((host_batch.attention_mask > 0).sum()) * jax.process_count()
            state, metrics = train_step(state, _place_batch(host_batch, mesh))
            window.append((step, metrics))  # stays on device until the next log or save
            progress.dispatched(metrics)

            last = step == config.num_steps
            at_log = step % config.log_every == 0 or last
            logs = {}
            if at_log:
                window = _fetch_finite(window, ckpt)
                progress.synced()
                logs = {f"train/{k}": v for k, v in _mean([m for _, m in window]).items()}
                # Includes compilation in the first window.
                logs["train/tokens_per_sec"] = window_tokens / (time.perf_counter() - window_start)
                bar.set_postfix(loss=f"{logs['train/loss']:.4g}", tok_s=f"{logs['train/tokens_per_sec']:.0f}")
                window, window_tokens, window_start = [], 0, time.perf_counter()
            if _is_eval_step(config, step):
                eval_start = time.perf_counter()
                logs.update(_evaluations(fitted, step, state, eval_data, mesh, on_eval))
                window_start += time.perf_counter() - eval_start  # keep eval time out of tokens/s
            if logs:
                writer.write(step, logs)

            saved = ckpt.should_save(step) or last
            if saved:  # every process saves: orbax coordinates the writes
                window = _save(ckpt, step, state, window, batches, config_dict, frozen_info)
                progress.synced()
            if on_step_end is not None:
                jax.block_until_ready(state)
                on_step_end(step, state)
            if signals.stop(at_log):
                if not saved:
                    window = _save(ckpt, step, state, window, batches, config_dict, frozen_info)
                ckpt.wait()
                raise Preempted(signals.received or "a stop signal on another process", step, str(workdir))
    return state
