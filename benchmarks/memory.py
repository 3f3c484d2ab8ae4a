"""Per-device memory of the ILQL train step and the sampler's decode step, from the compiled programs.

    python -m benchmarks.memory [--models gpt2-small,gpt2-medium,gpt2-large,gpt2-xl,llama-1b,smollm2-135m,smollm2-1.7b]
        [--devices 1,8,64] [--rules dp,fsdp] [--dtypes float32,bfloat16] [--remat off,on] [--batch-per-device 8]
        [--seq-len 128] [--action-capacity K] [--training full,top2,lora8] [--breakdown] [--jobs N] [--no-check]
        [--full-depth] [--xla-cpu-defaults]
    python -m benchmarks.memory --markdown OUT.jsonl [--models gpt2-xl]   # the tables of docs/accelerators.md
    python -m benchmarks.memory --partial-rows        # SmolLM2-135M/1.7B, Llama-3.2-1B: full, top-2, LoRA r=8

Nothing is allocated: every program is lowered and compiled ahead of time for
fake CPU devices (`--xla_force_host_platform_device_count=64`) with the state,
batch and decode state given as abstract arrays carrying their shardings, and
the figures come from XLA's memory analysis of the compiled (per-device SPMD)
program: `bytes_per_device` = arguments + outputs + temporaries − aliased
(the train step donates the state, so its outputs alias it).

One JSON line per case:

- `"bench": "memory"`, `program` ("train": the full ILQL step, value trunk with
  V/Q1/Q2 heads, target trunk and Q̄ heads, π_β, AdamW, Polyak; "decode": one
  `sampler.step_state` of the three trunks over a KV cache of `seq_len` slots),
  `model`, `devices`, `rules` ("dp": parameters replicated; "fsdp": parameters,
  targets and Adam moments split over all devices, `MeshConfig(fsdp=n,
  fsdp_params=True)`), `dtype` (compute; parameters are float32), `remat`
  (train only), `batch_per_device`, `seq_len`, `tokens_per_device`,
  `action_capacity` (train: the action slots per row at which the step runs
  the vocabulary-sized heads; by default every position, the most it can need;
  `--action-capacity` for your data's, which the loop fits);
- `bytes_per_device` (and `gib_per_device`), its parts `argument_bytes`,
  `output_bytes`, `temp_bytes`, `alias_bytes`; `state_bytes_per_device`: this
  device's shards of the train state (params, target, Adam moments; for
  decode, of the parameters), counted exactly from the shapes;
- `fits_16gib`, `fits_80gib`, `fits_141gib`: bytes_per_device ≤ that many GiB;
- `derived_from_depths`: see below (null when compiled at full depth);
- `training` (train and decode): "full", "topK" (`num_layers_unfrozen=K`: the
  top K blocks of every trunk train, the rest is stored once and run once,
  docs/partial_training.md) or "loraR" (LoRA adapters of rank R, α = 16, on
  every attention and MLP projection of every block; every trunk weight frozen);
- what the train step needs, this device's share, exact from the shapes:
  `param_bytes` (online and target parameters, the shared frozen part once),
  of which `frozen_bytes`, `gradient_bytes` (the trained parameters'),
  `optimizer_bytes` (Adam's moments and counters); with `--breakdown` also
  `activation_bytes` (the temporary bytes of the compiled value-and-gradient of
  the loss alone, depth-extrapolated like the rest), `needed_bytes` (the sum of
  the four) and `peak_over_needed` = bytes_per_device / needed_bytes: near 1 when
  the step holds nothing beyond those (no second copy of a weight, no
  optimizer temporaries the size of the state).

Then, for GPT-2 XL, one `"bench": "memory_budget"` line per (devices, rules,
dtype, remat) train case: the largest batch per device (and tokens per device,
at `seq_len`) whose step fits 16, 80 and 141 GiB.

How it stays within minutes on two cores. Compiling the full-depth programs
takes minutes each (GPT-2 XL: 48 unrolled layers × three trunks, 2.5 to 9
minutes on a shared 2-core CPU), and there are 144 cases. Per-device memory
grows about linearly with the depth (the state and each layer's saved
activations and gradients grow by the same amount per layer), so each case is
compiled at 3 and 6 layers (same width, vocabulary, batch and mesh) and its
four byte counts are extrapolated linearly to the real depth;
`state_bytes_per_device` is exact. Checked against full-depth compiles: GPT-2
small, 8 devices, FSDP, bfloat16, remat 1.2% under (the `"memory_check"` line
every run ends with; `--no-check` skips it), and GPT-2 XL on 64 devices (see
docs/accelerators.md, 3.3); before the lean step, from 2 and 3 layers XL came
out 17% under and from 3 and 6 3.2% under, hence 3 and 6. The XL budgets fit bytes through `--batch-per-device`
and 4× it (each from the same two depths), so they carry the depth
extrapolation's error twice. Programs whose per-device figures cannot differ
are compiled once (`compiled_key`): on one device "dp" is "fsdp"; a
data-parallel decode step is the one-device program; a data-parallel train
step on 64 devices is the 8-device one. Compilation uses
`xla_backend_optimization_level=0` (LLVM's optimisation, which the memory
analysis does not depend on: identical figures, half the time), and cases run
in `--jobs` processes (default: one per core). `--full-depth` compiles every
case at its real depth instead, at hours of CPU.

XLA:CPU flags. By default XLA:CPU combines every gradient all-reduce of the
step into one (keeping every layer's whole gradient alive until the end) and
schedules for concurrency rather than memory; the accelerator compilers
reduce-scatter gradients and schedule under a memory limit. This benchmark
disables both (`--xla_disable_hlo_passes=cpu-all-reduce-combiner
--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`): before the
lean step, GPT-2 XL on 64 devices, FSDP, bfloat16, remat, compiled at full
depth, needed 7.48 GiB per device with them and 32.9 GiB with the defaults
(`--xla-cpu-defaults`). Other caveats (docs/accelerators.md, 3.3): XLA:CPU
hoists rematerialised recomputation, so remat hardly lowers the activations
it keeps, and it computes many bfloat16 operations in float32, so its figures
err on the side of caution; buffer assignment differs between backends, so
treat them as a plan (leave ~10% headroom), not as a guarantee for TPU or GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/memory.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2 ** 30
BUDGETS_GIB = (16, 80, 141)
MAX_DEVICES = 64
# (n_layer, n_embd, n_head) of the four GPT-2 sizes; vocabulary 50257 (padded to 50304), 1024 positions.
# "llama-1b": Llama 3.2 1B's shape (`LlamaConfig.llama_3_2_1b`: 8 KV heads, SwiGLU 8192, tied embeddings),
# its 128256 ids plus ILQL's 6 markup ids (padded to 128384).
# "smollm2-135m" / "smollm2-1.7b": HuggingFaceTB/SmolLM2-135M(-Instruct) and -1.7B's shapes (Llama architecture,
# vocabulary 49,152, tied embeddings; `LLAMA_SHAPES`), also with ILQL's 6 markup ids added.
MODELS = {"gpt2-small": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
          "gpt2-xl": (48, 1600, 25), "llama-1b": (16, 2048, 32), "smollm2-135m": (30, 576, 9),
          "smollm2-1.7b": (24, 2048, 32)}
LLAMA_SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, n_positions=8192, n_embd=576, n_layer=30, n_head=9, n_kv_head=3,
                         head_dim=64, intermediate_size=1536, rms_norm_eps=1e-5, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "smollm2-1.7b": dict(vocab_size=49152, n_positions=8192, n_embd=2048, n_layer=24, n_head=32, n_kv_head=32,
                         head_dim=64, intermediate_size=8192, rms_norm_eps=1e-5, rope_theta=130000.0,
                         tie_word_embeddings=True),
}
LLAMA_MARKUP_IDS = 6
PARTIAL_ROWS = dict(models=["smollm2-135m", "smollm2-1.7b", "llama-1b"], training=["full", "top2", "lora8"],
                    devices=[1, 8])
LORA_ALPHA = 16.0
DEPTHS = (3, 6)  # the two depths every case is compiled at (see the module docstring)
XLA_CPU_MEMORY_FLAGS = ("--xla_disable_hlo_passes=cpu-all-reduce-combiner "
                        "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED")
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
FIELDS = ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes")
BUDGET_BATCH_FACTOR = 4  # XL budgets: bytes fitted through batch_per_device and 4x it


@dataclasses.dataclass(frozen=True)
class Case:
    """One program on one mesh; `rules` is "dp" on one device (the layouts coincide)."""

    program: str  # "train" | "decode"
    model: str
    devices: int
    rules: str  # "dp" | "fsdp"
    dtype: str
    remat: bool
    batch_per_device: int
    seq_len: int
    dropout: float = 0.0
    action_capacity: int | None = None  # action slots per row of the train step; None: every position
    training: str = "full"  # "full", "topK" (num_layers_unfrozen=K) or "loraR" (LoRA rank R on every block)

    def at(self, **changes) -> "Case":
        return dataclasses.replace(self, **changes)


def training_fields(training: str) -> dict[str, int]:
    """The `ModelConfig` fields a `--training` value names: {} (full), num_layers_unfrozen or lora_rank."""
    for prefix, field in (("top", "num_layers_unfrozen"), ("lora", "lora_rank")):
        if training.startswith(prefix) and training[len(prefix):].isdigit():
            return {field: int(training[len(prefix):])}
    if training != "full":
        raise ValueError(f"--training {training!r}: expected full, topK or loraR (K, R integers)")
    return {}


def trunk_config(case: Case, n_layer: int | None = None):
    from ilql_jax.models import gpt2, llama

    layers, width, heads = MODELS[case.model]
    if case.model in LLAMA_SHAPES:
        shape = LLAMA_SHAPES[case.model]
        return llama.LlamaConfig(**{**shape, "n_layer": layers if n_layer is None else n_layer,
                                    "vocab_size": shape["vocab_size"] + LLAMA_MARKUP_IDS, "dtype": case.dtype,
                                    "remat": case.remat, "dropout": case.dropout})
    if case.model.startswith("llama"):
        base = llama.LlamaConfig.llama_3_2_1b()
        return llama.LlamaConfig.llama_3_2_1b(n_layer=layers if n_layer is None else n_layer, dtype=case.dtype,
                                              remat=case.remat, dropout=case.dropout,
                                              vocab_size=base.vocab_size + LLAMA_MARKUP_IDS)
    return gpt2.GPT2Config(n_layer=layers if n_layer is None else n_layer, n_embd=width, n_head=heads,
                           dtype=case.dtype, remat=case.remat, dropout=case.dropout)


def _mesh(case: Case):
    import jax

    from ilql_jax import sharding

    fsdp = case.rules == "fsdp"
    cfg = sharding.MeshConfig(data=1 if fsdp else case.devices, fsdp=case.devices if fsdp else 1, fsdp_params=fsdp)
    return sharding.make_mesh(cfg, jax.devices()[:case.devices]), sharding.logical_rules(cfg)


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _step_config(case: Case, n_layer: int | None = None):
    from ilql_jax import train
    from ilql_jax.models import ilql

    extra = training_fields(case.training)
    if "lora_rank" in extra:
        extra["lora_alpha"] = LORA_ALPHA
    return train.StepConfig(model=ilql.ModelConfig(trunk=trunk_config(case, n_layer), **extra),
                            action_capacity=case.action_capacity)


def _train_inputs(case: Case, n_layer: int):
    """(step config, mesh, state shardings, abstract sharded state, abstract sharded batch) of a train case."""
    import jax

    from ilql_jax import sharding, train
    from ilql_jax.data.batch import DTYPES, Batch

    cfg = _step_config(case, n_layer)
    mesh, rules = _mesh(case)
    abstract = train.abstract_state(cfg)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    rows = case.batch_per_device * case.devices
    batch_sharding = sharding.batch_sharding(mesh)
    batch = Batch(*(jax.ShapeDtypeStruct((rows, case.seq_len), dtype, sharding=batch_sharding) for dtype in DTYPES))
    return cfg, mesh, shardings, _abstract(abstract, shardings), batch


def lower_train(case: Case, n_layer: int):
    """The sharded ILQL train step, lowered for abstract inputs."""
    from ilql_jax import train

    cfg, mesh, shardings, state, batch = _train_inputs(case, n_layer)
    return train.make_sharded_train_step(cfg, mesh, shardings).lower(state, batch)


def lower_gradient(case: Case, n_layer: int):
    """The loss's value and gradient w.r.t. the trained parameters alone (no optimizer, no target update), on
    the train case's mesh: its temporary bytes are the activations the step keeps and works in."""
    import jax

    from ilql_jax import sharding, train

    cfg, mesh, shardings, state, batch = _train_inputs(case, n_layer)
    trained = train.trained_params(cfg, state.params)

    def grad(trained, params, target, batch):
        with sharding.activation_layout(mesh):
            loss = lambda p: train.loss_fn(cfg, {**params, **p}, target, batch, None)
            return jax.value_and_grad(loss, has_aux=True)(trained)

    grad_shardings = jax.tree.map(lambda x: x.sharding, trained)
    return jax.jit(grad, out_shardings=((None, None), grad_shardings)).lower(trained, state.params,
                                                                             state.target_params, batch)


