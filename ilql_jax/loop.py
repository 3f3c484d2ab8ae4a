"""`train_and_evaluate`: the one training loop every experiment shares.

In execution order: check the data (before anything is written or compiled),
keep the %BC rows, write `config.json`, initialise the state (or take the one
given), then for each micro-step: host batch -> jitted train step (state
donated) -> every `log_every` steps fetch the averaged metrics (the loop's only
host sync) -> every `eval_every` steps and at the end, a held-out evaluation
-> `on_step_end` (where checkpoint saves go).

The workdir afterwards::

    config.json     the TrainConfig (`config.config_from_dict(TrainConfig, ...)` reloads it)
    metrics.jsonl   {"step": k, "train/loss": ..., "train/tokens_per_sec": ..., "eval/loss": ...}
    tb/             TensorBoard events of the same scalars

%BC: set `bc_top_fraction` (mode "bc") and pass `returns`, one return per
row of `train_data`; the loop keeps `top_fraction_indices(returns, fraction)`.
Recording the fraction in the config (rather than filtering episodes before
the call) keeps `config.json` a complete description of the run.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping

import jax
import numpy as np
import tqdm
from etils import epath

from ilql_jax import train
from ilql_jax.config import TrainConfig, config_to_dict
from ilql_jax.data.batches import BatchIterator, top_fraction_indices
from ilql_jax.data.episodes import ARRAY_DTYPES
from ilql_jax.logging import MetricWriter
from ilql_jax.models import gpt2
from ilql_jax.state import ILQLState

__all__ = ["check_arrays", "evaluate", "select_train_rows", "train_and_evaluate"]

Arrays = Mapping[str, np.ndarray]
_INT_KEYS = ("tokens", "attention_mask", "next_idx")


def check_arrays(data: Arrays, config: TrainConfig, name: str = "train_data", *,
                 min_examples: int | None = None) -> dict[str, np.ndarray]:
    """The `BATCH_KEYS` arrays of `data` in their canonical dtypes, or a ValueError naming the problem.

    Checks: every key present, each `[N, max_len]` with one N > 0, N >= batch_size
    (or `min_examples`; batches are never padded), integer ids where ids are
    expected, token ids below the trunk's vocab_size and `next_idx` inside the
    row. Other keys are ignored.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{name} must be a mapping of name -> array (episodes_to_arrays' output), "
                         f"got {type(data).__name__}")
    out = {}
    for key in train.BATCH_KEYS:
        if key not in data:
            raise ValueError(f"{name} is missing key {key!r}; needs {', '.join(train.BATCH_KEYS)}")
        array = np.asarray(data[key])
        if array.ndim != 2 or array.shape[1] != config.max_len:
            raise ValueError(f"{name}[{key!r}] has shape {array.shape}; expected [N, max_len={config.max_len}]")
        if key in _INT_KEYS and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name}[{key!r}] must hold integers, got dtype {array.dtype}")
        if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
            raise ValueError(f"{name}[{key!r}] must be numeric, got dtype {array.dtype}")
        out[key] = array.astype(ARRAY_DTYPES[key], copy=False)
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
    return out


def select_train_rows(config: TrainConfig, train_data: Arrays, returns: np.ndarray | None = None) -> dict[str, np.ndarray]:
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
    if returns.shape != (len(data["tokens"]),):
        raise ValueError(f"returns has shape {returns.shape}; expected ({len(data['tokens'])},), one per row")
    keep = top_fraction_indices(returns, config.bc_top_fraction)
    return check_arrays({k: a[keep] for k, a in data.items()}, config,
                        f"train_data (top {config.bc_top_fraction:g} by return)")


@functools.lru_cache(maxsize=8)
def _compiled_steps(config: train.StepConfig):
    """One jitted train and eval step per StepConfig, reused across calls (e.g. in a notebook)."""
    return train.make_train_step(config), train.make_eval_step(config)


def _mean(metrics: list[Mapping[str, jax.Array]]) -> dict[str, float]:
    """Host means of a list of device metric dicts: one transfer, one sync."""
    host = jax.device_get(metrics)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def evaluate(config: TrainConfig, state: ILQLState, eval_data: Arrays) -> dict[str, float]:
    """Mean held-out metrics over the first `eval_batches` batches of a fixed-seed iterator.

    The same batches every time, so successive evaluations are comparable.
    `eval_data` must have passed `check_arrays`.
    """
    _, eval_step = _compiled_steps(config.step)
    batches = BatchIterator(eval_data, config.batch_size, config.seed)
    return _mean([eval_step(state, batches.batch_at(k)) for k in range(config.eval_batches)])


