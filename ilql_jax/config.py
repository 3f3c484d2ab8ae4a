"""Run configuration: `TrainConfig`, dotted command-line flags, and a JSON round trip.

Every config is a frozen dataclass; nested configs become dotted names, the
same on the command line and in `config.json`::

    --batch_size 32 --step.loss.tau 0.6 --step.optim.learning_rate 1e-4
    --step.model.trunk.n_layer 2 --bc_top_fraction none --step.model.shared_policy true

    {"batch_size": 32, "step": {"loss": {"tau": 0.6, ...}, ...}, ...}

Leaf fields may be int, float, str, bool (`true`/`false`), tuples (given as
JSON lists on the command line, e.g. `--mesh.rules '[["embed", "fsdp"]]'`) or
Optional of those (`none`). Unknown names and bad values raise `ConfigError`
(a `ValueError`) naming the flag or key, never a silent default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ilql_jax.configs import CheckpointConfig, MeshConfig, StepConfig

__all__ = [
    "ConfigError",
    "TrainConfig",
    "add_arguments",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "parse_config",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: the train step, and how the loop feeds and watches it.

    Attributes:
      step: what the jitted train step computes (mode, model, loss, optimizer).
      batch_size: global examples per micro-step; the effective batch is
        batch_size x step.optim.grad_accum.
      max_len: tokens per example; data arrays must be [N, max_len].
      num_steps: total micro-steps; a run resumed at step k runs the rest.
      log_every: micro-steps between fetches of the train metrics (the only
        host syncs of the loop).
      eval_every: micro-steps between evaluations (0: only at the end): the
        held-out loss and the loop's `on_eval` callback.
      eval_steps: further steps at which to evaluate; 0 evaluates the fresh
        state before its first update (a baseline for `on_eval`'s metrics).
      eval_batches: held-out batches averaged per evaluation (always the same ones).
      seed: seeds parameter init, dropout and the data order.
      bc_top_fraction: %BC: with step.mode "bc", train only on this top fraction
        of examples by return (the loop then needs `returns`); none: all.
      progress: show a tqdm progress bar (process 0 only).
      mesh: the device mesh and parameter layout; the default is pure data
        parallelism over every device (one CPU: a 1-device mesh).
      checkpoint: how often the train state is saved (and always at the end),
        how many checkpoints are kept, and whether saves are asynchronous.
      resume: continue from the newest checkpoint in the workdir when there is
        one (the default). False refuses a workdir that holds checkpoints.
      init: where a fresh state's GPT-2 weights come from (read only when no
        checkpoint is restored): "scratch" (random, from seed); "bc:DIR" (the
        π_β of the BC run in workdir DIR, newest checkpoint; it starts the value
        trunk and π_β); else a Hugging Face GPT-2, Llama or Qwen2 directory or hub id, a .gguf file
        (Llama or Qwen2) or a model name such as "smollm2-135m-instruct" (docs/pretrained.md); its shape
        must match step.model.trunk.
    """

    step: StepConfig = StepConfig()
    batch_size: int = 32
    max_len: int = 128
    num_steps: int = 1000
    log_every: int = 50
    eval_every: int = 500
    eval_steps: tuple[int, ...] = ()
    eval_batches: int = 8
    seed: int = 0
    bc_top_fraction: float | None = None
    progress: bool = True
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    resume: bool = True
    init: str = "scratch"

    def __post_init__(self):
        for name, minimum in (("batch_size", 1), ("max_len", 2), ("num_steps", 1), ("log_every", 1),
                              ("eval_every", 0), ("eval_batches", 1), ("seed", 0)):
            if getattr(self, name) < minimum:
                raise ValueError(f"TrainConfig.{name} must be >= {minimum}, got {getattr(self, name)}")
        if any(not isinstance(k, int) or not 0 <= k <= self.num_steps for k in self.eval_steps):
            raise ValueError(f"TrainConfig.eval_steps must be steps in [0, num_steps={self.num_steps}], "
                             f"got {self.eval_steps}")
        if self.max_len > self.step.model.trunk.n_positions:
            raise ValueError(f"TrainConfig.max_len={self.max_len} exceeds the trunk's "
                             f"n_positions={self.step.model.trunk.n_positions}")
        if self.bc_top_fraction is not None:
            if self.step.mode != "bc":
                raise ValueError("TrainConfig.bc_top_fraction (%BC) needs step.mode='bc', "
                                 f"got {self.step.mode!r}")
            if not 0.0 < self.bc_top_fraction <= 1.0:
                raise ValueError(f"TrainConfig.bc_top_fraction must be in (0, 1], got {self.bc_top_fraction}")
        if self.step.mode != "bc" and self.step.model.frozen_policy and self.init == "scratch":
            raise ValueError("TrainConfig: step.model.frozen_policy with init='scratch' would keep a random π_β; "
                             "start from a BC run (init='bc:<workdir>') or GPT-2 weights")
        if not self.init or self.init == "bc:":
            raise ValueError(f"TrainConfig.init must be 'scratch', 'bc:<workdir>' or a GPT-2 path or hub id, "
                             f"got {self.init!r}")


