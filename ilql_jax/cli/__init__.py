"""`ilql-jax` (also `python -m ilql_jax`): train, sweep β, generate and export on your own data.

    ilql-jax train --data records.jsonl --workdir runs/mine
    ilql-jax sweep --workdir runs/mine --prompts prompts.txt --beta 0,4,16,64 --reward my_reward.py:score
    ilql-jax generate --workdir runs/mine --beta 16 --prompt "Hi, my order is late."
    ilql-jax export --workdir runs/mine --out exported/

`ilql-jax SUBCOMMAND --help` lists every option with its meaning and default
(generated from the dataclasses in `options.py`); docs/cli.md has the data format.

Bad input (a flag, a value, a data file) stops the command before it trains
or decodes anything, with one line on stderr that names the flag, or the file,
line and field, and exit status 2; set ILQL_DEBUG=1 for the traceback instead.
A run stopped by SIGINT (Ctrl-C) or SIGTERM saves a checkpoint and exits
130 or 143 (128 + the signal's number, as a shell reports a process the
signal ended), so `ilql-jax train ... && ilql-jax generate ...` stops there.

Why the flags are parsed by `ilql_jax.config` (argparse) rather than a
dataclass-CLI library such as tyro: the same dotted names, value syntax
(`true`/`false`, `none`, JSON lists) and type checks serve `config.json`
and every driver's flags already, and tyro (tried: 1.0.16) changes that syntax
(`--flag/--no-flag`, kebab-case, space-separated tuples), prints its errors as
multi-line panels where a bad flag here must be one line, and would add
tyro, typeguard, rich and shtab to a lean install. `config.add_arguments`
already builds --help from the dataclass fields and their docstrings.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ilql_jax.config import ConfigError, parse_config

__all__ = ["ArgumentParser", "main", "report_errors"]

PROG = "ilql-jax"
DEBUG_ENV = "ILQL_DEBUG"
COMMANDS = ("train", "sweep", "generate", "export")


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, reported by `report_errors`) instead of printing usage."""

    def error(self, message):
        raise ConfigError(f"{message}; run with --help to list the flags")


def _user_errors() -> tuple[type[BaseException], ...]:
    from ilql_jax.data.records import DataError
    return ConfigError, DataError, FileNotFoundError


def report_errors(prog: str, fn: Callable[[], Any]) -> Any:
    """`fn()`, with bad input reported as one line on stderr and SystemExit(2) (a traceback with ILQL_DEBUG=1).

    A `Preempted` run (SIGINT/SIGTERM after a checkpoint) prints how to resume and exits 128 + the
    signal's number (`exit_status`): 130 for SIGINT, 143 for SIGTERM.
    """
    try:
        return fn()
    except SystemExit:  # --help, or a subcommand's own exit: before `_user_errors` loads the data modules
        raise
    except _user_errors() as e:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message = " ".join(str(e).split())  # one line, whatever the exception held
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:
        # Only a run that imported the loop can be preempted: `--help` stays free of the training stack.
        loop = sys.modules.get("ilql_jax.loop")
        if loop is None or not isinstance(e, loop.Preempted):
            raise
        print(e, file=sys.stderr)
        raise SystemExit(exit_status(e.signal)) from None


def exit_status(signal_name: str) -> int:
    """128 + the signal's number (the shell's status for a process a signal ended); SIGTERM's when the
    stop came from another process of a multi-host job."""
    try:
        return 128 + signal.Signals[signal_name].value
    except KeyError:
        return 128 + signal.SIGTERM.value


def _parser() -> tuple[ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="Run `ilql-jax SUBCOMMAND --help` for its options.")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    from ilql_jax.cli.options import ExportOptions, GenerateOptions, SweepOptions, TrainOptions
    subs = {}
    classes = {"train": TrainOptions, "sweep": SweepOptions, "generate": GenerateOptions, "export": ExportOptions}
    for name, cls in classes.items():
        summary = cls.__doc__.split("\n\n")[0]
        subs[name] = subparsers.add_parser(name, help=summary.split(": ", 1)[-1], description=cls.__doc__.split(
            "\n\n    Attributes:")[0].replace("\n    ", "\n"), allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        subs[name].options_class = cls
    return parser, subs


def parse(argv: Sequence[str]) -> tuple[str, Any]:
    """`(subcommand, its options dataclass)` from the command line; ConfigError on bad input."""
    argv = list(argv)
    parser, subs = _parser()
    if not argv or argv[0] not in subs:
        parser.parse_args(argv)  # prints --help, or raises for a missing or unknown subcommand
        raise ConfigError(f"unknown subcommand {argv[0]!r}; choose {', '.join(COMMANDS)}")
    sub = subs[argv[0]]
    return argv[0], parse_config(sub.options_class, argv[1:], parser=sub)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parses, then runs the subcommand; returns 0 on success."""
    argv = sys.argv[1:] if argv is None else argv
    # Orbax's read-only restores log a warning per checkpoint directory: noise here.
    logging.getLogger("absl").setLevel(logging.ERROR)

    def run() -> int:
        command, options = parse(argv)
        if command == "train":
            from ilql_jax.cli.train import train
            train(options)
        elif command in ("generate", "sweep"):
            from ilql_jax.cli.generate import generate
            generate(options)
        else:
            from ilql_jax.cli.export import export
            export(options)
        return 0

    return report_errors(PROG, run)
