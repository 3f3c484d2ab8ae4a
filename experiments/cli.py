"""The command line every experiment shares: `--preset`, `--workdir`, then the config's own fields as flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence

from ilql_jax.config import ConfigError, parse_config
from ilql_jax.loop import Preempted


def main(prog: str, doc: str, config_cls: type, presets: Mapping[str, object], run: Callable[[object, str], object],
         default_workdir: str, argv: Sequence[str] | None = None) -> int:
    """Parses flags over the chosen preset and runs; exits 0 after a SIGTERM/SIGINT checkpoint."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--preset", choices=sorted(presets), default="default")
    parser.add_argument("--workdir", default=default_workdir)
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = parse_config(config_cls, rest, presets[args.preset])
    except ConfigError as e:
        parser.error(str(e))
    try:
        run(cfg, args.workdir)
    except Preempted as e:  # a checkpoint is saved; the same command resumes
        print(e)
    return 0
