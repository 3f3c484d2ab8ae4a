"""TrainConfig: dotted command-line flags onto nested dataclasses, and the JSON round trip."""

import argparse
import dataclasses
import json

import pytest

from ilql_jax import losses, train
from ilql_jax.checkpoint import CheckpointConfig
from ilql_jax.config import (ConfigError, TrainConfig, add_arguments, apply_overrides, config_from_dict,
                             config_to_dict, parse_config)
from ilql_jax.models import gpt2, ilql
from ilql_jax.sharding import MeshConfig
from ilql_jax.state import OptimConfig


def test_dotted_flags_reach_nested_fields():
    config = parse_config(TrainConfig, [
        "--step.loss.tau", "0.6", "--step.optim.learning_rate=1e-4", "--step.model.trunk.n_layer", "2",
        "--batch_size", "32", "--step.optim.clip_norm", "1.5", "--step.model.shared_policy", "true",
        "--progress", "False", "--step.mode", "bc", "--bc_top_fraction", "0.1",
    ])
    assert config.step.loss.tau == 0.6
    assert config.step.optim.learning_rate == 1e-4 and config.step.optim.clip_norm == 1.5
    assert config.step.model.trunk.n_layer == 2 and config.step.model.shared_policy is True
    assert config.batch_size == 32 and config.progress is False
    assert config.step.mode == "bc" and config.bc_top_fraction == 0.1
    # Everything else keeps its default.
    assert config.step.loss.gamma == losses.LossConfig().gamma
    assert config.step.model.trunk.n_embd == gpt2.GPT2Config().n_embd


def test_flags_apply_over_given_defaults_and_none_clears_optionals():
    preset = TrainConfig(step=train.StepConfig(optim=OptimConfig(clip_norm=1.0), loss=losses.LossConfig(tau=0.8)),
                         batch_size=8)
    config = parse_config(TrainConfig, ["--step.optim.clip_norm", "None", "--seed", "3"], defaults=preset)
    assert config == dataclasses.replace(preset, seed=3, step=dataclasses.replace(
        preset.step, optim=dataclasses.replace(preset.step.optim, clip_norm=None)))
    assert parse_config(TrainConfig, [], defaults=preset) == preset
    assert parse_config(TrainConfig, []) == TrainConfig()


