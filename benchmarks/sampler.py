"""Decoding throughput of the value-guided sampler (docs/algorithm.md §5), beside the official sampler and
transformers' own `generate`, against this machine's memory-bandwidth and compute bounds.

    python -m benchmarks.sampler [--shapes tiny,6x256,gpt2-small] [--runs N] [--rounds R]
                                 [--peer DIR [--peer-harness DIR]] [--torch-python PATH [--torch-threads N]]
                                 [--guidance SHAPES] [--eager]

One JSON object per shape (by default tiny, 6x256 and gpt2-small): batch 32 ×
64 new tokens after 16-token prompts of random ids (the stop ids cannot occur,
so every row decodes all 64), all three
trunks (π_β, value, target) and the Q̄/V heads, random weights, mode "sample",
β = 8, T = 1, float32. Shapes: "tiny" (GPT-2, 2 layers, 64 wide, 256 ids),
"6x256" (6 layers, 256 wide, GPT-2's 50257 ids), "gpt2-small", "tiny-llama"
(`LlamaConfig.tiny()`: 2 layers, 64 wide, 4 query / 2 KV heads, untied head)
and "smollm2-135m" (SmolLM2-135M's shape, `benchmarks.accelerator.smollm2_135m`:
Llama, 30 layers, width 576, 9 query / 3 KV heads of 64, SwiGLU 1536, 49,152 ids,
tied embeddings).

Each round runs `sampler.sample`'s jitted function (prefill + one `lax.while_loop`)
in a fresh process (compiled, one warm-up call, then `--runs` timed calls; the
best counts) and, with `--peer`, the official `IQL_Policy.sample_raw` at the same
shape, batch, prompt length, new tokens and β through the peer harness (its own
process and venv; GPT-2 shapes only), and with `--torch-python`, transformers'
`generate` (`benchmarks/transformers_generate.py`, its own process), alternating
which goes first; the best round of each counts.

Fields:
- `tokens_per_s` (best call), `tokens_per_s_median`; with `--peer`:
  `peer_tokens_per_s` (their best call), `peer_tokens_per_s_median`, `ratio`
  (best over best) and `ratio_median`.
- `decode_bytes_per_step`: what one decode step must read
  (`decode_bytes_per_step`): every weight the step uses (three trunks' blocks
  and final norms; π_β's LM head over the real vocabulary, its embedding when
  tied; the target Q̄1, Q̄2 heads and the V head; the embeddings (GPT-2's `wte`
  and `wpe`, Llama's `embed_tokens`) only at the B rows fed) plus the three
  trunks' KV caches at the mean fill over the generation (prompt + (M + 1) / 2
  slots, 2·L·n_kv_head·head_dim values a slot and row: n_kv_head = n_head for
  GPT-2); `bandwidth_gbps`: the best read bandwidth measured in this run
  (`common.BandwidthMeter`, in the parent process between rounds);
  `bandwidth_bound_tokens_per_s` = B ÷ (bytes ÷ bandwidth) and
  `bandwidth_fraction` = tokens_per_s ÷ that bound.
- `decode_gflop_per_step` (matmul FLOPs a step needs, `decode_flops_per_token` × B,
  any trunk), `peak_gflops` (the float32 matmul peak measured in the parent),
  `compute_bound_tokens_per_s` and `compute_fraction` likewise. A step cannot
  beat the larger of the two floors; when the compute floor is the larger,
  the bandwidth bound is out of reach on this machine.
- `row_matmul_gflops`: the best rate of one B-row float32 matmul that streams a
  weight matrix from memory, measured in the parent at this shape's largest
  matmul of the step, the Q̄ output layer as the step reads it:
  `row_matmul_shape` = [B, 2d, V_pad] ([32, 1536] by a [50304, 1536] kernel at GPT-2
  small, [32, 1152] by [49152, 1152] at SmolLM2; its others are narrower).
  (Before SmolLM2 was added every shape used GPT-2 small's.)
  `row_matmul_bound_tokens_per_s` = B × that rate ÷ `decode_gflop_per_step`, what
  a step of matmuls alone at that rate would make, and `row_matmul_fraction` =
  tokens_per_s ÷ that bound; with `--peer`, `ratio_at_row_matmul_bound` = that
  bound ÷ `peer_tokens_per_s`, the ratio such a step would reach.
- `peak_memory_bytes`: peak RSS of the process that decoded this shape (CPU) or
  the device's peak; `peer_peak_memory_bytes` beside it.
- `other_cpu_load`: the share of the CPU other processes took while our calls
  were timed; above ~0.2 every figure here is contended.
- with `--eager`: `eager_tokens_per_s` and `speedup`, the same decoding as a
  Python loop of jitted steps (the dispatch the while loop saves).
- one worker with `--profile` (`python -m benchmarks.sampler --worker SHAPE --profile`):
  one more value-guided call traced op by op (`benchmarks/op_profile.py`):
  `op_s`, `op_share` (matmul, data movement, reduction, elementwise), `top_ops`.
- with `--torch-python PATH` (an interpreter with the `bench` extra: torch and
  transformers): `transformers_tokens_per_s` (best call over rounds),
  `transformers_tokens_per_s_median`, `transformers_tokens_per_s_rounds`,
  `ratio_vs_transformers` = tokens_per_s ÷ transformers_tokens_per_s: transformers'
  PyTorch `generate` of the same-shaped float32 model (`LlamaForCausalLM`,
  `GPT2LMHeadModel`; one trunk and its LM head, plain sampling at T = 1, no
  top-k) at the same batch, prompt length and new tokens, torch at
  `--torch-threads` threads (`transformers_threads`); `transformers_peak_memory_bytes`
  (its process's peak RSS), `torch_version`, `transformers_version`.

The cost of guidance (`--guidance SHAPES`, default "smollm2-135m"): for those
shapes the same worker process also decodes with π_β alone (the library's BC
path: `sample` on `{"policy": π_β}` and an empty target, so one trunk and its LM
head, no value trunks, no Q̄/V heads; the same prompts, lengths, β and key) and
both decoders at batch 1 too (the first prompt), all timed in the same calls'
alternation. The shape's row then also carries `policy_only_tokens_per_s`,
`guidance_cost` (= policy_only_tokens_per_s ÷ tokens_per_s: how many times
slower value-guided decoding is) and, with `--torch-python`,
`policy_only_ratio_vs_transformers` (π_β alone against transformers, the same
work); and one more JSON object per batch size (1 and 32), `"bench":
"sampler_guidance"`: `batch`, `guided_tokens_per_s` (at 32 the row's
`tokens_per_s`), `policy_only_tokens_per_s` (each the best call over rounds),
`guidance_cost`, `guidance_cost_rounds` (each round's ratio of its best calls),
`guided_decode_bytes_per_step` / `policy_only_decode_bytes_per_step` and
`guided_decode_gflop_per_token` / `policy_only_decode_gflop_per_token` (what
each decoder's step needs, as above), and with `--torch-python`
`transformers_tokens_per_s` at that batch, `ratio_vs_transformers` (guided) and
`policy_only_ratio_vs_transformers`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/sampler.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import accelerator, common, op_profile  # noqa: E402
from ilql_jax import roles, sampler  # noqa: E402
from ilql_jax.models import gpt2, hf_import, ilql, llama  # noqa: E402
from ilql_jax.models import trunk as trunk_lib  # noqa: E402

SHAPES = {
    "tiny": lambda: gpt2.GPT2Config.tiny(dropout=0.0),
    "6x256": lambda: gpt2.GPT2Config(n_layer=6, n_embd=256, n_head=8, dropout=0.0),
    "gpt2-small": lambda: gpt2.GPT2Config.gpt2_small(dropout=0.0),
    "tiny-llama": lambda: llama.LlamaConfig.tiny(),
    "smollm2-135m": accelerator.smollm2_135m,
}
BATCH, PROMPT_LEN, NEW_TOKENS, BETA = 32, 16, 64, 8.0
DEFAULT_RUNS = {"tiny": 5, "6x256": 3, "gpt2-small": 2, "tiny-llama": 5, "smollm2-135m": 1}
# The batch sizes at which `--guidance` compares value-guided decoding with π_β alone.
GUIDANCE_BATCHES = (1, BATCH)
# Parameters a decode step reads only at the B rows it looks up: GPT-2's token and position embeddings,
# Llama's token embedding. An untied LM head ("lm_head") only π_β's step reads, whole.
LOOKUP_TABLES = ("wte", "wpe", "embed_tokens")
LM_HEAD = "lm_head"


def decode_flops_per_token(trunk: trunk_lib.TrunkConfig, cache_len: int, *, guided: bool = True) -> int:
    """Matmul FLOPs one decode step needs per row: three trunks and the heads, or π_β alone (`guided=False`).

    With L layers, width d, the real vocabulary V (padding is layout), M a block's
    matmul weights (`accelerator.layer_matmul_params`: GPT-2 12·d²; Llama
    2·d·h_q + 2·d·h_kv + 3·d·I for q/o, k/v and the SwiGLU's gate, up and down,
    h_q = n_head·head_dim, h_kv = n_kv_head·head_dim, I = intermediate_size) and
    S cache slots attended:

      one trunk          2·M·L + 4·L·S·h_q   (QKᵀ and weights·V over S slots, counted whole as
                                              `common.transformer_flops_per_token` does; grouped-query
                                              attention shares keys and values, not FLOPs)
      π_β's LM head      2·d·V                (the other trunks' logits are not computed)
      guided adds        two more trunks, the target Q̄1, Q̄2 heads d → 2d → V,
                         2·(2d² + 2d·V) each, and the V head d → 2d → 1, 2·(2d² + 2d)

    Embedding lookups, norms, RoPE, softmaxes and sampling are not matmuls and are not counted.
    """
    d, v, L = trunk.n_embd, trunk.vocab_size, trunk.n_layer
    h_q = trunk.n_head * trunk.head_dim
    one_trunk = 2 * accelerator.layer_matmul_params(trunk) * L + 4 * L * cache_len * h_q
    policy = one_trunk + 2 * d * v
    if not guided:
        return policy
    return policy + 2 * one_trunk + 2 * 2 * (2 * d * d + 2 * d * v) + 2 * (2 * d * d + 2 * d)


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def trunk_bytes_per_step(cfg: trunk_lib.TrunkConfig, params, batch: int) -> int:
    """Bytes of one trunk's parameters a decode step reads, its LM head aside: all but the embedding tables
    (`LOOKUP_TABLES`) and an untied LM head, plus the `batch` rows it looks up in each table."""
    tables = [k for k in LOOKUP_TABLES if k in params]
    skipped = _nbytes([params[k] for k in tables]) + (_nbytes(params[LM_HEAD]) if LM_HEAD in params else 0)
    return _nbytes(params) - skipped + len(tables) * batch * cfg.n_embd * jnp.dtype(cfg.param_dtype).itemsize


def decode_bytes_per_step(model_config: ilql.ModelConfig, online, target, batch: int, cache_fill: float, *,
                          guided: bool = True) -> int:
    """Bytes one decode step must read: the weights it uses and the filled KV cache slots (see the module
    docstring); π_β's alone with `guided=False`.

      trunks        `trunk_bytes_per_step` of each trunk the step runs (three, or π_β's)
      π_β's head    V·d values (the real vocabulary's rows of the tied embedding, or columns of `lm_head`)
      guided adds   the target Q̄1, Q̄2 heads and the V head, less the Q̄ output columns of padded ids
      KV caches     per trunk 2·L·B·fill·n_kv_head·head_dim values (keys and values) in the compute dtype
    """
    cfg = model_config.trunk
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    trunks = (sampler._trunks(model_config, online, target) if guided
              else {roles.POLICY: ilql.policy_params(model_config, online)})
    total = sum(trunk_bytes_per_step(cfg, p, batch) for p in trunks.values())
    total += cfg.vocab_size * cfg.n_embd * itemsize  # π_β's LM head: the real vocabulary
    if guided:
        total += _nbytes([*roles.q_heads(target), roles.v_head(online)])
        padded = cfg.padded_vocab_size - cfg.vocab_size  # the Q̄ heads' padded output columns are layout, not need
        total -= 2 * padded * (2 * cfg.n_embd + 1) * itemsize
    kv_width = trunk_lib.implementation(cfg).kv_heads(cfg) * cfg.head_dim
    kv = 2 * cfg.n_layer * batch * cache_fill * kv_width * jnp.dtype(cfg.dtype).itemsize
    return int(total + len(trunks) * kv)


def _decoder(model_config, sampler_config, online, target, tokens, key, knobs):
    """`sampler.sample`'s jitted function, compiled for these arguments: a call decodes them once."""
    args = (online, target, tokens, jnp.ones_like(tokens), key, knobs)
    compiled = sampler._sample_jit.lower(model_config, sampler_config, *args).compile()
    return functools.partial(compiled, *args)  # `.func` is the compiled program (its text for `--profile`)


