"""`ilql_jax.recipe.BCThenILQL`: the BC run and the ILQL run that starts from it, as the CLI and every experiment
build them."""

import dataclasses

import pytest

from ilql_jax import recipe
from ilql_jax.configs import GPT2Config, LossConfig, ModelConfig, OptimConfig
from tests.test_cli import NO_JAX, _run_module

TRUNK = GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)
FROZEN = ModelConfig(trunk=TRUNK, frozen_policy=True, target_on_online_trunk=True, head_init="flax")


def _runs(model=FROZEN, **kw):
    return recipe.BCThenILQL(model, LossConfig(tau=0.8, alpha_cql=0.3), bc_steps=30, ilql_steps=50,
                             bc_optim=OptimConfig(learning_rate=1e-3), ilql_optim=OptimConfig(learning_rate=2e-4),
                             polyak_alpha=0.1, loop=dict(batch_size=4, max_len=16, seed=3), **kw)


def test_bc_trains_pi_beta_and_ilql_starts_from_its_workdir():
    runs = _runs(init="some-model", target_update_every=5)
    bc, rl = runs.bc(), runs.ilql("/w/bc")
    assert bc.step.mode == "bc" and bc.step.model == dataclasses.replace(FROZEN, frozen_policy=False)
    assert (bc.init, bc.num_steps, bc.step.optim.learning_rate, bc.bc_top_fraction) == ("some-model", 30, 1e-3, None)
    assert rl.step.mode == "ilql" and rl.step.model == FROZEN and rl.init == "bc:/w/bc"
    assert (rl.num_steps, rl.step.optim.learning_rate, rl.step.polyak_alpha, rl.step.target_update_every) == (50, 2e-4,
                                                                                                             0.1, 5)
    assert (rl.step.loss.tau, rl.step.loss.alpha_cql) == (0.8, 0.3)
    for run in (bc, rl):
        assert (run.batch_size, run.max_len, run.seed) == (4, 16, 3)
    assert (bc.log_every, rl.log_every) == (3, 5)  # the default cadence: ten logs per run


def test_without_a_bc_run_ilql_starts_from_scratch_which_a_frozen_pi_beta_refuses():
    assert _runs(dataclasses.replace(FROZEN, frozen_policy=False)).ilql(None).init == "scratch"
    with pytest.raises(ValueError, match="frozen_policy with init='scratch'"):
        _runs().ilql(None)


def test_percent_bc_cadence_bc_model_and_per_utterance_ilql():
    runs = _runs(cadence=lambda n: {"log_every": 1, "eval_every": n // 2}, bc_model=FROZEN, mode="ilql_utt",
                 end_a_id=7)
    bc, rl = runs.bc(0.2), runs.ilql("bc")
    assert bc.bc_top_fraction == 0.2 and bc.step.model == FROZEN  # kept as given (BC does not read frozen_policy)
    assert (bc.eval_every, rl.eval_every, bc.log_every) == (15, 25, 1)
    assert (rl.step.mode, rl.step.end_a_id) == ("ilql_utt", 7)
    with pytest.raises(ValueError, match="end_a_id"):
        _runs(mode="ilql_utt").ilql("bc")


def test_the_recipe_builds_its_runs_with_jax_unimportable(tmp_path):
    code = NO_JAX.split("sys.argv[0]")[0] + """
from ilql_jax import recipe
from ilql_jax.configs import GPT2Config, LossConfig, ModelConfig, OptimConfig
runs = recipe.BCThenILQL(ModelConfig(trunk=GPT2Config(n_positions=16)), LossConfig(), bc_steps=2, ilql_steps=3,
                         bc_optim=OptimConfig(), ilql_optim=OptimConfig(), polyak_alpha=0.1, loop={"max_len": 16})
print(runs.bc().step.mode, runs.ilql("w/bc").init)
"""
    proc = _run_module(["-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["bc", "bc:w/bc"]
