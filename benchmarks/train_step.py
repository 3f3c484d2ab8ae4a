"""Throughput, MFU and memory of the whole jitted ILQL train step, beside the official PyTorch step.

    python -m benchmarks.train_step [--shapes tiny,gpt2-small,smollm2-135m] [--steps N] [--rounds R]
                                    [--peer DIR [--peer-harness DIR]] [--no-reference] [--unfrozen K] [--lora R]

One JSON object per shape: batch 8 × 128 tokens, float32, dropout 0, the
default networks (value trunk with V/Q1/Q2 heads, a target trunk with target Q
heads, a separate π_β), AdamW and the Polyak update. Each round runs our step
in a fresh process (compile, a warm-up step, then `--steps` timed steps; the
best counts) and, with `--peer`, the official `PerTokenIQL` step at the same
shape through the peer harness (its own process and venv), alternating which
goes first; the best round of each is reported. The batch has the layout the
peer harness times: `<s> parent(62) </s> comment(62) </a> </eod>` per row
(`common.reddit_like_arrays`), so both steps see the same 63 action states per
row.

Fields:
- `tokens_per_s` (best step), `tokens_per_s_median`, `step_ms`;
  with `--peer`: `peer_tokens_per_s` (their best step), `peer_tokens_per_s_median`,
  `ratio` (best over best) and `ratio_median`.
- `model_tflops_per_step`: the FLOPs the math needs (`honest_step_flops`), not
  what any implementation does; `mfu` = that ÷ best step time ÷ `peak_gflops`,
  the best float32 2048³ matmul rate measured in the same process
  (`common.PeakMeter`). `matmul_roof_s`: the step's matmuls alone, each timed at
  its own shape in the same process (`step_matmuls`, `matmul_roof`);
  `matmul_roof_mfu` = the FLOPs ÷ that time ÷ `peak_gflops`, the highest MFU
  a step made of nothing but those matmuls reaches on this machine, and
  `fraction_of_matmul_roof` = `matmul_roof_s` ÷ best step time. `full_path_tflops_per_step`: what computing every head
  at every position over the whole vocabulary costs (the reference path).
- `peak_memory_bytes`: peak RSS of the process that ran this shape (CPU; the
  heap trimmed once after setup, `common.trim_heap`) or the device's peak allocation; `peer_peak_memory_bytes` (their process's peak
  RSS) and `memory_ratio` beside it.
- `activation_bytes_per_token`: XLA's compiled memory analysis of the loss's
  value-and-gradient (arguments: the parameters and the batch; outputs: loss,
  metrics, gradients; so the state is excluded), its temporary bytes ÷ B·T.
  The same for the full-vocabulary path (every head at every position):
  `reference_activation_bytes_per_token` on the code as of `REFERENCE_REV`
  (today's step before the lean one, from `git archive` of this checkout) and
  `full_vocab_activation_bytes_per_token` on this code's trunk
  (`train.reference_loss_fn`); `activation_ratio_reference` and
  `activation_ratio_full_vocab` = ours ÷ each. Compile-only processes.
  `step_temp_bytes`: the whole train step's temporary bytes (gradients and
  AdamW's temporaries included).
- `other_cpu_load`: the share of the CPU that other processes took while our
  steps were timed; above ~0.2 every time here is contended.
- one worker with `--parts` (`python -m benchmarks.train_step --worker SHAPE --parts`):
  `forward_s` and `value_and_grad_s`, the loss's forward and its
  value-and-gradient alone (each compiled on its own, best of `--steps`), and
  `backward_s` and `update_s` (the step less the value-and-gradient: AdamW,
  the Polyak update, the metrics), where the step's time goes.
- one worker with `--profile`: one more step traced op by op (`benchmarks/op_profile.py`): `op_s`, the
  summed time of XLA's thunks, `op_share`, its split into matmul, data movement, reduction and elementwise
  work, and `top_ops`, the slowest instructions of the compiled step.

Partial training (docs/partial_training.md): `--unfrozen K` adds, per shape, a
row with only the top K blocks of every trunk trained (`num_layers_unfrozen`),
`--lora R` one with LoRA adapters of rank R (α = 16) on every projection of
every block; each is timed in the same rounds as full training (alternating
which goes first) and carries `training` ("top2", "lora8"), `speedup_vs_full`
(best step over best step), `peak_memory_ratio_vs_full` and the model FLOPs
of its own step (`honest_step_flops` counts the frozen bottom once and forward
only, and frozen weights' gradients not at all). "smollm2-135m" is SmolLM2-135M's
shape (Llama, 30 layers, width 576, vocabulary 49,152 + 6 markup ids) with random weights.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

if __package__ in (None, ""):  # run as `python benchmarks/train_step.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.environ.get("ILQL_JAX_REFERENCE_SRC"):  # a reference-memory worker: ilql_jax as of another revision
    sys.path.insert(0, os.environ["ILQL_JAX_REFERENCE_SRC"])

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common, op_profile  # noqa: E402
from ilql_jax import train  # noqa: E402
from ilql_jax.models import gpt2, ilql  # noqa: E402

BATCH, SEQ_LEN = 8, 128
SHAPES = ("tiny", "gpt2-small", "smollm2-135m")
DEFAULT_STEPS = {"tiny": 10, "gpt2-small": 2, "smollm2-135m": 2}
LORA_ALPHA = 16.0
# main just before the lean step (issue 21): "today's" activation memory is measured on its code.
REFERENCE_REV = "9507787"


def trunk_shape(shape: str):
    """The trunk config of a benchmark shape, without dropout."""
    if shape == "smollm2-135m":
        from benchmarks import memory
        from ilql_jax.models import llama

        cfg = memory.LLAMA_SHAPES[shape]
        return llama.LlamaConfig(**{**cfg, "vocab_size": cfg["vocab_size"] + memory.LLAMA_MARKUP_IDS})
    return common.gpt2_shape(shape)


def training_fields(training: str) -> dict:
    """ModelConfig fields of a row's `training`: "full", "topK" or "loraR" (benchmarks/memory.py's names)."""
    from benchmarks import memory

    fields = memory.training_fields(training)
    return {**fields, "lora_alpha": LORA_ALPHA} if "lora_rank" in fields else fields


def make_config(shape: str, batch: dict | None = None, training: str = "full") -> train.StepConfig:
    """The default networks; the action capacity fitted to `batch` as the training loop fits it."""
    config = train.StepConfig(model=ilql.ModelConfig(trunk=trunk_shape(shape), **training_fields(training)))
    if batch is not None:
        config = train.with_action_capacity(config, {"batch": batch["action_mask"]})
    return config


def synthetic_batch(cfg: gpt2.GPT2Config) -> dict[str, np.ndarray]:
    return common.reddit_like_arrays(cfg.vocab_size, BATCH, SEQ_LEN)


def _counts(batch: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """N positions, A action states, and S distinct states whose V a loss reads (the action states and their
    next states), the counts both FLOP accountings below use."""
    m = np.asarray(batch["action_mask"]) > 0
    states = sum(len(set(np.flatnonzero(row)) | set(np.asarray(nxt)[row].tolist()))
                 for row, nxt in zip(m, np.asarray(batch["next_idx"])))
    return int(np.asarray(batch["tokens"]).size), int(m.sum()), states


def honest_step_flops(model: ilql.ModelConfig, batch: dict[str, np.ndarray]) -> dict[str, int]:
    """Matmul FLOPs one ILQL step needs on `batch` (docs/algorithm.md §2-3), whatever computes it.

    With N = B·T positions, A real action states, S the distinct states whose
    V a loss reads (action states and their next states), L layers, width d,
    the *real* vocabulary V (padding is a layout choice), and fwd = 2 FLOPs per
    multiply-add, backward = 2 × forward:

      trunk forward (per position)   2·M·L + 4·L·T·h   (M: a block's matmul weights, 12·d² for
                                     GPT-2; h: the query width, d for GPT-2; attention over all T
                                     keys, as `common.transformer_flops_per_token` counts it)
      value trunk                    3 × trunk forward × N   (forward + backward)
      target trunk                   1 × trunk forward × N   (absent when on the online trunk)
      π_β trunk                      3 × trunk forward × N   (absent when shared or frozen)

    Partial training (per block): a frozen bottom block runs once, forward only,
    for all trunks; with `num_layers_unfrozen` the top blocks count as above; with
    LoRA an adapted block's frozen weights cost forward + the input gradient
    (2 × forward) in the value trunk and π_β, and each adapter (d_in → r → d_out)
    3 × 2·r·(d_in + d_out) per position there, 1 × in the target.
      online Q1, Q2 (d → 2d → V)     3 × 2·(2d² + 2d·V) × A each   (CQL reads the whole vocabulary)
      V head (d → 2d → 1)            2·(2d² + 2d) × S forward, 2 × that × A backward
      target Q̄1, Q̄2                 (2·2d² + 2·2d) × A each: the first layer, then one output column
      π_β's LM head (d → V)          3 × 2·d·V × A   (BC reads the whole vocabulary at action states)

    Not counted: embedding lookups, biases, layer norms, softmaxes, the
    optimizer, the Polyak update (not matmuls), and the backward through
    positions after a row's last read state (they reach no loss; a few per row).
    """
    from ilql_jax.models import partial

    cfg = model.trunk
    L, d, v, t = cfg.n_layer, cfg.n_embd, cfg.vocab_size, batch["tokens"].shape[1]
    n, a, states = _counts(batch)
    projections = _projections(cfg)
    block_fwd = (2 * sum(i * o for i, o in projections.values()) + 4 * t * cfg.n_head * cfg.head_dim) * n
    bottom = partial.bottom_layers(model) if partial.is_partial(model) else 0
    top = L - bottom
    spec = partial.lora_spec(model)
    # Per top block: (value, target, π_β) multiples of a forward, and the adapters' FLOPs per trunk pass.
    train_mult = 2 if spec is not None else 3
    adapters = 0 if spec is None else 2 * spec.rank * sum(i + o for name, (i, o) in projections.items()
                                                          if name in spec.targets) * n * top
    flops = {"frozen_bottom": bottom * block_fwd,
             "value_trunk": train_mult * top * block_fwd + 3 * adapters,
             "target_trunk": 0 if model.target_on_online_trunk else top * block_fwd + adapters,
             "policy_trunk": 0 if (model.shared_policy or model.frozen_policy) else
             train_mult * top * block_fwd + 3 * adapters,
             "q_heads": 2 * 3 * 2 * (2 * d * d + 2 * d * v) * a,
             "v_head": 2 * (2 * d * d + 2 * d) * states + 4 * (2 * d * d + 2 * d) * a,
             "target_q_heads": 2 * (2 * 2 * d * d + 2 * 2 * d) * a,
             "policy_lm_head": 0 if model.frozen_policy else 3 * 2 * d * v * a}
    flops["total"] = sum(flops.values())
    return flops


def step_matmuls(model: ilql.ModelConfig, batch: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], int]] | None:
    """The matmuls `honest_step_flops` counts, as (shape, count): shape (m, k, n) is an [m, k] × [k, n]
    product, (b, m, k, n) a batch of b of them (attention, per query head); 2·b·m·k·n FLOPs each.

    A dense layer's forward at N rows is (N, d_in, d_out), its backward the input gradient (N, d_out, d_in)
    and the weight gradient (d_in, N, d_out); attention's are the scores (B·H, T, h, T) and the weighted
    sum (B·H, T, T, h), each with two backward products of the same size. So the FLOPs sum to
    `honest_step_flops(...)["total"]` (a test checks it). None with LoRA (its adapters are not listed).
    """
    from ilql_jax.models import partial

    if partial.lora_spec(model) is not None:
        return None
    cfg = model.trunk
    d, v, b, t = cfg.n_embd, cfg.vocab_size, *batch["tokens"].shape
    n, a, states = _counts(batch)
    out: list[tuple[tuple[int, ...], int]] = []

    def dense(rows: int, d_in: int, d_out: int, count: int, backward: bool) -> None:
        out.append(((rows, d_in, d_out), count))
        if backward:
            out.extend([((rows, d_out, d_in), count), ((d_in, rows, d_out), count)])

    def blocks(layers: int, count: int, backward: bool) -> None:
        for d_in, d_out in _projections(cfg).values():
            dense(n, d_in, d_out, layers * count, backward)
        bh, h = b * cfg.n_head, cfg.head_dim
        out.append(((bh, t, h, t), layers * count * (3 if backward else 1)))
        out.append(((bh, t, t, h), layers * count * (3 if backward else 1)))

    bottom = partial.bottom_layers(model) if partial.is_partial(model) else 0
    top = cfg.n_layer - bottom
    if bottom:
        blocks(bottom, 1, backward=False)
    blocks(top, 1, backward=True)  # value trunk
    if not model.target_on_online_trunk:
        blocks(top, 1, backward=False)
    if not (model.shared_policy or model.frozen_policy):
        blocks(top, 1, backward=True)
    dense(a, d, 2 * d, 2, backward=True)  # Q1, Q2
    dense(a, 2 * d, v, 2, backward=True)
    dense(states, d, 2 * d, 1, backward=False)  # V: forward at every read state, backward at the actions
    dense(states, 2 * d, 1, 1, backward=False)
    out.extend([((a, 2 * d, d), 1), ((d, a, 2 * d), 1), ((a, 1, 2 * d), 1), ((2 * d, a, 1), 1)])
    dense(a, d, 2 * d, 2, backward=False)  # target Q̄1, Q̄2: the first layer, then one output column
    dense(a, 2 * d, 1, 2, backward=False)
    if not model.frozen_policy:
        dense(a, d, v, 1, backward=True)  # π_β's LM head
    return out


def matmul_roof(model: ilql.ModelConfig, batch: dict[str, np.ndarray], repeats: int = 3) -> dict | None:
    """The step's matmuls alone, each timed at its own shape (`step_matmuls`; float32, jitted, best of
    `repeats`): `matmul_roof_s` = Σ count × time, what a step doing nothing but its matmuls at this
    machine's rate for those shapes would take. XLA picks each product's operand layouts here, as it
    does (with transposes) inside the step, so this is the step's roof on this CPU, not a bound proven
    for every layout."""
    import jax.numpy as jnp

    matmuls = step_matmuls(model, batch)
    if matmuls is None:
        return None
    best: dict[tuple[int, ...], float] = {}
    for shape, _ in matmuls:
        if shape in best:
            continue
        *lead, k, n = shape
        x = jax.random.normal(jax.random.key(0), (*lead, k), jnp.float32)
        w = jax.random.normal(jax.random.key(1), (*lead[:-1], k, n), jnp.float32)
        f = jax.jit(jnp.matmul)
        best[shape] = common.time_fn(lambda: f(x, w), steps=repeats, warmup=1)["best_s"]
        del x, w
    roof_s = sum(count * best[shape] for shape, count in matmuls)
    return {"matmul_roof_s": roof_s, "matmul_roof_shapes": len(best)}


def _projections(cfg) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each matmul of a block, by the block-relative names `LORA_PROJECTIONS` uses."""
    from ilql_jax.models import llama

    d = cfg.n_embd
    if isinstance(cfg, llama.LlamaConfig):
        q, kv, ffn = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.intermediate_size
        return {"self_attn.q_proj": (d, q), "self_attn.k_proj": (d, kv), "self_attn.v_proj": (d, kv),
                "self_attn.o_proj": (q, d), "mlp.gate_proj": (d, ffn), "mlp.up_proj": (d, ffn),
                "mlp.down_proj": (ffn, d)}
    return {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}