def worker(name: str, runs: int, eager: bool, guidance_batches: tuple[int, ...] = (), *, batch: int = BATCH,
           new_tokens: int = NEW_TOKENS, profile: bool = False) -> dict:
    """One shape in this process: compile, one warm-up call, `runs` timed calls of each decoder (the value-guided
    one at `batch`; with `eager`, a Python loop of jitted steps; at each of `guidance_batches`, the guided one and
    π_β alone), alternating their order call by call; with `profile`, one more value-guided call traced op by op
    (`benchmarks/op_profile.py`)."""
    model_config = ilql.ModelConfig(trunk=SHAPES[name]())
    cfg = model_config.trunk
    sampler_config = sampler.SamplerConfig(max_new_tokens=new_tokens, mode="sample", prompt_buckets=(PROMPT_LEN,))
    online, target = jax.jit(ilql.init, static_argnums=0)(model_config, jax.random.key(0))
    rows = max((batch, *guidance_batches))
    all_tokens = jax.random.randint(jax.random.key(1), (rows, PROMPT_LEN), 1, cfg.vocab_size, jnp.int32)
    tokens = all_tokens[:batch]
    mask = jnp.ones_like(tokens)
    key = jax.random.key(2)
    # No stop ids (all slots -1): every row generates exactly `new_tokens` tokens.
    knobs = sampler.make_knobs(beta=BETA, temperature=1.0, stop_ids=(), pad_id=0)
    t0 = time.perf_counter()
    fns = {"loop": _decoder(model_config, sampler_config, online, target, tokens, key, knobs)}
    policy_online = {roles.POLICY: ilql.policy_params(model_config, online)}  # a BC state's tree: π_β alone
    for b in guidance_batches:
        if b != batch:
            fns[f"guided_b{b}"] = _decoder(model_config, sampler_config, online, target, all_tokens[:b], key, knobs)
        fns[f"policy_only_b{b}"] = _decoder(model_config, sampler_config, policy_online, {}, all_tokens[:b], key,
                                            knobs)
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
            for _ in range(new_tokens):
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
    for k, result in out.items():
        assert (np.asarray(result.lengths) == new_tokens).all(), f"{k}: a row stopped early"
    result = out["loop"]
    n_tokens = batch * new_tokens
    best, med = min(walls["loop"]), float(np.median(walls["loop"]))
    fill = PROMPT_LEN + (new_tokens + 1) / 2
    rec = {
        "bench": "sampler", "shape": name, "tokens_per_s": n_tokens / best, "tokens_per_s_median": n_tokens / med,
        "loop_s": best, "step_ms": 1e3 * best / new_tokens, "timed_runs": runs, "other_cpu_load": load.fraction,
        "compile_s": compile_s, "peak_memory_bytes": common.peak_memory_bytes(),
        "decode_bytes_per_step": decode_bytes_per_step(model_config, online, target, batch, fill),
        "decode_gflop_per_step": batch * decode_flops_per_token(cfg, PROMPT_LEN + (new_tokens + 1) // 2) / 1e9,
        "batch": batch, "prompt_len": PROMPT_LEN, "new_tokens": new_tokens, "beta": BETA, "temperature": 1.0,
        "trunks": 3, "mode": sampler_config.mode, "dtype": cfg.dtype, "arch": type(cfg).__name__,
        "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size,
        "n_params": sum(x.size for x in jax.tree.leaves((online, target))), "device": common.device_info(),
    }
    if profile:
        rec.update(op_profile.profile(fns["loop"], fns["loop"].func.as_text()))
    if eager:
        rec["eager_tokens_per_s"] = n_tokens / min(walls["eager"])
        rec["speedup"] = min(walls["eager"]) / best
        rec["same_tokens"] = bool((np.asarray(result.tokens) == np.asarray(out["eager"].tokens)).all())
    if guidance_batches:
        rec["guidance"] = []
        for b in guidance_batches:
            guided = walls["loop" if b == batch else f"guided_b{b}"]
            alone = walls[f"policy_only_b{b}"]
            rate = lambda w, f=min: b * new_tokens / f(w)
            rec["guidance"].append({
                "batch": b, "guided_tokens_per_s": rate(guided), "guided_tokens_per_s_median": rate(guided, np.median),
                "policy_only_tokens_per_s": rate(alone),
                "policy_only_tokens_per_s_median": rate(alone, np.median),
                "guided_decode_bytes_per_step": decode_bytes_per_step(model_config, online, target, b, fill),
                "policy_only_decode_bytes_per_step": decode_bytes_per_step(model_config, online, target, b, fill,
                                                                           guided=False),
                "guided_decode_gflop_per_token": decode_flops_per_token(cfg, PROMPT_LEN + (new_tokens + 1) // 2) / 1e9,
                "policy_only_decode_gflop_per_token": decode_flops_per_token(
                    cfg, PROMPT_LEN + (new_tokens + 1) // 2, guided=False) / 1e9})
    return rec


def _peer_args(name: str, cfg: gpt2.GPT2Config, runs: int) -> list[str]:
    # Their vocabulary is a base plus 6 markup ids: base = ours − 6 gives the same total.
    shape = f"{name}={cfg.n_layer},{cfg.n_embd},{cfg.n_head},{cfg.vocab_size - 6},{cfg.n_positions}"
    return ["--shapes", name, "--shape", shape, "-B", str(BATCH), "--new-tokens", str(NEW_TOKENS),
            "--prompt-len", str(PROMPT_LEN), "--adv-weight", str(BETA), "--runs", str(runs)]


TRANSFORMERS_SCRIPT = os.path.join(common.REPO_ROOT, "benchmarks", "transformers_generate.py")


def transformers_args(cfg: trunk_lib.TrunkConfig, batches: tuple[int, ...], runs: int, threads: int) -> list[str]:
    """`benchmarks/transformers_generate.py`'s arguments for the same-shaped model (its config.json as
    `hf_import.config_to_hf` writes it) at our prompt length and new tokens."""
    return [TRANSFORMERS_SCRIPT, "--config", json.dumps(hf_import.config_to_hf(cfg)),
            "--batches", ",".join(str(b) for b in batches), "--prompt-len", str(PROMPT_LEN),
            "--new-tokens", str(NEW_TOKENS), "--runs", str(runs), "--threads", str(threads)]


def _torch_env() -> dict:
    # The torch interpreter is another environment: nothing of this one's import path.
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def check_torch_python(parser, path: str) -> None:
    """Fails early (`parser.error`) unless `path` is an interpreter that imports torch and transformers."""
    import subprocess
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        parser.error(f"--torch-python {path}: not an executable file")
    probe = subprocess.run([path, "-c", "import torch, transformers"], capture_output=True, text=True,
                           env=_torch_env())
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["exit status " + str(probe.returncode)])[-1]
        parser.error(f"--torch-python {path}: cannot import torch and transformers ({last}); install the "
                     "`bench` extra there")


def _best(rounds: list[dict], key: str) -> dict:
    return max(rounds, key=lambda r: r[key])


def bench_shape(name: str, runs: int, rounds: int, peer: common.Peer | None, eager: bool, guidance: bool,
                torch_python: str | None, torch_threads: int, peak: common.PeakMeter,
                bandwidth: common.BandwidthMeter) -> list[dict]:
    """The shape's row (and with `guidance` its "sampler_guidance" rows), from `rounds` alternating rounds."""
    cfg = SHAPES[name]()
    cmd = ([sys.executable, "-m", "benchmarks.sampler", "--worker", name, "--runs", str(runs)] + (["--eager"] * eager)
           + (["--worker-guidance"] * guidance))
    # The rate of the step's largest streaming matmul at this shape: the Q̄ output layer, [B, 2d] × [2d, V_pad].
    rows = common.PeakMeter(cfg.padded_vocab_size, rows=BATCH, k=2 * cfg.n_embd)
    rows.measure()
    batches = tuple(sorted(set((BATCH,) + (GUIDANCE_BATCHES if guidance else ())), reverse=True))

    def ours():
        rec = [r for r in common.run_json_lines(cmd, env=common.worker_env()) if r.get("bench") == "sampler"][0]
        peak.measure()
        rows.measure()
        bandwidth.measure()
        return rec

    runs_by_name = {"ours": ours}
    if peer is not None:
        runs_by_name["peer"] = lambda: [r for r in peer.run("peer_official_sample.py", _peer_args(name, cfg, runs))
                                        if r.get("bench") == "peer_sampler"][0]
    if torch_python is not None:
        runs_by_name["transformers"] = lambda: {r["batch"]: r for r in common.run_json_lines(
            [torch_python, *transformers_args(cfg, batches, runs, torch_threads)], env=_torch_env())
            if r.get("bench") == "transformers_generate"}
    results = common.alternate(rounds, runs_by_name)
    rec = dict(_best(results["ours"], "tokens_per_s"))
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
    rec["row_matmul_shape"] = [rows.rows, rows.k, rows.n]
    rec["row_matmul_bound_tokens_per_s"] = BATCH * rows.gflops / rec["decode_gflop_per_step"]
    rec["row_matmul_fraction"] = rec["tokens_per_s"] / rec["row_matmul_bound_tokens_per_s"]
    if peer is not None:
        rec.update(common.peer_fields(rec, results["peer"]))
        theirs = max(results["peer"], key=lambda r: r["tokens_per_s_best"])
        rec["peer_rows_sampling_eoa"] = theirs["rows_sampling_eoa"]
        rec["ratio_at_row_matmul_bound"] = rec["row_matmul_bound_tokens_per_s"] / rec["peer_tokens_per_s"]
    torch_rows = {}
    if torch_python is not None:
        for b in batches:
            per_round = [r[b] for r in results["transformers"]]
            best = _best(per_round, "tokens_per_s_best")
            torch_rows[b] = {"transformers_tokens_per_s": best["tokens_per_s_best"],
                             "transformers_tokens_per_s_median": best["tokens_per_s"],
                             "transformers_tokens_per_s_rounds": [r["tokens_per_s_best"] for r in per_round],
                             "transformers_peak_memory_bytes": max(r["peak_rss_bytes"] for r in per_round),
                             "transformers_threads": best["threads"], "torch_version": best["torch_version"],
                             "transformers_version": best["transformers_version"]}
        rec.update(torch_rows[BATCH])
        rec["ratio_vs_transformers"] = rec["tokens_per_s"] / rec["transformers_tokens_per_s"]
    out = [rec]
    guidance_rounds = [r.pop("guidance", None) for r in results["ours"]]
    rec.pop("guidance", None)
    if guidance:
        for i, b in enumerate(GUIDANCE_BATCHES):
            per_round = [g[i] for g in guidance_rounds]
            row = {"bench": "sampler_guidance", "shape": name, "batch": b, "prompt_len": PROMPT_LEN,
                   "new_tokens": NEW_TOKENS, "beta": BETA, "rounds": rounds,
                   "guided_tokens_per_s": max(g["guided_tokens_per_s"] for g in per_round),
                   "policy_only_tokens_per_s": max(g["policy_only_tokens_per_s"] for g in per_round)}
            row["guidance_cost"] = row["policy_only_tokens_per_s"] / row["guided_tokens_per_s"]
            row["guidance_cost_rounds"] = [g["policy_only_tokens_per_s"] / g["guided_tokens_per_s"] for g in per_round]
            row.update({k: per_round[0][k] for k in ("guided_decode_bytes_per_step", "policy_only_decode_bytes_per_step",
                                                     "guided_decode_gflop_per_token",
                                                     "policy_only_decode_gflop_per_token")})
            if b in torch_rows:
                row.update(torch_rows[b])
                row["ratio_vs_transformers"] = row["guided_tokens_per_s"] / row["transformers_tokens_per_s"]
                row["policy_only_ratio_vs_transformers"] = (row["policy_only_tokens_per_s"]
                                                            / row["transformers_tokens_per_s"])
            row["device"] = rec["device"]
            if b == BATCH:
                rec["policy_only_tokens_per_s"] = row["policy_only_tokens_per_s"]
                rec["guidance_cost"] = rec["policy_only_tokens_per_s"] / rec["tokens_per_s"]
                if "policy_only_ratio_vs_transformers" in row:
                    rec["policy_only_ratio_vs_transformers"] = row["policy_only_ratio_vs_transformers"]
            out.append(row)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,6x256,gpt2-small", help="comma-separated: " + ",".join(SHAPES))
    parser.add_argument("--runs", type=int, default=None,
                        help="timed calls per round after a warm-up (default: " +
                             ", ".join(f"{k} {v}" for k, v in DEFAULT_RUNS.items()) + "); the peer and "
                             "transformers make as many")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours (and the peer's)")
    parser.add_argument("--peer", metavar="DIR", help="the official code prepared by the peer harness's setup.sh "
                        "(holds ilql/ and venv/): time it too, at the same shapes (GPT-2 shapes only)")
    parser.add_argument("--peer-harness", metavar="DIR", help="folder of peer_official_sample.py (default: found)")
    parser.add_argument("--torch-python", metavar="PATH", help="an interpreter with torch and transformers (the "
                        "`bench` extra): time transformers' own generate of the same-shaped model too")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--guidance", default="smollm2-135m", metavar="SHAPES",
                        help="shapes (of --shapes) whose worker also times π_β alone, at batch 1 and 32 "
                             "(comma-separated; '' for none)")
    parser.add_argument("--eager", action="store_true", help="also time a Python loop of jitted steps")
    parser.add_argument("--profile", action="store_true", help="with --worker: also trace one value-guided call "
                        "and report where its time goes by XLA op (op_s, op_share, top_ops; benchmarks/op_profile.py)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-guidance", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile and not args.worker:
        parser.error("--profile traces one worker: add --worker SHAPE")
    if args.worker:
        common.emit(worker(args.worker, args.runs or DEFAULT_RUNS[args.worker], args.eager,
                           GUIDANCE_BATCHES if args.worker_guidance else (), profile=args.profile))
        return
    shapes = common.parse_shapes(parser, args.shapes, SHAPES)
    guidance = set(common.parse_shapes(parser, args.guidance, SHAPES))
    if args.torch_python:
        check_torch_python(parser, args.torch_python)
    peer = common.Peer(args.peer, args.peer_harness) if args.peer else None
    peak, bandwidth = common.PeakMeter(), common.BandwidthMeter()
    for meter in (peak, bandwidth):
        meter.measure()
    for s in shapes:
        gpt2_shape = isinstance(SHAPES[s](), gpt2.GPT2Config)  # the peer harness knows GPT-2 shapes only
        for rec in bench_shape(s, args.runs or DEFAULT_RUNS[s], args.rounds, peer if gpt2_shape else None,
                               args.eager, s in guidance, args.torch_python, args.torch_threads, peak, bandwidth):
            common.emit(rec)


if __name__ == "__main__":
    main()