def decode_lengths(seq_len: int) -> tuple[int, int]:
    """(prompt length, new tokens) of a decode case whose cache holds `seq_len` slots."""
    new = min(32, seq_len // 2)
    return seq_len - new, new


def lower_decode(case: Case, n_layer: int):
    """One `sampler.step_state` (three trunks, Q̄ and V heads, over a cache of `seq_len` slots), lowered."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ilql_jax import sampler, sharding, train
    from ilql_jax.models import ilql

    cfg = _step_config(case, n_layer)
    mesh, rules = _mesh(case)
    abstract = train.abstract_state(cfg)
    online = sharding.state_shardings(abstract.params, mesh, rules)
    target = sharding.state_shardings(abstract.target_params, mesh, rules)
    online, target = _abstract(abstract.params, online), _abstract(abstract.target_params, target)
    # Partial training: whole trunks (adapters merged) and the shared bottom, as `sampler.sample` decodes.
    shared = sampler.shared_layers(cfg.model, abstract.params)
    whole = lambda o, t: ilql.materialize(cfg.model, o, t)
    prompt, new = decode_lengths(case.seq_len)
    sc = sampler.SamplerConfig(max_new_tokens=new, mode="sample", prompt_buckets=(prompt,))
    rows = case.batch_per_device * case.devices
    tokens = jax.ShapeDtypeStruct((rows, prompt), jnp.int32)
    state = jax.eval_shape(lambda o, t, p, k: sampler.init_state(cfg.model, sc, *whole(o, t), p, p, k, shared=shared),
                           online, target, tokens, jax.random.key(0))
    by_row = NamedSharding(mesh, P(sharding.BATCH_AXES))
    replicated = NamedSharding(mesh, P())
    state_shardings = jax.tree.map(lambda x: by_row if x.ndim and x.shape[0] == rows else replicated, state)
    knobs = sampler.make_knobs(beta=1.0, stop_ids=(0,), pad_id=1)

    def step(online, target, knobs, state):
        with sharding.activation_layout(mesh):
            return sampler.step_state(cfg.model, sc, *whole(online, target), knobs, state, shared=shared)

    step = jax.jit(step, in_shardings=(jax.tree.map(lambda x: x.sharding, online),
                                       jax.tree.map(lambda x: x.sharding, target), replicated, state_shardings),
                   out_shardings=state_shardings, donate_argnums=3)
    return step.lower(online, target, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), knobs),
                      _abstract(state, state_shardings))


def compile_case(case: Case, n_layer: int) -> dict[str, Any]:
    """Memory analysis of one program at `n_layer` layers (runs in a worker process)."""
    t0 = time.perf_counter()
    lowered = {"train": lower_train, "decode": lower_decode, "gradient": lower_gradient}[case.program](case, n_layer)
    stats = lowered.compile(compiler_options=COMPILER_OPTIONS).memory_analysis()
    return {"argument_bytes": int(stats.argument_size_in_bytes), "output_bytes": int(stats.output_size_in_bytes),
            "temp_bytes": int(stats.temp_size_in_bytes), "alias_bytes": int(stats.alias_size_in_bytes),
            "compile_s": time.perf_counter() - t0}


def state_bytes_per_device(case: Case) -> int:
    """Bytes of this device's shards of the train state (decode: of the online and target parameters)."""
    import jax
    import numpy as np

    from ilql_jax import sharding, train

    abstract = train.abstract_state(_step_config(case))
    mesh, rules = _mesh(case)
    tree = abstract if case.program == "train" else (abstract.params, abstract.target_params)
    shardings = sharding.state_shardings(tree, mesh, rules)
    return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def state_breakdown(step_config, mesh, rules) -> dict[str, int]:
    """This device's bytes of what a train step holds besides activations, exact from the shapes:
    `param_bytes` (online and target parameters; a shared frozen part once), of which `frozen_bytes`,
    `gradient_bytes` (one gradient per trained parameter) and `optimizer_bytes` (Adam's moments, counters)."""
    import jax
    import numpy as np

    from ilql_jax import sharding, train
    from ilql_jax.models import partial

    abstract = train.abstract_state(step_config)
    shardings = sharding.state_shardings(abstract, mesh, rules)

    def local(tree, tree_shardings) -> int:
        return int(sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                       for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(tree_shardings))))

    params = (abstract.params, abstract.target_params)
    trained = train.trained_params(step_config, abstract.params)
    return {"param_bytes": local(params, (shardings.params, shardings.target_params)),
            "frozen_bytes": local(abstract.params.get(partial.FROZEN, {}),
                                  shardings.params.get(partial.FROZEN, {})),
            "gradient_bytes": local(trained, train.trained_params(step_config, shardings.params)),
            "optimizer_bytes": local(abstract.opt_state, shardings.opt_state)}