def full_path_flops(model: ilql.ModelConfig, batch: dict[str, np.ndarray]) -> int:
    """Matmul FLOPs of the reference path: every head, and every trunk's LM head, over the padded
    vocabulary at every position (the LM logits of the value and target trunks are dropped by XLA)."""
    cfg = model.trunk
    L, d, vp, t = cfg.n_layer, cfg.n_embd, cfg.padded_vocab_size, batch["tokens"].shape[1]
    n = int(np.asarray(batch["tokens"]).size)
    body, attn = 12 * L * d * d, 4 * L * t * d
    value = 6 * body + 3 * attn + 6 * (3 * d * 2 * d + 2 * d + 2 * 2 * d * vp)
    target = 2 * body + attn + 2 * 2 * (d * 2 * d + 2 * d * vp)
    policy = 6 * (body + vp * d) + 3 * attn
    return (value + target + policy) * n


def _grad_program(config: train.StepConfig, state, batch, loss_fn):
    """The loss's value-and-gradient w.r.t. the trained parameters, compiled (not run)."""
    def f(trained, params, target, batch):
        return jax.value_and_grad(lambda p: loss_fn(config, {**params, **p}, target, batch, None),
                                  has_aux=True)(trained)
    trained = train.trained_params(config, state.params)
    frozen = {k: v for k, v in state.params.items() if k not in trained}
    return jax.jit(f).lower(trained, frozen, state.target_params, batch).compile()


