"""Decoding throughput of the value-guided sampler (ILQL_SPEC §5): one jitted
`while_loop` against a Python loop of jitted steps.

    python -m benchmarks.sampler [--shapes tiny,gpt2-small] [--steps N] [--big-runs N]

Prints one JSON object per line: tiny and gpt2-small at batch 32, and tiny at
batch 1. Each run decodes a batch of prompts of 16 random tokens into exactly
64 new tokens (the stop ids cannot occur), with all three trunks (π_β, value,
target) and the Q/V heads, random weights, mode "sample", β = 1, T = 1, float32:

- `tokens_per_s`: `sampler.sample`'s jitted function (prefill + one `lax.while_loop`);
- `eager_tokens_per_s`: the same model, batch and key decoded by a Python loop
  that calls a jitted `sampler.step_state` once per token (the decode state
  donated, so its KV caches are updated in place as in the loop), between a
  jitted `init_state` and `finish`: the same prefill and per-step work;
- `speedup` = tokens_per_s / eager_tokens_per_s;
- `loop_step_ms`: the while loop's wall time per token (prefill included);
  `eager_overhead_ms`: what the Python loop adds per token (dispatching one
  jitted step: flattening the parameter and state pytrees);
- `decode_mflop_per_token` (`decode_flops_per_token`), `loop_gflops` (the
  loop's achieved rate), `peak_gflops` (a float32 matmul's best rate in this
  run, `common.PeakMeter`) and `floor_step_ms`, the step time at that peak;
- `loop_cpu_s`, `eager_cpu_s`, `cpu_speedup`: the same comparison in process
  CPU seconds (best run each), a check on `speedup` when the machine is shared;
- `other_cpu_load`: the share of the machine's CPU that other processes took
  during the timed runs (`common.OtherLoad`); above ~0.2 the figures are
  contended and `speedup` drifts towards 1 (both paths then wait on the same
  shared cores).

Both are compiled ahead of time, then timed alternately (loop then eager,
then eager then loop, ...), so both see the same contention: best of
`--steps` rounds after one warm-up round (gpt2-small: best of `--big-runs`
rounds, no warm-up); `same_tokens` checks they decode identically.

On CPU, at batch 32, the step is mostly compute even for the tiny shape (three
trunks' matmuls and the Q heads over the vocabulary), and the loop saves only
the per-token dispatch; the loop's advantage shows where dispatch dominates:
batch 1, small models, accelerators.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/sampler.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from ilql_jax import sampler
from ilql_jax.models import gpt2, ilql

SHAPES = {
    "tiny": lambda: gpt2.GPT2Config.tiny(dropout=0.0),
    "gpt2-small": lambda: gpt2.GPT2Config.gpt2_small(dropout=0.0),
}
PROMPT_LEN, NEW_TOKENS = 16, 64
# (shape, batch): batch 32 is the headline; tiny at batch 1 shows the regime
# where per-step dispatch, which the while_loop removes, dominates.
RUNS = (("tiny", 32), ("tiny", 1), ("gpt2-small", 32))


def _time_interleaved(fns: dict, runs: int, warmup: bool) -> tuple[dict, dict, dict]:
    """Best wall time and best process CPU time of each of `fns` over `runs` rounds, and each one's last output.

    The functions alternate within each round, and which goes first
    alternates between rounds, so on a shared machine both see the same spells
    of contention; `warmup` runs one untimed round first.
    """
    wall, cpu, out = {name: float("inf") for name in fns}, {name: float("inf") for name in fns}, {}
    for r in range(runs + int(warmup)):
        for name, fn in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = jax.block_until_ready(fn())
            if r >= int(warmup):
                wall[name] = min(wall[name], time.perf_counter() - t0)
                cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu, out


def decode_flops_per_token(trunk: gpt2.GPT2Config, cache_len: int) -> int:
    """Matmul FLOPs of one decode step per row, as `sampler.step_state` runs it with three trunks.

    Each trunk's blocks (2·12·L·d², plus 4·L·S·d for attention over S cache
    slots, counted whole as in `common.transformer_flops_per_token`); one LM
    head (π_β's: the other trunks' logits are unused, and XLA drops them); two
    Q heads d → 2d → V_pad and the V head d → 2d → 1.
    """
    d, v = trunk.n_embd, trunk.padded_vocab_size
    blocks = 2 * 12 * trunk.n_layer * d * d + 4 * trunk.n_layer * cache_len * d
    return 3 * blocks + 2 * v * d + 2 * 2 * (2 * d * d + 2 * d * v) + 2 * (2 * d * d + 2 * d)


def bench_shape(name: str, batch: int, steps: int, big_runs: int, meter: common.PeakMeter) -> dict:
    model_config = ilql.ModelConfig(trunk=SHAPES[name]())
    sampler_config = sampler.SamplerConfig(max_new_tokens=NEW_TOKENS, mode="sample", prompt_buckets=(PROMPT_LEN,))
    online, target = jax.jit(ilql.init, static_argnums=0)(model_config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, PROMPT_LEN), 1, model_config.trunk.vocab_size, jnp.int32)
    mask = jnp.ones_like(tokens)
    key = jax.random.key(2)
    # No stop ids (all slots -1): every row generates exactly NEW_TOKENS tokens.
    knobs = sampler.make_knobs(beta=1.0, temperature=1.0, stop_ids=(), pad_id=0)
    args = (online, target, tokens, mask, key, knobs)

    t0 = time.perf_counter()
    loop = sampler._sample_jit.lower(model_config, sampler_config, *args).compile()
    init = jax.jit(sampler.init_state, static_argnums=(0, 1)).lower(
        model_config, sampler_config, online, target, tokens, mask, key).compile()
    state = init(online, target, tokens, mask, key)
    step = jax.jit(sampler.step_state, static_argnums=(0, 1), donate_argnums=5).lower(
        model_config, sampler_config, online, target, knobs, state).compile()
    finish = jax.jit(sampler.finish, static_argnums=0).lower(sampler_config, state).compile()
    compile_s = time.perf_counter() - t0

    def eager():
        state = init(online, target, tokens, mask, key)
        for _ in range(NEW_TOKENS):
            state = step(online, target, knobs, state)
        return finish(state)

    big = name == "gpt2-small"  # a run takes tens of seconds: no warm-up round, `big_runs` rounds
    runs = big_runs if big else steps
    with common.OtherLoad() as load:
        best, cpu, out = _time_interleaved({"loop": lambda: loop(*args), "eager": eager}, runs, warmup=not big)
    meter.measure()
    loop_s, eager_s = best["loop"], best["eager"]
    # Attention at the mean cache fill; the prefill is not counted.
    step_flops = batch * decode_flops_per_token(model_config.trunk, PROMPT_LEN + NEW_TOKENS // 2)
    result, eager_result = out["loop"], out["eager"]
    assert (np.asarray(result.lengths) == NEW_TOKENS).all()
    n_tokens = batch * NEW_TOKENS
    return {
        "bench": "sampler",
        "shape": name,
        "tokens_per_s": n_tokens / loop_s,
        "eager_tokens_per_s": n_tokens / eager_s,
        "speedup": eager_s / loop_s,
        "loop_s": loop_s,
        "eager_s": eager_s,
        "loop_step_ms": 1e3 * loop_s / NEW_TOKENS,
        # What the Python loop adds per token: dispatch of one jitted step.
        "eager_overhead_ms": 1e3 * (eager_s - loop_s) / NEW_TOKENS,
        "decode_mflop_per_token": step_flops / batch / 1e6,
        "loop_gflops": step_flops * NEW_TOKENS / loop_s / 1e9,
        "peak_gflops": meter.gflops,
        # The step time if every matmul ran at the measured peak: with
        # `eager_overhead_ms`, it bounds the speedup any loop could reach here.
        "floor_step_ms": 1e3 * step_flops / (meter.gflops * 1e9),
        # Work rather than wall time (all threads' CPU seconds): less sensitive
        # to other processes, though it also counts threads spinning idle.
        "loop_cpu_s": cpu["loop"],
        "eager_cpu_s": cpu["eager"],
        "cpu_speedup": cpu["eager"] / cpu["loop"],
        "timed_runs": runs,
        "other_cpu_load": load.fraction,
        "compile_s": compile_s,
        "same_tokens": bool((np.asarray(result.tokens) == np.asarray(eager_result.tokens)).all()),
        "batch": batch,
        "prompt_len": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
        "trunks": 3,
        "mode": sampler_config.mode,
        "dtype": model_config.trunk.dtype,
        "n_params": sum(x.size for x in jax.tree.leaves((online, target))),
        "device": common.device_info(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,gpt2-small", help="comma-separated: " + ",".join(SHAPES))
    parser.add_argument("--steps", type=int, default=5, help="timed runs per tiny shape after a warm-up; best is reported")
    parser.add_argument("--big-runs", type=int, default=2, help="timed runs at gpt2-small (no warm-up); best is reported")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            parser.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    meter = common.PeakMeter()
    for shape, batch in RUNS:
        if shape in shapes:
            common.emit(bench_shape(shape, batch, args.steps, args.big_runs, meter))


if __name__ == "__main__":
    main()
