"""Decoding throughput of the value-guided sampler (ILQL_SPEC §5): one jitted
`while_loop` against a Python loop of jitted steps.

    python -m benchmarks.sampler [--shapes tiny,gpt2-small] [--steps N]

Prints one JSON object per line: tiny and gpt2-small at batch 32, and tiny at
batch 1. Each run decodes a batch of prompts of 16 random tokens into exactly 64 new tokens (the stop ids cannot
occur), with all three trunks (π_β, value, target) and the Q/V heads, random
weights, mode "sample", β = 1, T = 1, float32:

- `tokens_per_s`: `sampler.sample`'s jitted function (prefill + one `lax.while_loop`);
- `eager_tokens_per_s`: the same model, batch and key decoded by a Python loop
  that calls a jitted `sampler.step_state` once per token (the decode state
  donated, so its KV caches are updated in place as in the loop), between a
  jitted `init_state` and `finish`;
- `speedup` = tokens_per_s / eager_tokens_per_s.

Both are compiled ahead of time, then timed (best of `--steps` runs after one
warm-up run; gpt2-small: one run); `same_tokens` checks they decode identically.

On CPU the decode step is compute-bound at batch 32, so the loop gains little
over the eager loop, whose only extra cost is per-step dispatch; the loop's
advantage shows where dispatch dominates: batch 1, small models, accelerators.
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


def _time(fn, runs: int):
    """Best wall time of `fn` over `runs` runs (the first skipped as warm-up when runs > 1), and its output."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times[1:] or times), out


def bench_shape(name: str, batch: int, steps: int) -> dict:
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

    runs = 1 if name == "gpt2-small" else steps + 1  # the first is a warm-up, except for gpt2-small
    loop_s, result = _time(lambda: loop(*args), runs)
    eager_s, eager_result = _time(eager, runs)
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
        "timed_runs": max(runs - 1, 1),
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
    parser.add_argument("--steps", type=int, default=5, help="timed runs per shape (gpt2-small: 1); best is reported")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            parser.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    for shape, batch in RUNS:
        if shape in shapes:
            common.emit(bench_shape(shape, batch, args.steps))


if __name__ == "__main__":
    main()
