"""Throughput and MFU of the whole jitted ILQL train step.

    python -m benchmarks.train_step [--shapes tiny,gpt2-small] [--steps N]

Prints one JSON object per line, one per shape: batch 8 × 128 tokens, float32,
dropout 0, the default networks (value trunk with V/Q1/Q2 heads, a target trunk
with target Q heads, a separate π_β), AdamW and the Polyak update, timed after a
compile call and a warm-up step.

Model FLOPs per token (matmuls only, as for `benchmarks.trunk`):
  value trunk fwd+bwd   6·12·L·d² + 12·L·T·d     (its LM logits are unused and compiled away)
  V, Q1, Q2 heads f+b   6·(3·d·2d + 2d·1 + 2·2d·V_pad)
  target trunk fwd      2·12·L·d² + 4·L·T·d
  target Q heads fwd    2·2·(d·2d + 2d·V_pad)
  π_β fwd+bwd           6·(12·L·d² + V_pad·d) + 12·L·T·d
`peak_memory_bytes` is the process's peak resident memory (CPU) or the
device's peak allocation (accelerators).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

if __package__ in (None, ""):  # run as `python benchmarks/train_step.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ilql_jax import train  # noqa: E402
from ilql_jax.models import gpt2, ilql  # noqa: E402

BATCH, SEQ_LEN = 8, 128
SHAPES = ("tiny", "gpt2-small")
DEFAULT_STEPS = {"tiny": 10, "gpt2-small": 2}


def make_config(shape: str) -> train.StepConfig:
    trunk = gpt2.GPT2Config.tiny(dropout=0.0) if shape == "tiny" else gpt2.GPT2Config.gpt2_small(dropout=0.0)
    return train.StepConfig(model=ilql.ModelConfig(trunk=trunk))


def ilql_flops_per_token(cfg: gpt2.GPT2Config, t: int) -> int:
    """Matmul FLOPs per token of one ILQL step (see the module docstring)."""
    L, d, v = cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size
    body, attn_fwd = 12 * L * d * d, 4 * L * t * d
    value = 6 * body + 3 * attn_fwd
    heads = 6 * (3 * d * 2 * d + 2 * d + 2 * 2 * d * v)
    target = 2 * body + attn_fwd + 2 * 2 * (d * 2 * d + 2 * d * v)
    policy = 6 * (body + v * d) + 3 * attn_fwd
    return value + heads + target + policy


def synthetic_batch(cfg: gpt2.GPT2Config) -> dict[str, np.ndarray]:
    """One agent utterance per row after a 32-token prompt; every row terminal."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (BATCH, SEQ_LEN)).astype(np.int32)
    action = np.zeros((BATCH, SEQ_LEN), np.float32)
    action[:, 31:SEQ_LEN - 1] = 1
    rewards = np.zeros((BATCH, SEQ_LEN), np.float32)
    rewards[:, SEQ_LEN - 2] = -1.0
    next_idx = np.minimum(np.arange(SEQ_LEN) + 1, SEQ_LEN - 1)[None].repeat(BATCH, 0).astype(np.int32)
    dones = np.zeros((BATCH, SEQ_LEN), np.float32)
    dones[:, -1] = 1
    return {"tokens": tokens, "attention_mask": np.ones_like(tokens), "action_mask": action,
            "rewards": rewards, "next_idx": next_idx, "dones": dones}


def peak_memory_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def bench_shape(shape: str, steps: int, meter: common.PeakMeter) -> dict:
    config = make_config(shape)
    state = train.init_state(config, jax.random.key(0))
    batch = synthetic_batch(config.model.trunk)
    step = train.make_train_step(config)
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    holder = {"state": state}

    def run():
        holder["state"], m = step(holder["state"], batch)
        holder["metrics"] = m
        return m

    t = common.time_fn(run, steps=steps, warmup=1)
    meter.measure()
    step_flops = ilql_flops_per_token(config.model.trunk, SEQ_LEN) * BATCH * SEQ_LEN
    achieved = step_flops / t["best_s"] / 1e9
    return {
        "bench": "train_step", "shape": shape, "tokens_per_s": BATCH * SEQ_LEN / t["best_s"],
        "peak_gflops": meter.gflops, "mfu": achieved / meter.gflops, "achieved_gflops": achieved,
        "peak_memory_bytes": peak_memory_bytes(), "step_ms": 1e3 * t["best_s"],
        "step_ms_median": 1e3 * t["median_s"], "timed_steps": t["n"], "batch": BATCH, "seq_len": SEQ_LEN,
        "dtype": config.model.trunk.dtype, "dropout": 0.0, "loss": float(holder["metrics"]["loss"]), "model_tflops_per_step": step_flops / 1e12,
        "device": common.device_info(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per shape (default: tiny 10, gpt2-small 2)")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            parser.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    malloc_tuned = common.tune_malloc()  # before the first JAX computation
    meter = common.PeakMeter()
    meter.measure(5)
    for s in shapes:
        rec = bench_shape(s, args.steps or DEFAULT_STEPS[s], meter)
        rec["malloc_tuned"] = malloc_tuned
        common.emit(rec)


if __name__ == "__main__":
    main()
