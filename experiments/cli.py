"""The command line every experiment shares: `--preset`, `--workdir` (local or `gs://`), then the config's own
fields as flags.

`--help` lists every field of the config with its documented meaning and its
default in the chosen preset (`--preset smoke --help` shows smoke's). Bad
input (a flag, a value, a data file) is one line on stderr and exit status 2,
before anything trains (ILQL_DEBUG=1: a traceback instead), as for `ilql-jax`. SIGINT (Ctrl-C) or SIGTERM
saves a checkpoint and exits 130 or 143, as `ilql-jax train` does: rerun the same command to resume.

The same command runs on every host of a multi-host job: `jax.distributed` is initialised
first (a no-op on one host; see `ilql_jax.distributed.maybe_initialize_distributed`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence

from ilql_jax.cli import ArgumentParser, report_errors
from ilql_jax.config import parse_config
from ilql_jax.distributed import maybe_initialize_distributed


def main(prog: str, doc: str, config_cls: type, presets: Mapping[str, object], run: Callable[[object, str], object],
         default_workdir: str, argv: Sequence[str] | None = None,
         model_preset: Callable[[str], str] | None = None) -> int:
    """Parses flags over the chosen preset and runs; exits 130 (SIGINT) or 143 (SIGTERM) after the checkpoint
    a stop signal makes (`ilql_jax.cli.report_errors`).

    `model_preset(model)`, when given, picks the preset for a `--model` flag when no `--preset` is given (a
    pretrained model wants other defaults than a model trained from scratch)."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def go() -> int:
        maybe_initialize_distributed()  # before any other JAX call
        # The preset decides the defaults that --help shows, so it is read first.
        first = ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
        first.add_argument("--preset", choices=sorted(presets), default=None)
        first.add_argument("--workdir", default=default_workdir)
        first.add_argument("--model", default=None)
        known, _ = first.parse_known_args(argv)
        if known.preset is None:
            known.preset = model_preset(known.model) if model_preset and known.model else "default"
        parser = ArgumentParser(prog=prog, description=doc, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--preset", choices=sorted(presets), default="default",
                            help="named defaults for every field below (those shown are this preset's) "
                                 "(default: default)")
        parser.add_argument("--workdir", default=default_workdir,
                            help=f"where the run's files go, local or gs://; a rerun resumes there "
                                 f"(default: {default_workdir})")
        cfg = parse_config(config_cls, argv, presets[known.preset], parser=parser)
        run(cfg, known.workdir)
        return 0

    return report_errors(prog, go)