def step_parts(config: train.StepConfig, state, batch, steps: int) -> dict[str, float]:
    """Where a step's time goes, coarsely: the loss's forward alone, its value-and-gradient, and (from the caller)
    the whole step, each a separately compiled program timed best of `steps`. The differences are the backward
    pass and the update (AdamW over the trained parameters, the Polyak update of the target, the metrics)."""
    trained = train.trained_params(config, state.params)
    args = (trained, {k: v for k, v in state.params.items() if k not in trained}, state.target_params, batch)
    fwd = jax.jit(lambda p, frozen, target, batch: train.loss_fn(config, {**frozen, **p}, target, batch, None)[0]
                  ).lower(*args).compile()
    grad = _grad_program(config, state, batch, train.loss_fn)
    return {"forward_s": common.time_fn(lambda: fwd(*args), steps=steps)["best_s"],
            "value_and_grad_s": common.time_fn(lambda: grad(*args), steps=steps)["best_s"]}


def _temp_bytes(compiled) -> int | None:
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def worker(shape: str, steps: int, mode: str, tune_malloc: bool = True, training: str = "full",
           parts: bool = False, profile: bool = False) -> dict:
    """One shape in this process: `mode` "time" (compile, run, time, memory) or "reference-memory"
    (only compile the reference path's value-and-gradient and report its temporary bytes)."""
    malloc_tuned = tune_malloc and common.tune_malloc()  # before the first JAX computation
    batch = synthetic_batch(trunk_shape(shape))
    tokens = BATCH * SEQ_LEN
    if mode in ("reference-memory", "full-vocab-memory"):
        # reference-memory runs on another revision's ilql_jax (ILQL_JAX_REFERENCE_SRC), whose loss_fn is the
        # full-vocabulary path; full-vocab-memory on this one's reference_loss_fn (the same trunk).
        config = train.StepConfig(model=ilql.ModelConfig(trunk=trunk_shape(shape)))
        loss_fn = train.reference_loss_fn if mode == "full-vocab-memory" else train.loss_fn
        state = jax.eval_shape(lambda: train.init_state(config, jax.random.key(0)))
        temp = _temp_bytes(_grad_program(config, state, batch, loss_fn))
        return {"bench": mode, "shape": shape, "activation_bytes_per_token": None if temp is None else temp / tokens}
    config = make_config(shape, batch, training)
    meter = common.PeakMeter()
    meter.measure(5)
    state = train.init_state(config, jax.random.key(0))
    abstract_state = jax.eval_shape(lambda: state)
    step = train.make_train_step(config)
    compiled = step.lower(state, batch).compile()
    common.trim_heap()  # setup's freed temporaries (see common.trim_heap): the peak below is the step's
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    holder = {"state": state}

    def run():
        holder["state"], holder["metrics"] = compiled(holder["state"], batch)
        return holder["metrics"]

    with common.OtherLoad() as load:
        # The peak is measured before and after, not between steps: with malloc tuned (never trimmed, never
        # mmapped) its 16 MB outputs would land in the step's freed buffer and push the next one up the heap.
        t = common.time_fn(run, steps=steps, warmup=1)
    meter.measure(5)
    peak_memory = common.peak_memory_bytes()
    # Compiled after the timed steps, so that its compilation's memory cannot raise the peak above.
    activation = _temp_bytes(_grad_program(config, abstract_state, batch, train.loss_fn))
    flops = honest_step_flops(config.model, batch)
    achieved = flops["total"] / t["best_s"] / 1e9
    roof = matmul_roof(config.model, batch) or {}
    if parts:
        roof.update(step_parts(config, holder["state"], batch, steps))
        roof["backward_s"] = roof["value_and_grad_s"] - roof["forward_s"]
        roof["update_s"] = t["best_s"] - roof["value_and_grad_s"]
    if profile:
        roof.update(op_profile.profile(run, compiled.as_text()))
    if roof:
        roof["matmul_roof_mfu"] = flops["total"] / roof["matmul_roof_s"] / 1e9 / meter.gflops
        roof["fraction_of_matmul_roof"] = roof["matmul_roof_s"] / t["best_s"]
    return {**roof,
        "bench": "train_step", "shape": shape, "training": training, "tokens_per_s": tokens / t["best_s"],
        "tokens_per_s_median": tokens / t["median_s"], "step_ms": 1e3 * t["best_s"],
        "mfu": achieved / meter.gflops, "achieved_gflops": achieved, "peak_gflops": meter.gflops,
        "model_tflops_per_step": flops["total"] / 1e12,
        "model_tflops_by_part": {k: v / 1e12 for k, v in flops.items() if k != "total"},
        "full_path_tflops_per_step": full_path_flops(config.model, batch) / 1e12,
        "activation_bytes_per_token": None if activation is None else activation / tokens,
        "step_temp_bytes": _temp_bytes(compiled),
        "peak_memory_bytes": peak_memory,
        "timed_steps": t["n"], "other_cpu_load": load.fraction, "batch": BATCH, "seq_len": SEQ_LEN,
        "actions": int(np.sum(batch["action_mask"])), "action_capacity": config.action_capacity,
        "dtype": config.model.trunk.dtype, "dropout": 0.0, "loss": float(holder["metrics"]["loss"]),
        "malloc_tuned": malloc_tuned, "device": common.device_info(),
    }