def needed(breakdown: dict[str, int], activation_bytes: float) -> dict[str, float]:
    """`breakdown` with the activations, their sum `needed_bytes` (what the step cannot do without)."""
    out = {**breakdown, "activation_bytes": activation_bytes}
    out["needed_bytes"] = sum(out[k] for k in ("param_bytes", "gradient_bytes", "optimizer_bytes",
                                               "activation_bytes"))
    return out


def total(parts: dict[str, float]) -> float:
    return parts["argument_bytes"] + parts["output_bytes"] + parts["temp_bytes"] - parts["alias_bytes"]


def extrapolate(shallow: dict[int, dict], depth: int) -> dict[str, float]:
    """Each byte count, linear in the depth through the two compiled depths, at `depth`."""
    (la, a), (lb, b) = sorted(shallow.items())
    return {f: a[f] + (b[f] - a[f]) * (depth - la) / (lb - la) for f in FIELDS}


def row(case: Case, parts: dict[str, float], state_bytes: int, derived: bool,
        breakdown: dict[str, float] | None = None) -> dict[str, Any]:
    bytes_per_device = int(round(total(parts)))
    extra = {}
    if breakdown is not None:
        extra = {k: int(round(v)) for k, v in breakdown.items()}
        if "needed_bytes" in breakdown:
            extra["peak_over_needed"] = bytes_per_device / breakdown["needed_bytes"]
    return {
        "bench": "memory", "program": case.program, "model": case.model, "devices": case.devices,
        "training": case.training,
        "rules": case.rules, "dtype": case.dtype, "remat": case.remat if case.program == "train" else None,
        "batch_per_device": case.batch_per_device, "seq_len": case.seq_len,
        "tokens_per_device": case.batch_per_device * case.seq_len,
        "action_capacity": min(case.action_capacity or case.seq_len, case.seq_len) if case.program == "train" else None,
        "bytes_per_device": bytes_per_device, "gib_per_device": bytes_per_device / GIB,
        "state_bytes_per_device": state_bytes, "state_gib_per_device": state_bytes / GIB,
        **{f: int(round(parts[f])) for f in FIELDS},
        **{f"fits_{b}gib": bytes_per_device <= b * GIB for b in BUDGETS_GIB},
        "derived_from_depths": list(DEPTHS) if derived else None,
        **extra,
    }


