"""Throughput and MFU of the GPT-2 trunk: forward + backward of a next-token loss.

    python -m benchmarks.trunk [--shapes tiny,gpt2-small] [--steps N] [--no-tune-malloc]
    python benchmarks/trunk.py ...

Prints one JSON object per line, one per shape. The step timed is a jitted
`jax.value_and_grad` (w.r.t. all parameters) of the mean next-token
cross-entropy of `trunk.forward`'s logits: batch 8 × 128 tokens, float32,
dropout 0; after a compile call and a warm-up step, each step waited on with
`block_until_ready`; the best of `--steps` timed steps is reported (median too).

Fields: `tokens_per_s`, `step_ms` (best), `peak_gflops` (best rate of a jitted
float32 2048×2048 matmul, measured in this run before, between and after the
timed steps), `mfu` = model FLOPs per step / best step time / `peak_gflops`,
with model FLOPs from `benchmarks.common.gpt2_flops_per_token`
(6·N_matmul + 12·n_layer·T·d per token; its docstring says exactly which
parameters N_matmul counts); `model_tflops_per_step`, `n_params`,
`n_matmul_params`; `other_cpu_load`, the share of the machine other processes
took during the timed steps (a shared machine makes `mfu` pessimistic), and
`mfu_cpu_time`, the same ratio per CPU-second (diagnostic: insensitive to
other processes, but blind to idle cores); `malloc_tuned` (see
`common.tune_malloc`, on unless `--no-tune-malloc`, as in train_step.py).
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as `python benchmarks/trunk.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import common  # noqa: E402
from ilql_jax.models import trunk as trunk_lib  # noqa: E402

BATCH, SEQ_LEN = 8, 128
SHAPES = ("tiny", "gpt2-small")
DEFAULT_STEPS = {"tiny": 20, "gpt2-small": 3}


def next_token_loss(params, config, tokens):
    """Mean cross-entropy of logits[:, t] against tokens[:, t + 1], t < T - 1.

    Written over all T positions with the last one weighted 0 (rather than
    slicing logits[:, :-1]), which saves a slice of the logits and a pad of
    their gradient; the value is the same.
    """
    _, logits = trunk_lib.forward(params, config, tokens)
    t = tokens.shape[1]
    targets = jnp.roll(tokens, -1, axis=1)
    weights = (jnp.arange(t) < t - 1).astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((logz - picked) * weights) / (tokens.shape[0] * (t - 1))


def bench_shape(shape: str, steps: int, meter: common.PeakMeter) -> dict:
    config = common.gpt2_shape(shape)
    params = trunk_lib.init(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (BATCH, SEQ_LEN), 0, config.vocab_size, jnp.int32)
    step = jax.jit(jax.value_and_grad(next_token_loss), static_argnums=1)
    loss, _ = jax.block_until_ready(step(params, config, tokens))  # compile

    # Long steps: re-measure the peak before every timed step, so it samples the
    # same (possibly busy) machine as the model does; short steps: before and after.
    warm = common.time_fn(lambda: step(params, config, tokens), steps=1, warmup=0)
    between = meter.measure if warm["best_s"] > 1.0 else None
    with common.OtherLoad() as load:
        t = common.time_fn(lambda: step(params, config, tokens), steps=steps, warmup=0, between=between)
    meter.measure()

    flops = common.gpt2_flops_per_token(config, SEQ_LEN)
    n_tokens = BATCH * SEQ_LEN
    step_flops = flops["flops_per_token"] * n_tokens
    achieved = step_flops / t["best_s"] / 1e9
    # tokens_per_s, mfu and peak are final once all shapes ran (see main).
    return {
        "bench": "trunk",
        "shape": shape,
        "tokens_per_s": n_tokens / t["best_s"],
        "peak_gflops": meter.gflops,
        "mfu": achieved / meter.gflops,
        "achieved_gflops": achieved,
        "step_ms": 1e3 * t["best_s"],
        "step_ms_median": 1e3 * t["median_s"],
        "timed_steps": t["n"],
        "step_cpu_s": t["cpu_s"],
        "batch": BATCH,
        "seq_len": SEQ_LEN,
        "dtype": config.dtype,
        "dropout": 0.0,
        "n_params": trunk_lib.num_params(params),
        "n_matmul_params": flops["n_matmul_params"],
        "model_tflops_per_step": step_flops / 1e12,
        "loss": float(loss),
        "device": common.device_info(),
        "other_cpu_load": load.fraction,
        "_gflops_per_cpu_s": step_flops / t["cpu_s"] / 1e9,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, from: " + ", ".join(SHAPES))
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per shape after warm-up (default: tiny 20, gpt2-small 3)")
    parser.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                        help="leave glibc malloc at its defaults (see common.tune_malloc)")
    args = parser.parse_args(argv)
    shapes = common.parse_shapes(parser, args.shapes, SHAPES)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")

    # Before the first JAX computation (see common.tune_malloc).
    malloc_tuned = common.tune_malloc() if args.tune_malloc else False
    meter = common.PeakMeter()
    meter.measure(5)
    records = [bench_shape(s, args.steps or DEFAULT_STEPS[s], meter) for s in shapes]
    # Every line is judged against the same peak: the best over the whole run.
    for rec in records:
        rec["peak_gflops"] = meter.gflops
        rec["mfu"] = rec["achieved_gflops"] / meter.gflops
        # The same ratio in FLOPs per CPU-second: insensitive to other processes
        # on a shared machine, but blind to cores left idle, so it reads high
        # wherever the step does not keep every core busy. A diagnostic, not the MFU.
        rec["mfu_cpu_time"] = rec.pop("_gflops_per_cpu_s") / meter.gflops_per_cpu_s
        rec["peak_matmul"] = f"jitted float32 {meter.n}x{meter.n} @ {meter.n}x{meter.n}, best of {meter.runs} runs"
        rec["malloc_tuned"] = malloc_tuned
        common.emit(rec)


if __name__ == "__main__":
    main()
