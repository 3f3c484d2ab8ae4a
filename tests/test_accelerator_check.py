"""The accelerator check (`benchmarks/accelerator.py`) runs end to end on the CPU at toy shapes, and its FLOP
count for a Llama trunk is the same arithmetic as the GPT-2 benchmark's where the two architectures agree."""

import json
import math

import numpy as np

from benchmarks import accelerator, common, train_step
from ilql_jax.models import gpt2, ilql


def test_tiny_run_prints_every_check_for_both_architectures_and_dtypes(tmp_path, capsys):
    out = tmp_path / "accel.jsonl"
    accelerator.main(["--tiny", "--out", str(out)])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["bench"], r.get("shape"), r.get("dtype")) for r in printed] == \
        [(r["bench"], r.get("shape"), r.get("dtype")) for r in written]
    by = {(r["bench"], r.get("shape"), r.get("dtype")) for r in written}
    for shape in ("tiny-gpt2", "tiny-llama"):
        for dtype in ("float32", "bfloat16"):
            assert ("accel_train_step", shape, dtype) in by and ("accel_decode", shape, dtype) in by
        assert ("accel_bf16_drift", shape, None) in by
    for r in written:
        if r["bench"] == "accel_train_step":
            assert r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) and r["plan_bytes"] > 0
            assert 0 < r["mfu_measured_peak"] and r["model_tflops_per_step"] > 0
            assert r["mfu"] is None  # a CPU is not in the published-peak table
        if r["bench"] == "accel_decode":
            assert r["tokens_per_s"] > 0 and r["policy_alone_tokens_per_s"] > 0
        if r["bench"] == "accel_bf16_drift":
            # bfloat16 compute moves A a little, not at all or wildly.
            assert 0 < r["mean_abs_diff"] < r["mean_abs_a"] and r["actions"] > 0
    assert written[-1]["bench"] == "accel_done"


def test_step_flops_equal_the_gpt2_benchmark_count():
    cfg = gpt2.GPT2Config.tiny(dropout=0.0)
    batch = common.reddit_like_arrays(cfg.vocab_size, 4, 32)
    model = ilql.ModelConfig(trunk=cfg)
    assert accelerator.step_flops(model, batch) > 0
    ours, theirs = accelerator.step_flops(model, batch), train_step.honest_step_flops(model, batch)
    # The GPT-2 benchmark also counts V at the next states (S ≥ A): ours counts it at A only, a few per cent.
    assert theirs["total"] >= ours and np.isclose(ours, theirs["total"], rtol=0.05)