def train_and_evaluate(
    config: TrainConfig,
    workdir: str,
    train_data: Arrays,
    eval_data: Arrays | None = None,
    *,
    returns: np.ndarray | None = None,
    state: ILQLState | None = None,
    trunk: gpt2.Params | None = None,
    policy: gpt2.Params | None = None,
    on_step_end: Callable[[int, ILQLState], None] | None = None,
) -> ILQLState:
    """Trains for `config.num_steps` micro-steps, logging and evaluating; returns the final state.

    Args:
      config: the run.
      workdir: receives `config.json`, `metrics.jsonl` and `tb/` (created if needed).
      train_data, eval_data: `[N, max_len]` arrays keyed by `train.BATCH_KEYS`,
        as `episodes_to_arrays` makes them.
      returns: for %BC only: the return of each train_data row.
      state: a state to continue (e.g. restored from a checkpoint); training
        runs from `state.step` to `num_steps`, on the same batches a straight
        run would see at those steps. Default: a fresh one from `config.seed`.
      trunk, policy: starting GPT-2 weights for a fresh state (see `train.init_state`).
      on_step_end: called as `on_step_end(step, state)` after every micro-step
        (after its logging and evaluation). `state` is donated to the next
        step: copy what you keep, don't hold on to it.
    """
    # Validate everything before writing or compiling anything.
    train_data = select_train_rows(config, train_data, returns)
    if eval_data is not None:
        eval_data = check_arrays(eval_data, config, "eval_data")
    if state is not None and (trunk is not None or policy is not None):
        raise ValueError("pass either a state to continue or trunk/policy weights for a fresh one, not both")
    if jax.process_count() > 1:
        # BatchIterator already yields per-host slices; the missing piece is
        # assembling them into one global sharded batch.
        raise NotImplementedError("multi-host training needs global batch assembly (sharding.py)")

    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(config_to_dict(config), indent=2) + "\n")

    # CHECKPOINT RESTORE goes here (checkpoint.py): when `state` is None and the
    # workdir holds a checkpoint, restore the latest one; the data position
    # needs nothing more, since it is `state.step`.
    if state is None:
        state = train.init_state(config.step, jax.random.key(config.seed), trunk, policy)
    # Placing the state and batches on a device mesh (sharding.py) goes here.
    train_step, _ = _compiled_steps(config.step)
    start = int(state.step)
    batches = BatchIterator(train_data, config.batch_size, config.seed, start_step=start)

    show_bar = config.progress and jax.process_index() == 0
    with MetricWriter(workdir) as writer, tqdm.tqdm(total=config.num_steps, initial=start, disable=not show_bar,
                                                    desc="train", dynamic_ncols=True) as bar:
        window, window_tokens, window_start = [], 0, time.perf_counter()
        for step in range(start + 1, config.num_steps + 1):
            batch = next(batches)
            window_tokens += int(batch["attention_mask"].sum())  # host numpy: no device sync
            state, metrics = train_step(state, batch)
            window.append(metrics)  # stays on device until the next log
            bar.update()

            last = step == config.num_steps
            logs = {}
            if step % config.log_every == 0 or last:
                logs = {f"train/{k}": v for k, v in _mean(window).items()}
                # Includes compilation in the first window.
                logs["train/tokens_per_sec"] = window_tokens / (time.perf_counter() - window_start)
                bar.set_postfix(loss=f"{logs['train/loss']:.4g}", tok_s=f"{logs['train/tokens_per_sec']:.0f}")
                window, window_tokens, window_start = [], 0, time.perf_counter()
            if eval_data is not None and (last or (config.eval_every and step % config.eval_every == 0)):
                eval_start = time.perf_counter()
                logs.update({f"eval/{k}": v for k, v in evaluate(config, state, eval_data).items()})
                window_start += time.perf_counter() - eval_start  # keep eval time out of tokens/s
            if logs:
                writer.write(step, logs)

            # CHECKPOINT SAVE goes here: checkpoint.py's saver, passed as
            # `on_step_end`, decides which steps to save (every process saves).
            if on_step_end is not None:
                on_step_end(step, state)
    return state