def _peer_args(cfg: gpt2.GPT2Config, steps: int) -> list[str]:
    # Their --vocab is the base vocabulary; they add 6 markup tokens, so ours = theirs in total.
    return ["--preset", "custom", "--n-layer", str(cfg.n_layer), "--n-embd", str(cfg.n_embd),
            "--n-head", str(cfg.n_head), "--vocab", str(cfg.vocab_size - 6), "-B", str(BATCH), "-T", str(SEQ_LEN),
            "--steps", str(steps), "--slow-steps", str(steps), "--skip-infer"]


def bench_shape(shape: str, steps: int, rounds: int, peer: common.Peer | None, reference: bool,
                partial: tuple[str, ...] = ()) -> dict:
    def ours(training: str = "full"):
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", shape, "--steps", str(steps),
               "--training", training]
        return [r for r in common.run_json_lines(cmd, env=common.worker_env()) if r.get("bench") == "train_step"][0]

    runs = {"ours": ours}
    for training in partial:  # timed in the same rounds as full training
        runs[training] = functools.partial(ours, training)
    if peer is not None:
        runs["peer"] = lambda: [r for r in peer.run("peer_official_step.py", _peer_args(common.gpt2_shape(shape), steps))
                                if r.get("kind") == "train_step"][0]
    results = common.alternate(rounds, runs)
    best = max(results["ours"], key=lambda r: r["tokens_per_s"])
    rec = dict(best)
    rec["rounds"] = rounds
    rec["tokens_per_s_rounds"] = [r["tokens_per_s"] for r in results["ours"]]
    rec["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in results["ours"])
    rec["partial_rows"] = []
    for training in partial:
        row = dict(max(results[training], key=lambda r: r["tokens_per_s"]))
        row.update(rounds=rounds, tokens_per_s_rounds=[r["tokens_per_s"] for r in results[training]],
                   peak_memory_bytes=max(r["peak_memory_bytes"] for r in results[training]),
                   speedup_vs_full=row["tokens_per_s"] / rec["tokens_per_s"])
        row["peak_memory_ratio_vs_full"] = row["peak_memory_bytes"] / rec["peak_memory_bytes"]
        rec["partial_rows"].append(row)
    if peer is not None:
        rec.update(common.peer_fields(rec, results["peer"]))
        theirs = max(results["peer"], key=lambda r: r["tokens_per_s_best"])
        rec["peer_est_tflops_per_step"] = theirs["est_gflop"] / 1e3
        rec["memory_ratio"] = rec["peak_memory_bytes"] / rec["peer_peak_memory_bytes"]
    if reference:
        rec.update(reference_memory(shape))
    return rec


def reference_memory(shape: str) -> dict:
    """Activation memory per token of the full-vocabulary path: on this code's trunk
    (`full_vocab_activation_bytes_per_token`) and as of REFERENCE_REV, today's step before
    this lean one (`reference_activation_bytes_per_token`, from `git archive` of this checkout)."""
    import shutil
    import subprocess
    import tempfile
    out = {}
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", shape, "--mode", "full-vocab-memory"]
    out["full_vocab_activation_bytes_per_token"] = common.run_json_lines(
        cmd, env=common.worker_env())[0]["activation_bytes_per_token"]
    tree = tempfile.mkdtemp(prefix="ilql_jax_reference_")
    try:
        archive = subprocess.run(["git", "-C", common.REPO_ROOT, "archive", REFERENCE_REV, "ilql_jax"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        env = {**common.worker_env(), "ILQL_JAX_REFERENCE_SRC": tree}
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", shape, "--mode", "reference-memory"]
        out["reference_activation_bytes_per_token"] = common.run_json_lines(cmd, env=env)[0][
            "activation_bytes_per_token"]
        out["reference_rev"] = REFERENCE_REV
    except (subprocess.CalledProcessError, RuntimeError) as e:
        print(f"reference memory at {REFERENCE_REV} not measured: {e}", file=sys.stderr)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return out


def _ratios(rec: dict) -> None:
    ours = rec.get("activation_bytes_per_token")
    for key in ("reference", "full_vocab"):
        ref = rec.get(f"{key}_activation_bytes_per_token")
        if ours and ref:
            rec[f"activation_ratio_{key}"] = ours / ref
    return rec


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,gpt2-small", help=f"from {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per round (default: tiny 10, gpt2-small 2); the peer runs as many")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours (and the peer's)")
    parser.add_argument("--peer", metavar="DIR", help="the official code prepared by the peer harness's setup.sh "
                        "(holds ilql/ and venv/): time it too, at the same shapes")
    parser.add_argument("--peer-harness", metavar="DIR", help="folder of peer_official_step.py (default: found)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip compiling the reference (full-vocabulary) path for its activation memory")
    parser.add_argument("--no-tune-malloc", action="store_true", help="leave glibc's malloc as it is "
                        "(see common.tune_malloc)")
    parser.add_argument("--unfrozen", type=int, metavar="K",
                        help="also time the step with only the top K blocks trained (num_layers_unfrozen=K)")
    parser.add_argument("--lora", type=int, metavar="R", help="also time the step with LoRA adapters of rank R")
    parser.add_argument("--parts", action="store_true", help="with --worker: also time the loss's forward and its "
                        "value-and-gradient alone (forward_s, value_and_grad_s, backward_s, update_s)")
    parser.add_argument("--profile", action="store_true", help="with --worker: also trace one step and report "
                        "where its time goes by XLA op (op_s, op_share, top_ops; benchmarks/op_profile.py)")
    parser.add_argument("--training", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="time", choices=("time", "reference-memory", "full-vocab-memory"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile and not args.worker:
        parser.error("--profile traces one worker: add --worker SHAPE")
    if args.parts and not args.worker:
        parser.error("--parts times one worker's passes: add --worker SHAPE")
    if args.worker:
        common.emit(worker(args.worker, args.steps or DEFAULT_STEPS[args.worker], args.mode, not args.no_tune_malloc,
                           args.training, args.parts, args.profile))
        return
    shapes = common.parse_shapes(parser, args.shapes, SHAPES)
    peer = common.Peer(args.peer, args.peer_harness) if args.peer else None
    partial = tuple(t for t, on in ((f"top{args.unfrozen}", args.unfrozen is not None),
                                    (f"lora{args.lora}", args.lora is not None)) if on)
    for t in partial:
        try:
            make_config(shapes[0], training=t)
        except ValueError as e:
            parser.error(str(e))
    for s in shapes:
        gpt2_shape = s != "smollm2-135m"  # the peer and the reference revision know GPT-2 shapes only
        rec = bench_shape(s, args.steps or DEFAULT_STEPS[s], args.rounds, peer if gpt2_shape else None,
                          not args.no_reference and gpt2_shape, partial)
        rows = rec.pop("partial_rows")
        _ratios(rec)
        common.emit(rec)
        for row in rows:
            common.emit(row)


if __name__ == "__main__":
    main()
