"""BC, then ILQL from it: the two runs every entry point trains, as loop configs (docs/algorithm.md §2).

Behaviour cloning fits π_β alone (`StepConfig.mode` "bc"). ILQL then starts π_β and every trunk from that run's
newest checkpoint (`TrainConfig.init` "bc:<workdir>"); with `ModelConfig.frozen_policy` π_β stays there, so that
β = 0 decodes exactly the BC baseline. `ilql-jax train` and every experiment describe their runs as one
`BCThenILQL`: they pass their own pieces (the model, the optimizers, the loss, the logging cadence), not their
own recipe. Standard library only, like `ilql_jax.configs`, so `ilql-jax --help` stays free of JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ilql_jax.config import TrainConfig
from ilql_jax.configs import LossConfig, ModelConfig, OptimConfig, StepConfig

__all__ = ["BCThenILQL", "tenth"]


def tenth(num_steps: int) -> dict[str, int]:
    """The default cadence: the train metrics logged ten times per run."""
    return {"log_every": max(1, num_steps // 10)}


@dataclasses.dataclass(frozen=True)
class BCThenILQL:
    """The BC run and the ILQL run that starts from it.

    Attributes:
      model: the ILQL run's networks; BC trains `bc_model`, by default this one with π_β trainable.
      loss: ILQL's γ, τ, α_cql (BC has no use for it).
      bc_steps, ilql_steps: the two runs' lengths.
      bc_optim, ilql_optim: their optimizers.
      polyak_alpha, target_update_every, mode, end_a_id: the ILQL step's (`StepConfig`; mode "ilql_utt" is
        per-utterance ILQL and needs the tokenizer's `</a>` id).
      init: where BC's weights come from (`TrainConfig.init`: "scratch", or a pretrained model).
      bc_model: BC's networks when they are not `model` with π_β trainable (fields BC does not read, e.g.
        `frozen_policy`, only show in its config.json).
      cadence: a run's length → its own loop fields (`log_every`, `eval_every`).
      loop: the `TrainConfig` fields both runs share (batch_size, max_len, seed, ...).
    """

    model: ModelConfig
    loss: LossConfig
    bc_steps: int
    ilql_steps: int
    bc_optim: OptimConfig
    ilql_optim: OptimConfig
    polyak_alpha: float
    init: str = "scratch"
    mode: str = "ilql"
    end_a_id: int | None = None
    target_update_every: int = 1
    bc_model: ModelConfig | None = None
    cadence: Callable[[int], Mapping[str, Any]] = tenth
    loop: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def bc(self, top_fraction: float | None = None) -> TrainConfig:
        """The BC run (%BC on the top `top_fraction` of the data by return, when given)."""
        model = dataclasses.replace(self.model, frozen_policy=False) if self.bc_model is None else self.bc_model
        return TrainConfig(step=StepConfig(mode="bc", model=model, optim=self.bc_optim), init=self.init,
                           num_steps=self.bc_steps, bc_top_fraction=top_fraction, **self.cadence(self.bc_steps),
                           **self.loop)

    def ilql(self, bc_workdir: str | None) -> TrainConfig:
        """The ILQL run, starting from the BC run in `bc_workdir`; None: from scratch (π_β trained alongside
        the values), or from weights the caller passes to `train_and_evaluate`."""
        step = StepConfig(mode=self.mode, model=self.model, loss=self.loss, optim=self.ilql_optim,
                          polyak_alpha=self.polyak_alpha, target_update_every=self.target_update_every,
                          end_a_id=self.end_a_id)
        return TrainConfig(step=step, init="scratch" if bc_workdir is None else f"bc:{bc_workdir}",
                           num_steps=self.ilql_steps, **self.cadence(self.ilql_steps), **self.loop)
