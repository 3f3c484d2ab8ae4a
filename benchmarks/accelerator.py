"""The accelerator check: one short script to run the first time a GPU or TPU is at hand.

    python -m benchmarks.accelerator                 # GPU/TPU: GPT-2 small and SmolLM2-135M, float32 and bfloat16
    python -m benchmarks.accelerator --tiny          # any machine: the same checks at toy shapes (the suite runs it)

It needs the library and the `cuda` (or `tpu`) extra, nothing else: no torch, no network, random weights (speed
and memory do not depend on the values). On a machine with no network, the wheels to bring beside the project's
own requirements are those `pip download "jax[cuda12]==0.10.2"` resolves: jax-cuda12-plugin and
jax-cuda12-pjrt 0.10.2 and the nvidia-* CUDA 12 wheels they require (cublas, cuda-cupti, cuda-nvcc,
cuda-runtime, cudnn, cufft, cusolver, cusparse, nccl, nvjitlink); docs/accelerators.md lists how to fetch them.

For each trunk shape and compute dtype it prints one JSON line per check:

- `"bench": "accel_train_step"`: the whole ILQL step (`train.make_train_step`) at `--batch` × `--seq-len`
  tokens: `step_ms`, `tokens_per_s`, `model_tflops_per_step` (the matmul FLOPs the math needs, any trunk:
  `step_flops`), `mfu` against the chip's published bf16 dense peak (`PUBLISHED_BF16_TFLOPS`, null when the
  chip is not in the table) and `mfu_measured_peak` against the matmul peak measured in this run in that dtype;
  `peak_device_bytes` (the device's own peak, or the process's RSS on a CPU) beside `plan_bytes`, the compiled
  step's memory plan (arguments + outputs + temporaries − aliased, from XLA's memory analysis);
- `"bench": "accel_decode"`: value-guided decoding (`sampler.sample`, three trunks, β = 8) and π_β decoding
  alone (the same sampler on π_β's parameters) at `--decode-batch` rows × `--new-tokens`, `tokens_per_s` each
  and `guidance_cost`, their ratio;
- `"bench": "accel_bf16_drift"` (bfloat16 only): on the batch's action states, A = min(Q̄1, Q̄2) − V from the same
  float32 parameters with float32 and with bfloat16 compute: `max_abs_diff`, `mean_abs_diff`, `mean_abs_a`.

Run it under 8 minutes on one H100 (`--steps 5`); with `--out FILE` the lines also go to a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/accelerator.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ilql_jax import losses, sampler, train  # noqa: E402
from ilql_jax.models import gpt2, ilql, llama  # noqa: E402

# Dense bfloat16 matmul peaks from the vendors' data sheets (TFLOP/s per chip, no sparsity).
PUBLISHED_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
                         "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
                         "TPU v6 lite": 918.0, "TPU v6e": 918.0}


def smollm2_135m(**overrides) -> llama.LlamaConfig:
    """SmolLM2-135M's shape: 30 layers, width 576, 9 query / 3 KV heads of 64, SwiGLU 1536, 49,152 ids, tied."""
    return llama.LlamaConfig(**{**dict(vocab_size=49152, n_positions=2048, n_embd=576, n_layer=30, n_head=9,
                                       n_kv_head=3, head_dim=64, intermediate_size=1536, rope_theta=100000.0,
                                       tie_word_embeddings=True), **overrides})


SHAPES = {
    "gpt2-small": lambda: gpt2.GPT2Config.gpt2_small(dropout=0.0),
    "smollm2-135m": smollm2_135m,
    "tiny-gpt2": lambda: gpt2.GPT2Config.tiny(dropout=0.0),
    "tiny-llama": lambda: llama.LlamaConfig.tiny(),
}


def layer_matmul_params(cfg) -> int:
    """Weights of one block that take part in a matmul (GPT-2: 12d²; Llama: q, k, v, o and the SwiGLU MLP)."""
    d = cfg.n_embd
    if isinstance(cfg, llama.LlamaConfig):
        q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        return 2 * d * q + 2 * d * kv + 3 * d * cfg.intermediate_size
    return 12 * d * d


def step_flops(model: ilql.ModelConfig, batch: dict[str, np.ndarray]) -> int:
    """Matmul FLOPs one ILQL step needs on `batch`, as `benchmarks.train_step.honest_step_flops` counts them,
    for any trunk: trunks 2·P_layer·L + 4·L·T·d_attn per position (forward; backward twice that), the Q heads
    over the vocabulary and π_β's LM head at the action states, V and the target Q̄ at one column."""
    cfg = model.trunk
    d, v, t, L = cfg.n_embd, cfg.vocab_size, batch["tokens"].shape[1], cfg.n_layer
    attn = cfg.n_head * cfg.head_dim if isinstance(cfg, llama.LlamaConfig) else d
    n, a = int(batch["tokens"].size), int(np.sum(np.asarray(batch["action_mask"]) > 0))
    trunk_fwd = (2 * layer_matmul_params(cfg) * L + 4 * L * t * attn) * n
    trunks = 3 * trunk_fwd + (0 if model.target_on_online_trunk else trunk_fwd)
    trunks += 0 if (model.shared_policy or model.frozen_policy) else 3 * trunk_fwd
    heads = 2 * 3 * 2 * (2 * d * d + 2 * d * v) * a + 6 * (2 * d * d + 2 * d) * a + 2 * 2 * (2 * d * d + 2 * d) * a
    lm_head = 0 if model.frozen_policy else 3 * 2 * d * v * a
    return trunks + heads + lm_head


def chip_peak_tflops() -> float | None:
    kind = getattr(jax.devices()[0], "device_kind", "")
    matches = [peak for name, peak in PUBLISHED_BF16_TFLOPS.items() if name.lower() in kind.lower()]
    return max(matches) if matches else None