class ConfigError(ValueError):
    """A bad flag, key or value; `path` is the dotted config path it concerns."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


# ---------------------------------------------------------------------------
# Walking nested frozen dataclasses.
# ---------------------------------------------------------------------------

_LEAF_TYPES = (int, float, str, bool, tuple)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_nested(tp: Any) -> bool:
    """A nested config: a dataclass, or a choice of dataclasses (`_config_union`)."""
    return _is_config(tp) or bool(_config_union(tp))


def _config_union(tp: Any) -> tuple[type, ...]:
    """The dataclasses of an annotation such as `GPT2Config | LlamaConfig` (a choice of nested config), else ()."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return ()
    args = typing.get_args(tp)
    return args if all(isinstance(a, type) and dataclasses.is_dataclass(a) for a in args) else ()


def _config_class(tp: Any, value: Any = None) -> type:
    """The dataclass a config annotation stands for: itself, or for a union the member `value` is (an
    instance), or names (a dict whose "arch" matches the member's `arch` default; a dict without "arch"
    is the member that has no `arch` field, e.g. a GPT2Config saved before LlamaConfig existed)."""
    members = _config_union(tp)
    if not members:
        return tp
    if dataclasses.is_dataclass(value) and type(value) in members:
        return type(value)
    arch = value.get("arch") if isinstance(value, Mapping) else None
    for cls in members:
        own = _default(cls, "arch") if "arch" in _fields(cls) else None
        if own == arch:
            return cls
    raise ConfigError(f"unknown arch {arch!r}; expected one of "
                      f"{[_default(c, 'arch') if 'arch' in _fields(c) else None for c in members]}")


