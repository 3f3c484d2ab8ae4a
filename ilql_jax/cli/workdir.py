"""A trained workdir read back: its tokenizer, the ILQL run's config, and its newest checkpoint."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from ilql_jax import tokenizers
from ilql_jax.config import ConfigError, TrainConfig, config_from_dict

__all__ = ["Run", "load_run", "read_config"]


class Run(NamedTuple):
    tokenizer: Any
    config: TrainConfig
    state: Any  # ILQLState


def read_config(workdir: str, run: str = "ilql") -> TrainConfig:
    """The TrainConfig the loop recorded in `workdir/run/config.json`; ConfigError if there is none."""
    path = os.path.join(workdir, run, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir}: no {run}/config.json; is this a workdir `ilql-jax train` wrote?")
    with open(path, encoding="utf-8") as f:
        return config_from_dict(TrainConfig, json.load(f))


def load_run(workdir: str, run: str = "ilql") -> Run:
    """The tokenizer, config and newest-checkpoint state of `workdir/run`."""
    from ilql_jax import checkpoint, sharding

    config = read_config(workdir, run)
    tok_dir = os.path.join(workdir, "tokenizer")
    if not os.path.isfile(os.path.join(tok_dir, tokenizers.CONFIG_FILE)):
        raise ConfigError(f"{workdir}: no tokenizer/{tokenizers.CONFIG_FILE}; is this a workdir `ilql-jax train` "
                          "wrote?")
    tok = tokenizers.load_tokenizer(tok_dir)
    if not os.path.isdir(os.path.join(workdir, run, checkpoint.CHECKPOINT_DIR)):
        raise ConfigError(f"{workdir}: {run}/ holds no checkpoint yet; run (or resume) `ilql-jax train` first")
    abstract = checkpoint.abstract_like(sharding.abstract_state(config.step))
    state, _ = checkpoint.restore(os.path.abspath(os.path.join(workdir, run)), abstract)
    return Run(tok, config, state)
