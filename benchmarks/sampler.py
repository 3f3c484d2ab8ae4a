"""Decoding throughput of the value-guided sampler (docs/algorithm.md §5), beside the official sampler and
against this machine's memory-bandwidth and compute bounds.

    python -m benchmarks.sampler [--shapes tiny,6x256,gpt2-small] [--runs N] [--rounds R]
                                 [--peer DIR [--peer-harness DIR]] [--eager]

One JSON object per shape: batch 32 × 64 new tokens after 16-token prompts of
random ids (the stop ids cannot occur, so every row decodes all 64), all three
trunks (π_β, value, target) and the Q̄/V heads, random weights, mode "sample",
β = 8, T = 1, float32. Shapes: "tiny" (2 layers, 64 wide, 256 ids), "6x256"
(6 layers, 256 wide, GPT-2's 50257 ids) and "gpt2-small".

Each round runs `sampler.sample`'s jitted function (prefill + one `lax.while_loop`)
in a fresh process (compiled, one warm-up call, then `--runs` timed calls; the
best counts) and, with `--peer`, the official `IQL_Policy.sample_raw` at the same
shape, batch, prompt length, new tokens and β through the peer harness (its own
process and venv), alternating which goes first; the best round of each counts.

Fields:
- `tokens_per_s` (best call), `tokens_per_s_median`; with `--peer`:
  `peer_tokens_per_s` (their best call), `peer_tokens_per_s_median`, `ratio`
  (best over best) and `ratio_median`.
- `decode_bytes_per_step`: what one decode step must read: every weight the
  step uses (three trunks' blocks and final norms, π_β's embedding as its LM
  head, the target Q̄1, Q̄2 heads and the V head; the other embeddings only at
  the B rows fed) plus the three trunks' KV caches at the mean fill over the
  generation (prompt + (M + 1) / 2 slots); `bandwidth_gbps`: the best read
  bandwidth measured in this run (`common.BandwidthMeter`, in the parent
  process between rounds); `bandwidth_bound_tokens_per_s` = B ÷ (bytes ÷
  bandwidth) and `bandwidth_fraction` = tokens_per_s ÷ that bound.
- `decode_gflop_per_step` (matmul FLOPs a step needs, `decode_flops_per_token` × B),
  `peak_gflops` (the float32 matmul peak measured in the parent),
  `compute_bound_tokens_per_s` and `compute_fraction` likewise. A step cannot
  beat the larger of the two floors; when the compute floor is the larger,
  the bandwidth bound is out of reach on this machine.
- `row_matmul_gflops`: the best rate of one B-row float32 matmul that streams a
  weight matrix from memory, measured in the parent: [32, 1536] by a [50304, 1536]
  kernel, GPT-2 small's Q̄ output layer as the step reads it (the step's largest
  matmul; its others are narrower). `row_matmul_bound_tokens_per_s` = B ×
  that rate ÷ `decode_gflop_per_step`, what a step of matmuls alone at that rate
  would make, and `row_matmul_fraction` = tokens_per_s ÷ that bound; with
  `--peer`, `ratio_at_row_matmul_bound` = that bound ÷ `peer_tokens_per_s`, the
  ratio such a step would reach.
- `peak_memory_bytes`: peak RSS of the process that decoded this shape (CPU) or
  the device's peak; `peer_peak_memory_bytes` beside it.
- `other_cpu_load`: the share of the CPU other processes took while our calls
  were timed; above ~0.2 every figure here is contended.
- with `--eager`: `eager_tokens_per_s` and `speedup`, the same decoding as a
  Python loop of jitted steps (the dispatch the while loop saves).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/sampler.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ilql_jax import sampler  # noqa: E402
from ilql_jax.models import gpt2, ilql  # noqa: E402

SHAPES = {
    "tiny": lambda: gpt2.GPT2Config.tiny(dropout=0.0),
    "6x256": lambda: gpt2.GPT2Config(n_layer=6, n_embd=256, n_head=8, dropout=0.0),
    "gpt2-small": lambda: gpt2.GPT2Config.gpt2_small(dropout=0.0),
}
BATCH, PROMPT_LEN, NEW_TOKENS, BETA = 32, 16, 64, 8.0
DEFAULT_RUNS = {"tiny": 5, "6x256": 3, "gpt2-small": 2}


def decode_flops_per_token(trunk: gpt2.GPT2Config, cache_len: int) -> int:
    """Matmul FLOPs one decode step needs per row, with three trunks.

    Each trunk's blocks (2·12·L·d², plus 4·L·S·d for attention over S cache
    slots, counted whole as in `common.transformer_flops_per_token`); π_β's LM
    head (d → V; the other trunks' logits are not computed); the two target Q̄
    heads d → 2d → V and the V head d → 2d → 1, over the real vocabulary V.
    """
    d, v = trunk.n_embd, trunk.vocab_size
    blocks = 2 * 12 * trunk.n_layer * d * d + 4 * trunk.n_layer * cache_len * d
    return 3 * blocks + 2 * v * d + 2 * 2 * (2 * d * d + 2 * d * v) + 2 * (2 * d * d + 2 * d)


def decode_bytes_per_step(model_config: ilql.ModelConfig, online, target, batch: int, cache_fill: float) -> int:
    """Bytes one decode step must read: the weights it uses and the filled KV cache slots (see the module docstring)."""
    cfg = model_config.trunk
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    trunks = [p for _, p in sampler._trunks(model_config, online, target).items()]
    total = 0
    for params in trunks:
        embeddings = size(params["wte"]) + size(params["wpe"])
        total += size(params) - embeddings + 2 * batch * cfg.n_embd * itemsize  # wte and wpe rows of the fed tokens
    # π_β's tied LM head reads its whole embedding (real vocabulary rows).
    total += cfg.vocab_size * cfg.n_embd * itemsize
    heads = [target["q1"], target["q2"], online["value"]["v"]]
    total += sum(size(h) for h in heads)
    padded = cfg.padded_vocab_size - cfg.vocab_size  # the Q̄ heads' padded output columns are layout, not need
    total -= 2 * padded * (2 * cfg.n_embd + 1) * itemsize
    kv = 2 * cfg.n_layer * batch * cache_fill * cfg.n_embd * jnp.dtype(cfg.dtype).itemsize
    return int(total + len(trunks) * kv)


def worker(name: str, runs: int, eager: bool) -> dict:
    """One shape in this process: compile, one warm-up call, `runs` timed calls."""
    model_config = ilql.ModelConfig(trunk=SHAPES[name]())
    sampler_config = sampler.SamplerConfig(max_new_tokens=NEW_TOKENS, mode="sample", prompt_buckets=(PROMPT_LEN,))
    online, target = jax.jit(ilql.init, static_argnums=0)(model_config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (BATCH, PROMPT_LEN), 1, model_config.trunk.vocab_size, jnp.int32)
    mask = jnp.ones_like(tokens)
    key = jax.random.key(2)
    # No stop ids (all slots -1): every row generates exactly NEW_TOKENS tokens.
    knobs = sampler.make_knobs(beta=BETA, temperature=1.0, stop_ids=(), pad_id=0)
    args = (online, target, tokens, mask, key, knobs)
    t0 = time.perf_counter()
    loop = sampler._sample_jit.lower(model_config, sampler_config, *args).compile()
    fns = {"loop": lambda: loop(*args)}
    if eager:
        init = jax.jit(sampler.init_state, static_argnums=(0, 1)).lower(
            model_config, sampler_config, online, target, tokens, mask, key).compile()
        state = init(online, target, tokens, mask, key)
        # The Q̄ kernels in the layout the loop reads them (`SamplerConfig.vocab_major_q`), made once.
        step_target = jax.jit(sampler.decoding_target, static_argnums=0)(model_config, target) if sampler_config.vocab_major_q else target
        step = jax.jit(sampler.step_state, static_argnums=(0, 1), donate_argnums=5).lower(
            model_config, sampler_config, online, step_target, knobs, state).compile()
        finish = jax.jit(sampler.finish, static_argnums=0).lower(sampler_config, state).compile()

        def eager_run():
            s = init(online, target, tokens, mask, key)
            for _ in range(NEW_TOKENS):
                s = step(online, step_target, knobs, s)
            return finish(s)

        fns["eager"] = eager_run
    compile_s = time.perf_counter() - t0
    for fn in fns.values():  # warm-up
        jax.block_until_ready(fn())
    walls = {k: [] for k in fns}
    out = {}
    with common.OtherLoad() as load:
        for r in range(runs):
            for k, fn in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
                t = time.perf_counter()
                out[k] = jax.block_until_ready(fn())
                walls[k].append(time.perf_counter() - t)
    result = out["loop"]
    assert (np.asarray(result.lengths) == NEW_TOKENS).all()
    n_tokens = BATCH * NEW_TOKENS
    best, med = min(walls["loop"]), float(np.median(walls["loop"]))
    rec = {
        "bench": "sampler", "shape": name, "tokens_per_s": n_tokens / best, "tokens_per_s_median": n_tokens / med,
        "loop_s": best, "step_ms": 1e3 * best / NEW_TOKENS, "timed_runs": runs, "other_cpu_load": load.fraction,
        "compile_s": compile_s, "peak_memory_bytes": common.peak_memory_bytes(),
        "decode_bytes_per_step": decode_bytes_per_step(model_config, online, target, BATCH,
                                                       PROMPT_LEN + (NEW_TOKENS + 1) / 2),
        "decode_gflop_per_step": BATCH * decode_flops_per_token(model_config.trunk,
                                                                 PROMPT_LEN + (NEW_TOKENS + 1) // 2) / 1e9,
        "batch": BATCH, "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "beta": BETA, "temperature": 1.0,
        "trunks": 3, "mode": sampler_config.mode, "dtype": model_config.trunk.dtype,
        "n_layer": model_config.trunk.n_layer, "n_embd": model_config.trunk.n_embd,
        "vocab_size": model_config.trunk.vocab_size,
        "n_params": sum(x.size for x in jax.tree.leaves((online, target))), "device": common.device_info(),
    }
    if eager:
        rec["eager_tokens_per_s"] = n_tokens / min(walls["eager"])
        rec["speedup"] = min(walls["eager"]) / best
        rec["same_tokens"] = bool((np.asarray(result.tokens) == np.asarray(out["eager"].tokens)).all())
    return rec


def _peer_args(name: str, cfg: gpt2.GPT2Config, runs: int) -> list[str]:
    # Their vocabulary is a base plus 6 markup ids: base = ours − 6 gives the same total.
    shape = f"{name}={cfg.n_layer},{cfg.n_embd},{cfg.n_head},{cfg.vocab_size - 6},{cfg.n_positions}"
    return ["--shapes", name, "--shape", shape, "-B", str(BATCH), "--new-tokens", str(NEW_TOKENS),
            "--prompt-len", str(PROMPT_LEN), "--adv-weight", str(BETA), "--runs", str(runs)]


def bench_shape(name: str, runs: int, rounds: int, peer: common.Peer | None, eager: bool,
                peak: common.PeakMeter, rows: common.PeakMeter, bandwidth: common.BandwidthMeter) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.sampler", "--worker", name, "--runs", str(runs)] + (["--eager"] * eager)

    def ours():
        rec = [r for r in common.run_json_lines(cmd, env=common.worker_env()) if r.get("bench") == "sampler"][0]
        peak.measure()
        rows.measure()
        bandwidth.measure()
        return rec

    runs_by_name = {"ours": ours}
    if peer is not None:
        runs_by_name["peer"] = lambda: [r for r in peer.run("peer_official_sample.py",
                                                             _peer_args(name, SHAPES[name](), runs))
                                        if r.get("bench") == "peer_sampler"][0]
    results = common.alternate(rounds, runs_by_name)
    rec = dict(max(results["ours"], key=lambda r: r["tokens_per_s"]))
    rec["rounds"] = rounds
    rec["tokens_per_s_rounds"] = [r["tokens_per_s"] for r in results["ours"]]
    rec["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in results["ours"])
    rec["bandwidth_gbps"] = bandwidth.bytes_per_s / 1e9
    rec["bandwidth_kernel"] = bandwidth.best_kernel
    rec["bandwidth_bound_tokens_per_s"] = BATCH * bandwidth.bytes_per_s / rec["decode_bytes_per_step"]
    rec["bandwidth_fraction"] = rec["tokens_per_s"] / rec["bandwidth_bound_tokens_per_s"]
    rec["peak_gflops"] = peak.gflops
    rec["compute_bound_tokens_per_s"] = BATCH * peak.gflops / rec["decode_gflop_per_step"]
    rec["compute_fraction"] = rec["tokens_per_s"] / rec["compute_bound_tokens_per_s"]
    rec["row_matmul_gflops"] = rows.gflops
    rec["row_matmul_bound_tokens_per_s"] = BATCH * rows.gflops / rec["decode_gflop_per_step"]
    rec["row_matmul_fraction"] = rec["tokens_per_s"] / rec["row_matmul_bound_tokens_per_s"]
    if peer is not None:
        rec.update(common.peer_fields(rec, results["peer"]))
        theirs = max(results["peer"], key=lambda r: r["tokens_per_s_best"])
        rec["peer_rows_sampling_eoa"] = theirs["rows_sampling_eoa"]
        rec["ratio_at_row_matmul_bound"] = rec["row_matmul_bound_tokens_per_s"] / rec["peer_tokens_per_s"]
    return rec


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ",".join(SHAPES))
    parser.add_argument("--runs", type=int, default=None,
                        help="timed calls per round after a warm-up (default: tiny 5, 6x256 3, gpt2-small 2); "
                             "the peer makes as many")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours (and the peer's)")
    parser.add_argument("--peer", metavar="DIR", help="the official code prepared by the peer harness's setup.sh "
                        "(holds ilql/ and venv/): time it too, at the same shapes")
    parser.add_argument("--peer-harness", metavar="DIR", help="folder of peer_official_sample.py (default: found)")
    parser.add_argument("--eager", action="store_true", help="also time a Python loop of jitted steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        common.emit(worker(args.worker, args.runs or DEFAULT_RUNS[args.worker], args.eager))
        return
    shapes = common.parse_shapes(parser, args.shapes, SHAPES)
    peer = common.Peer(args.peer, args.peer_harness) if args.peer else None
    small = SHAPES["gpt2-small"]()
    peak, bandwidth = common.PeakMeter(), common.BandwidthMeter()
    rows = common.PeakMeter(small.padded_vocab_size, rows=BATCH, k=2 * small.n_embd)
    for meter in (peak, rows, bandwidth):
        meter.measure()
    for s in shapes:
        common.emit(bench_shape(s, args.runs or DEFAULT_RUNS[s], args.rounds, peer, args.eager, peak, rows,
                                bandwidth))


if __name__ == "__main__":
    main()