def _fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation (configs use `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _leaf(tp: Any, path: str) -> tuple[type, bool]:
    """(base type, accepts None) of a leaf annotation such as `int`, `float | None` or `tuple[str, ...]`."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(rest) == 1:
            tp, optional = rest[0], True
    if typing.get_origin(tp) is tuple:
        tp = tuple  # its items are checked where they are used (e.g. sharding.logical_rules)
    if tp not in _LEAF_TYPES:
        raise TypeError(f"config field {path!r} has type {tp!r}; only int, float, str, bool, tuple, "
                        "Optional of those and nested dataclasses are supported")
    return tp, optional


def _tupled(value: Any) -> Any:
    """JSON lists as tuples, recursively (dataclass configs hold tuples, JSON gives back lists)."""
    return tuple(_tupled(v) for v in value) if isinstance(value, (list, tuple)) else value


def _describe(tp: type, optional: bool) -> str:
    text = {int: "an int", float: "a float", str: "a string", bool: "true or false", tuple: "a JSON list"}[tp]
    return text + " or none" if optional else text


def _from_text(text: str, tp: type, optional: bool) -> Any:
    """A command-line string as a value of the leaf type; ValueError if it is not one."""
    if optional and text.lower() == "none":
        return None
    try:
        if tp is bool:
            return {"true": True, "false": False}[text.lower()]
        if tp is tuple:
            value = json.loads(text)
            if not isinstance(value, list):
                raise ValueError
            return _tupled(value)
        return tp(text)
    except (KeyError, ValueError):
        raise ValueError(f"expected {_describe(tp, optional)}, got {text!r}") from None


def _check_value(value: Any, tp: Any, path: str) -> Any:
    """A Python (JSON) value checked against the leaf type; ints are accepted for floats."""
    tp, optional = _leaf(tp, path)
    if value is None and optional:
        return None
    is_bool = isinstance(value, bool)
    if tp is float and isinstance(value, (int, float)) and not is_bool:
        return float(value)
    if tp is tuple and isinstance(value, (list, tuple)):
        return _tupled(value)
    if (tp is bool) == is_bool and isinstance(value, tp):
        return value
    raise ConfigError(f"config key {path!r}: expected {_describe(tp, optional)}, got {value!r}", path)


def _field_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the class docstring's `Attributes:` section (for --help)."""
    _, found, section = (cls.__doc__ or "").partition("Attributes:")
    docs, names, indent = {}, [], None
    for line in section.splitlines() if found else []:
        match = re.match(r"(\s+)(\w+(?:,\s*\w+)*):\s+(.*)", line)
        if match and indent in (None, len(match.group(1))):
            indent = len(match.group(1))
            names = [n.strip() for n in match.group(2).split(",")]
            for name in names:
                docs[name] = match.group(3)
        elif line.strip() and indent is not None and len(line) - len(line.lstrip()) > indent:
            for name in names:
                docs[name] += " " + line.strip()
        elif line.strip():
            break  # the section ended
    return docs


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, cls_or_instance: Any, prefix: str = "") -> None:
    """Adds one `--dotted.name` flag per leaf field of a (nested) config dataclass.

    Flags default to `argparse.SUPPRESS`, so the parsed namespace holds only
    the flags given (as `vars(namespace)`: dotted name -> typed value); feed
    it to `apply_overrides`. With an instance, --help shows its values as defaults.
    """
    is_cls = isinstance(cls_or_instance, type)
    cls = cls_or_instance if is_cls else type(cls_or_instance)
    # A field is documented on the class that declares it (the trunks' shared fields on `configs._Trunk`).
    docs = {name: doc for klass in reversed(cls.__mro__) for name, doc in _field_docs(klass).items()}
    for name, tp in _fields(cls).items():
        path = prefix + name
        default = _default(cls, name) if is_cls else getattr(cls_or_instance, name)
        if _is_nested(tp):
            add_arguments(parser, _config_class(tp) if default is dataclasses.MISSING else default, path + ".")
            continue
        base, optional = _leaf(tp, path)

        def parse(text, base=base, optional=optional):
            try:
                return _from_text(text, base, optional)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None  # argparse prefixes the flag

        shown = "required" if default is dataclasses.MISSING else f"default: {default}"
        # argparse %-formats help strings, and docstrings mention %BC.
        text = f"{docs.get(name, '')} ({shown})".strip().replace("%", "%%")
        parser.add_argument(f"--{path}", dest=path, type=parse, default=argparse.SUPPRESS,
                            required=default is dataclasses.MISSING,
                            metavar="JSON" if base is tuple else base.__name__.upper(), help=text)


class _RaisingParser(argparse.ArgumentParser):
    """Raises ConfigError instead of printing usage and exiting (usable from notebooks)."""

    def error(self, message):
        raise ConfigError(f"{message}; run with --help to list the flags")


def parse_config(cls: type, argv: Sequence[str], defaults: Any = None,
                 parser: argparse.ArgumentParser | None = None) -> Any:
    """A `cls` config from dotted flags in `argv` over `defaults` (or `cls`'s own defaults).

    `parser`, when given, receives the config's flags beside its own (e.g. a
    driver's `--workdir`): `argv` is parsed by it whole, so --help lists every
    field, and its own flags are left out of the config. Its `error` should
    raise (see `_RaisingParser`) for the ConfigError below.

    Raises:
      ConfigError: an unknown flag, a missing required one, a bad value, or a
        value the config rejects, naming the flag.
    """
    own: set[str] = set()
    if parser is None:
        parser = _RaisingParser(prog=cls.__name__, allow_abbrev=False)
    else:
        own = {a.dest for a in parser._actions}
    add_arguments(parser, cls if defaults is None else defaults)
    overrides = {k: v for k, v in vars(parser.parse_args(list(argv))).items() if k not in own}
    try:
        if defaults is None and any(_default(cls, name) is dataclasses.MISSING for name in _fields(cls)):
            # No instance to start from: required fields come from the flags (argparse checked they were given).
            return config_from_dict(cls, _nested(overrides))
        return apply_overrides(cls() if defaults is None else defaults, overrides)
    except ConfigError as e:
        # A message that names its flags stands alone; otherwise name the flags that built the config it is about.
        if any(re.search(rf"--{re.escape(k)}\b", str(e)) for k in (*overrides, *_fields(cls))):
            raise ConfigError(str(e), e.path) from e
        flags = [f"--{k} {overrides[k]}" for k in overrides
                 if k.rpartition(".")[0] == e.path]
        raise ConfigError(f"{', '.join(flags) or 'flags'}: {e}", e.path) from e


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` as `{"a": {"b": 1}}`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


# ---------------------------------------------------------------------------
# Dicts and JSON.
# ---------------------------------------------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict of a config dataclass (JSON-serialisable)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: Mapping[str, Any], _prefix: str = "") -> Any:
    """The `cls` config of a (nested) dict, e.g. a loaded `config.json`.

    Missing keys take the dataclass defaults; unknown keys and wrongly typed
    values raise `ConfigError` naming the dotted key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {_prefix.rstrip('.') or cls.__name__!r}: expected a mapping, "
                          f"got {type(data).__name__}", _prefix.rstrip("."))
    fields = _fields(cls)
    for name in data:
        if name not in fields:
            raise ConfigError(f"unknown config key {_prefix + str(name)!r} ({cls.__name__} has "
                              f"{', '.join(fields)})", _prefix + str(name))
    kwargs = {}
    for name, value in data.items():
        tp, path = fields[name], _prefix + name
        if _is_nested(tp):
            try:
                cls_of_value = _config_class(tp, value)
            except ConfigError as e:
                raise ConfigError(f"config key {path!r}: {e}", path) from None
            kwargs[name] = config_from_dict(cls_of_value, value, path + ".")
        else:
            kwargs[name] = _check_value(value, tp, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a missing required field, or __post_init__ refusing
        path = _prefix.rstrip(".")
        raise ConfigError(f"{path}: {e}" if path else str(e), path) from e


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """`config` with dotted-name overrides, e.g. `{"step.loss.tau": 0.6}`, type-checked."""
    data = config_to_dict(config)
    for key, value in overrides.items():
        node, cls = data, type(config)
        *parents, leaf = key.split(".")
        for i, name in enumerate(parents):
            fields = _fields(cls)
            if name not in fields or not _is_nested(fields[name]):
                raise ConfigError(f"unknown config key {'.'.join(parents[:i + 1])!r} in {key!r}", key)
            node, cls = node[name], _config_class(fields[name], node[name])
        if leaf not in _fields(cls) or _is_nested(_fields(cls)[leaf]):
            raise ConfigError(f"unknown config key {key!r}", key)
        node[leaf] = value
    return config_from_dict(type(config), data)
