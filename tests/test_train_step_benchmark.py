"""benchmarks/train_step.py's matmul roof lists exactly the matmuls its honest FLOP count counts."""

import dataclasses

import numpy as np
import pytest

from benchmarks import common, train_step
from ilql_jax.models import gpt2, ilql, llama


def _flops(matmuls) -> int:
    return sum(2 * int(np.prod(shape)) * count for shape, count in matmuls)


@pytest.mark.parametrize("trunk", [gpt2.GPT2Config.tiny(dropout=0.0), llama.LlamaConfig.tiny()], ids=["gpt2", "llama"])
@pytest.mark.parametrize("fields", [{}, {"num_layers_unfrozen": 1}, {"frozen_policy": True}, {"shared_policy": True}],
                         ids=["full", "top1", "frozen_policy", "shared_policy"])
def test_step_matmuls_sum_to_the_honest_count(trunk, fields):
    batch = common.reddit_like_arrays(trunk.vocab_size, 4, 32)
    model = ilql.ModelConfig(trunk=trunk, **fields)
    matmuls = train_step.step_matmuls(model, batch)
    assert _flops(matmuls) == train_step.honest_step_flops(model, batch)["total"]
    # The heads' shapes read the real vocabulary, not the padded one.
    assert any(shape[-1] == trunk.vocab_size for shape, _ in matmuls)


def test_roof_times_every_shape_and_skips_lora():
    trunk = gpt2.GPT2Config.tiny(dropout=0.0)
    batch = common.reddit_like_arrays(trunk.vocab_size, 2, 16)
    model = ilql.ModelConfig(trunk=trunk)
    roof = train_step.matmul_roof(model, batch, repeats=1)
    assert roof["matmul_roof_s"] > 0
    assert roof["matmul_roof_shapes"] == len({shape for shape, _ in train_step.step_matmuls(model, batch)})
    lora = dataclasses.replace(model, lora_rank=2)
    assert train_step.step_matmuls(lora, batch) is None and train_step.matmul_roof(lora, batch) is None


def test_worker_reports_the_roof_and_the_parts_of_a_step():
    rec = train_step.worker("tiny", steps=1, mode="time", tune_malloc=False, parts=True)
    assert rec["matmul_roof_s"] > 0 and 0 < rec["matmul_roof_mfu"] and rec["fraction_of_matmul_roof"] > 0
    assert 0 < rec["forward_s"] and 0 < rec["value_and_grad_s"]
    assert rec["backward_s"] == rec["value_and_grad_s"] - rec["forward_s"]
    assert rec["update_s"] == pytest.approx(1e-3 * rec["step_ms"] - rec["value_and_grad_s"])