def plan_bytes(compiled) -> int | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _device_peak() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("peak_bytes_in_use", common.peak_rss_bytes()))


def check_train_step(name: str, cfg, args) -> dict:
    model = ilql.ModelConfig(trunk=cfg)
    batch = common.reddit_like_arrays(cfg.vocab_size, args.batch, args.seq_len)
    config = train.with_action_capacity(train.StepConfig(model=model), {"batch": batch["action_mask"]})
    state = train.init_state(config, jax.random.key(0))
    compiled = train.make_train_step(config).lower(state, batch).compile()
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    t = common.time_fn(run, steps=args.steps, warmup=1)
    meter = common.PeakMeter(n=args.peak_n, dtype=jnp.dtype(cfg.dtype))
    meter.measure(3)
    flops = step_flops(model, batch)
    achieved = flops / t["best_s"]
    peak = chip_peak_tflops()
    return {"bench": "accel_train_step", "shape": name, "dtype": cfg.dtype, "batch": args.batch,
            "seq_len": args.seq_len, "step_ms": 1e3 * t["best_s"], "tokens_per_s": batch["tokens"].size / t["best_s"],
            "model_tflops_per_step": flops / 1e12, "published_bf16_tflops": peak,
            "mfu": None if peak is None else achieved / (peak * 1e12),
            "measured_peak_tflops": meter.gflops / 1e3, "mfu_measured_peak": achieved / (meter.gflops * 1e9),
            "peak_device_bytes": _device_peak(), "plan_bytes": plan_bytes(compiled),
            "loss": float(run()["loss"]), "device": common.device_info()}


def check_decode(name: str, cfg, args) -> dict:
    model = ilql.ModelConfig(trunk=cfg)
    state = train.init_state(train.StepConfig(model=model), jax.random.key(1))
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, (args.decode_batch, args.prompt_len)).astype(np.int32)
    mask = np.ones_like(prompts)
    # The first padded id is never sampled, so every row decodes all `new_tokens`.
    never = cfg.vocab_size if cfg.padded_vocab_size > cfg.vocab_size else cfg.vocab_size - 1
    scfg = sampler.SamplerConfig(max_new_tokens=args.new_tokens)
    runs = {"guided": (state.params, state.target_params), "policy_alone": ({"policy": state.params["policy"]}, {})}
    rates = {}
    for label, (online, target) in runs.items():
        def call():
            return sampler.sample(model, online, target, prompts, mask, jax.random.key(2), beta=8.0,
                                  stop_ids=(never,), pad_id=never, sampler_config=scfg).tokens
        t = common.time_fn(call, steps=args.steps, warmup=1)
        rates[label] = prompts.shape[0] * args.new_tokens / t["best_s"]
    return {"bench": "accel_decode", "shape": name, "dtype": cfg.dtype, "batch": args.decode_batch,
            "new_tokens": args.new_tokens, "tokens_per_s": rates["guided"],
            "policy_alone_tokens_per_s": rates["policy_alone"], "guidance_cost": rates["policy_alone"] / rates["guided"],
            "device": common.device_info()}


def check_bf16_drift(name: str, cfg, args) -> dict:
    """A at the action states from float32 parameters, computed in float32 and in bfloat16."""
    f32 = ilql.ModelConfig(trunk=dataclasses.replace(cfg, dtype="float32"))
    bf16 = dataclasses.replace(f32, trunk=dataclasses.replace(cfg, dtype="bfloat16"))
    state = train.init_state(train.StepConfig(model=f32), jax.random.key(3))
    batch = common.reddit_like_arrays(cfg.vocab_size, args.batch, args.seq_len)

    def advantage(model):
        def f(params, target, tokens, attention_mask):
            out = ilql.apply(model, params, target, tokens, attention_mask)
            a_t = losses.next_actions(tokens)
            q = losses.gather_actions(out.target_q_t, a_t)
            return q.astype(jnp.float32) - out.v_t.astype(jnp.float32)
        return jax.jit(f)(state.params, state.target_params, jnp.asarray(batch["tokens"]),
                          jnp.asarray(batch["attention_mask"]))

    m = np.asarray(batch["action_mask"]) > 0
    a32, a16 = np.asarray(advantage(f32))[m], np.asarray(advantage(bf16))[m]
    diff = np.abs(a16 - a32)
    return {"bench": "accel_bf16_drift", "shape": name, "actions": int(m.sum()), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "mean_abs_a": float(np.mean(np.abs(a32))),
            "device": common.device_info()}


def _emit(record: dict, out) -> None:
    common.emit(record)
    if out is not None:
        out.write(json.dumps(record) + "\n")
        out.flush()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy shapes and sizes (a CPU run; the suite's check)")
    parser.add_argument("--shapes", default=None, help="comma-separated, of " + ", ".join(SHAPES))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-n", type=int, default=8192, help="side of the square matmul that measures the peak")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.seq_len, args.decode_batch, args.new_tokens, args.steps, args.peak_n = 2, 32, 2, 4, 1, 256
    shapes = (args.shapes or ("tiny-gpt2,tiny-llama" if args.tiny else "gpt2-small,smollm2-135m")).split(",")
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    start = time.perf_counter()
    for name in shapes:
        for dtype in args.dtypes.split(","):
            cfg = dataclasses.replace(SHAPES[name](), dtype=dtype)
            _emit(check_train_step(name, cfg, args), out)
            _emit(check_decode(name, cfg, args), out)
            if dtype == "bfloat16":
                _emit(check_bf16_drift(name, cfg, args), out)
    _emit({"bench": "accel_done", "seconds": time.perf_counter() - start, "device": common.device_info(),
           "devices": len(jax.devices())}, out)
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
