"""`--reward MODULE:FUNCTION`: your scorer for `generate` and `sweep`, loaded and called with checked results.

The function takes the reply, or the prompt's history and the reply:

    def score(reply: str) -> float: ...
    def score(turns: list[dict], reply: str) -> float: ...

`turns` is the history the reply answers, as a data file writes it:
`[{"role": "env", "text": ...}, {"role": "agent", "text": ..., "reward": ...}, ...]`
(a single prompt is `[{"role": "env", "text": prompt}]`). A function with the
attribute `batched = True` is called once per β with lists instead,
`score(replies)` or `score(turns_list, replies)`, and returns one number per
reply (e.g. a classifier that scores a batch at once).

MODULE is an importable module (the current directory is searched first, as
`python -m` does) or a path to a `.py` file. Loading fails early, before the
checkpoint is read, with one line; so does a function that raises or returns
something other than a finite number, naming the reply's prompt.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ilql_jax.config import ConfigError

__all__ = ["Reward", "load", "score"]


class Reward(NamedTuple):
    spec: str           # MODULE:FUNCTION as given
    fn: Callable
    with_turns: bool    # called as fn(turns, reply), else fn(reply)
    batched: bool


def _module(spec: str, name: str):
    if name.endswith(".py") or os.sep in name or (os.altsep and os.altsep in name):
        if not os.path.isfile(name):
            raise ConfigError(f"--reward {spec}: no such file {name}")
        module_spec = importlib.util.spec_from_file_location(
            "_ilql_reward_" + os.path.splitext(os.path.basename(name))[0], name)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script's path lacks it; `python -m` has it
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise ConfigError(f"--reward {spec}: no module named {e.name!r} (searched the current directory "
                              "and the installed packages; or give a path/to/file.py)") from None
        raise


def load(spec: str) -> Reward:
    """The function `spec` (MODULE:FUNCTION) names, checked to take (reply) or (turns, reply)."""
    name, _, attr = spec.rpartition(":")
    try:
        module = _module(spec, name)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - your module's own error, in one line (ILQL_DEBUG=1: traceback)
        raise ConfigError(f"--reward {spec}: importing {name} raised {type(e).__name__}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--reward {spec}: {name} has no function {attr!r}")
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):  # no signature to read (some builtins): take the documented two-argument form
        params = [None, None]
    if len(params) not in (1, 2):
        raise ConfigError(f"--reward {spec}: {attr} takes {len(params)} required arguments; it must take (reply) "
                          "or (turns, reply)")
    return Reward(spec, fn, len(params) == 2, bool(getattr(fn, "batched", False)))


def _number(reward: Reward, value, where: str) -> float:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"--reward {reward.spec} returned {value!r} for {where}; expected a finite number")
    return float(value)


def score(reward: Reward, turns: Sequence[list[dict]], replies: Sequence[str],
          where: Sequence[str]) -> np.ndarray:
    """The rewards of `replies` (each answering `turns[i]`); `where[i]` names reply i in error messages."""
    def call(what: str, turns_arg, replies_arg):
        try:
            return reward.fn(turns_arg, replies_arg) if reward.with_turns else reward.fn(replies_arg)
        except Exception as e:  # noqa: BLE001 - your function's error, in one line (ILQL_DEBUG=1: traceback)
            raise ConfigError(f"--reward {reward.spec} raised {type(e).__name__}: {e} (scoring {what})") from e

    if not reward.batched:
        return np.asarray([_number(reward, call(w, t, r), w) for t, r, w in zip(turns, replies, where)], np.float64)
    values = call("a batch of replies", list(turns), list(replies))
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"--reward {reward.spec} (batched) returned {type(values).__name__}; expected one number "
                          f"per reply ({len(replies)})") from None
    if len(values) != len(replies):
        raise ConfigError(f"--reward {reward.spec} (batched) returned {len(values)} values for {len(replies)} replies")
    return np.asarray([_number(reward, v, w) for v, w in zip(values, where)], np.float64)