@pytest.mark.parametrize("argv, match", [
    (["--step.loss.taux", "0.6"], "unrecognized arguments: --step.loss.taux"),
    (["--batch"], "unrecognized arguments: --batch"),  # no abbreviations
    (["--batch_size", "3.5"], "argument --batch_size: expected an int, got '3.5'"),
    (["--step.loss.tau", "high"], "argument --step.loss.tau: expected a float, got 'high'"),
    (["--progress", "yes"], "argument --progress: expected true or false, got 'yes'"),
    (["--batch_size", "none"], "argument --batch_size: expected an int, got 'none'"),
    (["--step.optim.clip_norm", "x"], "argument --step.optim.clip_norm: expected a float or none"),
    (["--step.loss.tau", "1.5"], r"--step.loss.tau 1.5: step.loss: LossConfig.tau=1.5 must be in \(0, 1\)"),
    (["--max_len", "4096"], "--max_len 4096: TrainConfig.max_len=4096 exceeds the trunk's n_positions=1024"),
    (["--mesh.rules", '{"embed": "fsdp"}'], "argument --mesh.rules: expected a JSON list or none"),
    (["--mesh.rules", "[embed]"], "argument --mesh.rules: expected a JSON list or none"),
    (["--checkpoint.keep", "0"], "--checkpoint.keep 0: checkpoint: CheckpointConfig.keep must be an int >= 1"),
    (["--mesh.data", "-1", "--mesh.fsdp", "-1"], "mesh: MeshConfig: at most one axis may be -1"),
    (["--init", "bc:"], "TrainConfig.init must be 'scratch', 'bc:<workdir>' or a GPT-2 path or hub id"),
    (["--step.model.frozen_policy", "true"], "frozen_policy with init='scratch' would keep a random π_β"),
])
def test_bad_flags_raise_naming_the_flag(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(TrainConfig, argv)


def test_add_arguments_on_a_users_parser_with_help():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    add_arguments(parser, TrainConfig(batch_size=8))
    args = parser.parse_args(["--workdir", "/tmp/x", "--step.polyak_alpha", "0.01"])
    overrides = {k: v for k, v in vars(args).items() if k != "workdir"}
    assert overrides == {"step.polyak_alpha": 0.01}  # only the flags given
    assert apply_overrides(TrainConfig(batch_size=8), overrides).step.polyak_alpha == 0.01
    text = parser.format_help()
    assert "--step.model.trunk.n_layer" in text and "(default: 8)" in text
    assert "expectile" in text  # field docs from the dataclass docstrings
    assert "%BC" in text


def _custom() -> TrainConfig:
    trunk = gpt2.GPT2Config.tiny(vocab_size=35, n_layer=1, n_embd=32, dropout=0.1)
    step = train.StepConfig(mode="bc", model=ilql.ModelConfig(trunk=trunk, shared_policy=True),
                            loss=losses.LossConfig(tau=0.6, alpha_cql=0.25, vocab_size=35),
                            optim=OptimConfig(learning_rate=3e-5, clip_norm=None, schedule="cosine", total_steps=10),
                            polyak_alpha=0.1)
    return TrainConfig(step=step, batch_size=7, max_len=64, num_steps=11, eval_every=0, seed=5,
                       bc_top_fraction=0.1, progress=False,
                       mesh=MeshConfig(data=2, fsdp=-1, fsdp_params=True, rules=(("embed", ("fsdp", "tensor")),
                                                                                 ("vocab", None))),
                       checkpoint=CheckpointConfig(every_steps=50, keep=1, async_save=False), resume=False,
                       init="bc:runs/bc")


@pytest.mark.parametrize("config", [TrainConfig(), _custom()])
def test_json_round_trip_is_exact(config):
    text = json.dumps(config_to_dict(config))
    assert config_from_dict(TrainConfig, json.loads(text)) == config


def test_loading_rejects_unknown_keys_and_wrong_types_naming_the_key():
    data = config_to_dict(TrainConfig())
    data["step"]["loss"]["taux"] = 0.6
    with pytest.raises(ConfigError, match="unknown config key 'step.loss.taux'"):
        config_from_dict(TrainConfig, data)
    with pytest.raises(ConfigError, match="unknown config key 'num_step'"):
        config_from_dict(TrainConfig, {"num_step": 3})
    with pytest.raises(ConfigError, match=r"config key 'step.model.trunk.n_layer': expected an int, got '2'"):
        config_from_dict(TrainConfig, {"step": {"model": {"trunk": {"n_layer": "2"}}}})
    with pytest.raises(ConfigError, match=r"config key 'progress': expected true or false, got 1"):
        config_from_dict(TrainConfig, {"progress": 1})
    with pytest.raises(ConfigError, match="config key 'step.loss': expected a mapping"):
        config_from_dict(TrainConfig, {"step": {"loss": 0.6}})
    with pytest.raises(ConfigError, match="unknown config key 'step.loss.taux'"):
        apply_overrides(TrainConfig(), {"step.loss.taux": 0.6})
    with pytest.raises(ConfigError, match="unknown config key 'step.los'"):
        apply_overrides(TrainConfig(), {"step.los.tau": 0.6})


def test_missing_keys_take_defaults_and_ints_load_as_floats():
    config = config_from_dict(TrainConfig, {"batch_size": 4, "step": {"optim": {"learning_rate": 1}}})
    assert config.batch_size == 4 and config.num_steps == TrainConfig().num_steps
    assert config.step.optim.learning_rate == 1.0 and isinstance(config.step.optim.learning_rate, float)


def test_train_config_validates_its_fields():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"bc_top_fraction must be in \(0, 1\]"):
        TrainConfig(step=train.StepConfig(mode="bc"), bc_top_fraction=1.5)


def test_mesh_checkpoint_and_init_flags():
    config = parse_config(TrainConfig, [
        "--mesh.data", "2", "--mesh.fsdp", "4", "--mesh.fsdp_params", "true",
        "--mesh.rules", '[["embed", ["fsdp", "tensor"]], ["vocab", null]]',
        "--checkpoint.every_steps", "10", "--checkpoint.keep", "2", "--checkpoint.async_save", "false",
        "--resume", "false", "--init", "bc:runs/bc",
    ])
    assert config.mesh == MeshConfig(data=2, fsdp=4, fsdp_params=True,
                                     rules=(("embed", ("fsdp", "tensor")), ("vocab", None)))
    assert config.checkpoint == CheckpointConfig(every_steps=10, keep=2, async_save=False)
    assert config.resume is False and config.init == "bc:runs/bc"
    # Defaults: data parallel over every device, resume, random init.
    default = TrainConfig()
    assert default.mesh == MeshConfig(data=-1) and default.mesh.rules is None
    assert default.resume is True and default.init == "scratch"
    assert parse_config(TrainConfig, ["--mesh.rules", "none"], defaults=config).mesh.rules is None


def test_a_loss_vocab_size_that_differs_from_the_trunk_is_refused_not_overwritten():
    """`StepConfig.loss_config` takes the vocabulary size from the trunk; a user value that differs is an error
    naming both, never silently replaced. None (the default) or the trunk's own value are accepted."""
    trunk = gpt2.GPT2Config.tiny(vocab_size=35)
    for ok in (None, 35):
        step = train.StepConfig(model=ilql.ModelConfig(trunk=trunk), loss=losses.LossConfig(vocab_size=ok))
        assert step.loss_config.vocab_size == 35
    with pytest.raises(ValueError, match=r"loss.vocab_size=36 differs from the trunk's vocab_size=35"):
        train.StepConfig(model=ilql.ModelConfig(trunk=trunk), loss=losses.LossConfig(vocab_size=36))
    with pytest.raises(ConfigError, match=r"loss.vocab_size=50 differs from the trunk's vocab_size=50257"):
        parse_config(TrainConfig, ["--step.loss.vocab_size", "50"])