def budget_row(case: Case, at: dict[tuple[int, int], dict], state_bytes: int) -> dict[str, Any]:
    """Largest batch per device that fits each budget: bytes(batch) is taken as affine through the two
    batches' full-depth figures (each from two depths), and solved for each budget."""
    b1, b2 = sorted({b for _, b in at})
    depth = MODELS[case.model][0]
    full = {b: total(extrapolate({l: at[(l, b)] for l in DEPTHS}, depth)) for b in (b1, b2)}
    per_row = (full[b2] - full[b1]) / (b2 - b1)
    fixed = full[b1] - per_row * b1
    out = {"bench": "memory_budget", "program": "train", "model": case.model, "devices": case.devices,
           "rules": case.rules, "dtype": case.dtype, "remat": case.remat, "seq_len": case.seq_len,
           "bytes_per_device_at_batch": {b1: int(full[b1]), b2: int(full[b2])}, "bytes_per_row": int(per_row),
           "state_bytes_per_device": state_bytes, "derived_from": {"depths": list(DEPTHS), "batches": [b1, b2]}}
    for budget in BUDGETS_GIB:
        rows = max(0, int((budget * GIB - fixed) // per_row)) if per_row > 0 else 0
        out[f"max_batch_per_device_{budget}gib"] = rows
        out[f"max_tokens_per_device_{budget}gib"] = rows * case.seq_len
    return out


def markdown(rows: list[dict], model: str = "gpt2-xl") -> str:
    """The tables docs/accelerators.md quotes, from this benchmark's JSON lines (`--markdown FILE`)."""
    gib = lambda b: f"{b / GIB:.1f}"
    mesh = lambda r: "1 device" if r["devices"] == 1 else f"{r['devices']} × {r['rules']}"
    rows = [r for r in rows if r.get("training", "full") == "full"]
    train = [r for r in rows if r.get("bench") == "memory" and r["model"] == model and r["program"] == "train"
             and not (r["devices"] == 1 and r["rules"] == "fsdp")]
    out = [f"{model}, train step, {train[0]['batch_per_device']} × {train[0]['seq_len']} tokens per device: "
           "GiB per device (state), fits 16 / 80 / 141 GiB", "",
           "| mesh | float32 | float32 + remat | bfloat16 | bfloat16 + remat |", "|---|---|---|---|---|"]
    for key in dict.fromkeys((r["devices"], r["rules"]) for r in train):
        cells = []
        for dtype, remat in (("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)):
            r = next(r for r in train if (r["devices"], r["rules"], r["dtype"], r["remat"]) == (*key, dtype, remat))
            fits = "/".join("✓" if r[f"fits_{b}gib"] else "✗" for b in BUDGETS_GIB)
            cells.append(f"{gib(r['bytes_per_device'])} ({gib(r['state_bytes_per_device'])}) {fits}")
        out.append(f"| {mesh(train[[(x['devices'], x['rules']) for x in train].index(key)])} | " + " | ".join(cells) + " |")
    budget = [r for r in rows if r.get("bench") == "memory_budget" and r["model"] == model
              and not (r["devices"] == 1 and r["rules"] == "fsdp")]
    if budget:
        out += ["", f"{model}: most tokens per device (batch per device × {budget[0]['seq_len']}) whose train step "
                "fits 16 / 80 / 141 GiB", "", "| mesh | dtype | remat | 16 GiB | 80 GiB | 141 GiB |",
                "|---|---|---|---|---|---|"]
        for r in budget:
            out.append(f"| {mesh(r)} | {r['dtype']} | {'on' if r['remat'] else 'off'} | "
                       + " | ".join(str(r[f"max_tokens_per_device_{b}gib"]) for b in BUDGETS_GIB) + " |")
    decode = [r for r in rows if r.get("bench") == "memory" and r["model"] == model and r["program"] == "decode"
              and not (r["devices"] == 1 and r["rules"] == "fsdp")]
    if decode:
        out += ["", f"{model}, decode step ({decode[0]['batch_per_device']} rows per device, cache of "
                f"{decode[0]['seq_len']} slots): GiB per device", "", "| mesh | float32 | bfloat16 |", "|---|---|---|"]
        for key in dict.fromkeys((r["devices"], r["rules"]) for r in decode):
            pick = {r["dtype"]: r for r in decode if (r["devices"], r["rules"]) == key}
            out.append(f"| {mesh(pick['float32'])} | {gib(pick['float32']['bytes_per_device'])} | "
                       f"{gib(pick['bfloat16']['bytes_per_device'])} |")
    return "\n".join(out)


def cases(args) -> list[Case]:
    out = []
    for model in args.models:
        for training in args.training:
            for devices in args.devices:
                for rules in args.rules:
                    for dtype in args.dtypes:
                        for remat in args.remat:
                            out.append(Case("train", model, devices, rules, dtype, remat, args.batch_per_device,
                                            args.seq_len, action_capacity=args.action_capacity, training=training))
                        if args.decode:
                            out.append(Case("decode", model, devices, rules, dtype, False, args.batch_per_device,
                                            args.seq_len, training=training))
    return out


def compiled_key(case: Case) -> Case:
    """The program whose per-device figures a case reports.

    On one device "dp" and "fsdp" lay everything out alike. A data-parallel
    decode step needs no communication (parameters replicated, rows split),
    so each device runs the one-device program on its own rows. A
    data-parallel train step's per-device program does not depend on the
    number of devices beyond 1 (each holds the whole state and its own rows;
    the gradient all-reduce buffers have the state's size): 64 devices report
    the 8-device program (checked equal on gpt2-small and gpt2-medium).
    """
    if case.devices == 1 or (case.program == "decode" and case.rules == "dp"):
        return case.at(rules="dp", devices=1)
    if case.program == "train" and case.rules == "dp":
        return case.at(devices=min(case.devices, 8))
    return case


def _init_worker(xla_flags: str) -> None:
    os.environ["XLA_FLAGS"] = xla_flags
    os.environ["JAX_PLATFORMS"] = "cpu"


def _run(task: tuple[Case, int]) -> tuple[tuple[Case, int], dict]:
    case, depth = task
    return task, compile_case(case, depth)


def _parse_list(text: str, allowed, kind=str) -> list:
    values = [kind(v) for v in text.split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(map(str, allowed))}")
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m for m in MODELS if m.startswith("gpt2")), type=lambda t: _parse_list(t, MODELS))
    parser.add_argument("--devices", default="1,8,64", type=lambda t: _parse_list(t, (1, 2, 4, 8, 16, 32, 64), int))
    parser.add_argument("--rules", default="dp,fsdp", type=lambda t: _parse_list(t, ("dp", "fsdp")))
    parser.add_argument("--dtypes", default="float32,bfloat16", type=lambda t: _parse_list(t, ("float32", "bfloat16")))
    parser.add_argument("--remat", default="off,on",
                        type=lambda t: [v == "on" for v in _parse_list(t, ("off", "on"))])
    parser.add_argument("--batch-per-device", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--action-capacity", type=int, default=None,
                        help="action slots per row of the train step (StepConfig.action_capacity; the loop fits it "
                             "to the data); default: every position, the most the step can need")
    parser.add_argument("--training", default="full", type=lambda t: [v for v in t.split(",") if v],
                        help="what trains: full, topK (num_layers_unfrozen=K), loraR (LoRA rank R, alpha 16, every "
                             "block); comma-separated")
    parser.add_argument("--breakdown", action="store_true",
                        help="also compile the loss's value-and-gradient alone, for activation_bytes, needed_bytes "
                             "and peak_over_needed (twice the compiles)")
    parser.add_argument("--partial-rows", action="store_true",
                        help="the partial-training rows of docs/partial_training.md: SmolLM2-135M, SmolLM2-1.7B and "
                             "Llama-3.2-1B; full, top2 and lora8; 1 device and 8 (FSDP); bfloat16 with remat; "
                             "train step only, with --breakdown (compile-only, about an hour of CPU)")
    parser.add_argument("--no-decode", dest="decode", action="store_false", help="skip the decode-step cases")
    parser.add_argument("--no-budget", dest="budget", action="store_false", help="skip GPT-2 XL's budget lines")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the full-depth check of the depth extrapolation")
    parser.add_argument("--full-depth", action="store_true", help="compile every case at its real depth (slow)")
    parser.add_argument("--xla-cpu-defaults", action="store_true",
                        help="keep XLA:CPU's all-reduce combiner and concurrency scheduler (see the docstring)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiling processes")
    parser.add_argument("--markdown", metavar="FILE", help="print the docs' tables from FILE (this benchmark's "
                        "output) for --models' first model, and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown([json.loads(line) for line in f if line.strip()], args.models[0]))
        return
    if args.batch_per_device < 1 or not 1 <= args.seq_len <= 1024:
        parser.error("need --batch-per-device >= 1 and 1 <= --seq-len <= 1024")
    if args.partial_rows:
        args.models, args.training, args.devices = (PARTIAL_ROWS[k] for k in ("models", "training", "devices"))
        args.rules, args.dtypes, args.remat = ["fsdp"], ["bfloat16"], [True]
        args.decode, args.budget, args.check, args.breakdown = False, False, False, True
    for training in args.training:
        try:
            training_fields(training)
        except ValueError as e:
            parser.error(str(e))

    flags = f"--xla_force_host_platform_device_count={MAX_DEVICES}"
    if not args.xla_cpu_defaults:
        flags += " " + XLA_CPU_MEMORY_FLAGS
    _init_worker(flags)  # this process computes state sizes with the same devices
    t_start = time.perf_counter()

    todo = cases(args)
    depths = lambda case: (MODELS[case.model][0],) if args.full_depth else DEPTHS
    tasks = {(compiled_key(c), d) for c in todo for d in depths(c)}
    gradient = lambda c: compiled_key(c.at(program="gradient"))
    if args.breakdown:
        tasks |= {(gradient(c), d) for c in todo if c.program == "train" for d in depths(c)}
    budget_cases = [c for c in todo if args.budget and c.program == "train" and c.model == "gpt2-xl"]
    double = lambda c: c.at(batch_per_device=BUDGET_BATCH_FACTOR * c.batch_per_device)
    tasks |= {(compiled_key(double(c)), d) for c in budget_cases for d in DEPTHS}
    check = Case("train", "gpt2-small", 8, "fsdp", "bfloat16", True, args.batch_per_device, args.seq_len,
                 action_capacity=args.action_capacity)
    if args.check and not args.full_depth:
        tasks |= {(check, d) for d in DEPTHS} | {(check, MODELS[check.model][0])}
    # Largest programs first, so that the pool's last tasks are short.
    order = sorted(tasks, key=lambda t: (-t[1] * MODELS[t[0].model][1] * t[0].devices ** 0.5, str(t)))

    results: dict[tuple[Case, int], dict] = {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx,
                                                initializer=_init_worker, initargs=(flags,)) as pool:
        for task, result in pool.map(_run, order):
            results[task] = result
    compile_s = sum(r["compile_s"] for r in results.values())

    from benchmarks import common

    state_cache: dict[Case, int] = {}

    def state_bytes(case: Case) -> int:
        key = case.at(dtype="float32", remat=False, batch_per_device=1, action_capacity=None)
        if key not in state_cache:
            state_cache[key] = state_bytes_per_device(key)
        return state_cache[key]

    def parts_of(key: Case) -> dict[str, float]:
        if args.full_depth:
            return results[(key, MODELS[key.model][0])]
        return extrapolate({d: results[(key, d)] for d in DEPTHS}, MODELS[key.model][0])

    for case in todo:
        breakdown = None
        if case.program == "train":
            breakdown = state_breakdown(_step_config(case), *_mesh(case))
            if args.breakdown:
                breakdown = needed(breakdown, parts_of(gradient(case))["temp_bytes"])
        common.emit(row(case, parts_of(compiled_key(case)), state_bytes(case), not args.full_depth, breakdown))
    for case in budget_cases:
        at = {(d, b): results[(compiled_key(c), d)] for c in (case, double(case)) for d in DEPTHS
              for b in (c.batch_per_device,)}
        common.emit(budget_row(case, at, state_bytes(case)))
    if args.check and not args.full_depth:
        depth = MODELS[check.model][0]
        derived = total(extrapolate({d: results[(check, d)] for d in DEPTHS}, depth))
        compiled = total(results[(check, depth)])
        common.emit({"bench": "memory_check", "case": dataclasses.asdict(check), "depth": depth,
                     "derived_bytes": int(derived), "compiled_bytes": int(compiled),
                     "relative_error": (derived - compiled) / compiled})
    common.emit({"bench": "memory_summary", "cases": len(todo), "compiles": len(results), "jobs": args.jobs,
                 "compile_cpu_s": compile_s, "wall_s": time.perf_counter() - t_start, "xla_flags": flags,
                 "device": common.device_info()})


if __name__ == "__main__":
    main()
