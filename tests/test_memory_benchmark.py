"""benchmarks/memory.py: its arithmetic, and (slow) a small run of it on fake CPU devices."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = memory.GIB


def _parts(total: float) -> dict:
    return {"argument_bytes": total, "output_bytes": 0.0, "temp_bytes": 0.0, "alias_bytes": 0.0}


def test_byte_counts_are_extrapolated_linearly_in_the_depth():
    shallow = {3: {"argument_bytes": 30, "output_bytes": 3, "temp_bytes": 100, "alias_bytes": 30},
               6: {"argument_bytes": 60, "output_bytes": 6, "temp_bytes": 130, "alias_bytes": 60}}
    assert memory.extrapolate(shallow, 48) == {"argument_bytes": 480, "output_bytes": 48, "temp_bytes": 550,
                                               "alias_bytes": 480}
    assert memory.total(memory.extrapolate(shallow, 48)) == 480 + 48 + 550 - 480


def test_programs_that_cannot_differ_are_compiled_once():
    case = memory.Case("train", "gpt2-xl", 64, "dp", "bfloat16", True, 8, 128)
    assert memory.compiled_key(case) == case.at(devices=8)  # data parallel: the 8-device program
    assert memory.compiled_key(case.at(rules="fsdp")) == case.at(rules="fsdp")  # FSDP shards depend on the count
    assert memory.compiled_key(case.at(devices=1, rules="fsdp")) == case.at(devices=1)
    decode = case.at(program="decode", remat=False)
    assert memory.compiled_key(decode) == decode.at(devices=1)  # no communication: the one-device program


def test_budget_solves_the_affine_fit_for_each_budget():
    case = memory.Case("train", "gpt2-xl", 64, "fsdp", "bfloat16", True, 8, 128)
    # 10 GiB at batch 8, 1 GiB more per row: 16 GiB fits 14 rows, 80 GiB 78, 141 GiB 139.
    at = {(d, b): _parts((10 + (b - 8)) * GIB) for d in memory.DEPTHS for b in (8, 32)}
    row = memory.budget_row(case, at, state_bytes=GIB)
    assert [row[f"max_batch_per_device_{b}gib"] for b in memory.BUDGETS_GIB] == [14, 78, 139]
    assert row["max_tokens_per_device_16gib"] == 14 * 128


@pytest.mark.slow
def test_a_small_run_shards_the_state_under_fsdp_and_fits(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.memory", "--models", "gpt2-small", "--devices", "1,8",
           "--dtypes", "float32", "--remat", "on", "--no-budget", "--no-check", "--jobs", "1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    train = {(r["devices"], r["rules"]): r for r in rows if r["bench"] == "memory" and r["program"] == "train"}
    assert set(train) == {(1, "dp"), (1, "fsdp"), (8, "dp"), (8, "fsdp")}
    assert train[(1, "dp")]["bytes_per_device"] == train[(1, "fsdp")]["bytes_per_device"]
    one, fsdp = train[(1, "dp")], train[(8, "fsdp")]
    # FSDP over 8 devices: an eighth of the state (and less than 1/7 allowing for the few replicated leaves).
    assert one["state_bytes_per_device"] / 8 <= fsdp["state_bytes_per_device"] < one["state_bytes_per_device"] / 7
    assert fsdp["bytes_per_device"] < 0.5 * train[(8, "dp")]["bytes_per_device"]
    assert all(r["fits_80gib"] and r["derived_from_depths"] == list(memory.DEPTHS) for r in train.values())
    assert sum(r["program"] == "decode" for r in rows if r["bench"] == "memory") == 4
    assert rows[-1]["bench"] == "memory_summary"


def test_llama_1b_rows_use_llama_3_2_1b_shape_and_count_its_state():
    """The "llama-1b" rows: Llama 3.2 1B's shape with ILQL's 6 markup ids, and its train state counted from the
    parameter shapes (float32 weights + AdamW's two moments for the trained networks, weights for the targets)."""
    case = memory.Case("train", "llama-1b", 1, "dp", "bfloat16", True, 8, 128)
    cfg = memory.trunk_config(case)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.intermediate_size) == (16, 2048, 32, 8, 8192)
    assert (cfg.vocab_size, cfg.padded_vocab_size, cfg.tie_word_embeddings, cfg.rope_type) == (128262, 128384, True,
                                                                                                  "llama3")
    d, v, kv = cfg.n_embd, cfg.padded_vocab_size, cfg.n_kv_head * cfg.head_dim
    block = 2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size + 2 * d
    trunk = v * d + cfg.n_layer * block + d
    v_head, q_head = (d * 2 * d + 2 * d) + (2 * d + 1), (d * 2 * d + 2 * d) + (2 * d * v + v)
    expected = 12 * (2 * trunk + v_head + 2 * q_head) + 4 * (trunk + 2 * q_head)
    got = memory.state_bytes_per_device(case)
    assert expected <= got < expected + 1024  # + the step counters and the key
    assert round(got / GIB, 1) == 48.3  # docs/llama.md


def test_the_breakdown_counts_what_a_top_two_step_holds():
    """`state_breakdown` on a tiny GPT-2 with its top 2 of 4 blocks trained, against the parameter count by hand:
    the frozen bottom once, three trunk tops, the heads; gradients and Adam's two moments for the trained ones."""
    import jax

    from ilql_jax import sharding, train
    from ilql_jax.models import gpt2, ilql

    d, v, p = 32, 128, 32
    trunk = gpt2.GPT2Config.tiny(vocab_size=100, n_layer=4, n_embd=d, n_positions=p)
    cfg = train.StepConfig(model=ilql.ModelConfig(trunk=trunk, num_layers_unfrozen=2))
    mesh_cfg = sharding.MeshConfig(data=1)
    got = memory.state_breakdown(cfg, sharding.make_mesh(mesh_cfg, jax.devices()[:1]), sharding.logical_rules(mesh_cfg))
    block = 12 * d * d + 13 * d
    frozen = v * d + p * d + 2 * block                      # wte, wpe, blocks 0-1
    top = 2 * block + 2 * d                                 # blocks 2-3, ln_f
    v_head, q_head = (d * 2 * d + 2 * d) + (2 * d + 1), (d * 2 * d + 2 * d) + (2 * d * v + v)
    trained = (top + v_head + 2 * q_head) + top             # the value trunk and heads, π_β
    target = top + 2 * q_head
    assert got["frozen_bytes"] == 4 * frozen
    assert got["param_bytes"] == 4 * (frozen + trained + target)
    assert got["gradient_bytes"] == 4 * trained
    assert 0 <= got["optimizer_bytes"] - 2 * 4 * trained < 64  # + Adam's and the schedule's step counters
    out = memory.needed(got, 1000.0)
    assert out["needed_bytes"] == got["param_bytes"] + got["gradient_bytes"] + got["optimizer_bytes"] + 1000
    assert memory.training_fields("top2") == {"num_layers_unfrozen": 2}
    assert memory.training_fields("lora8") == {"lora_rank": 8} and memory.training_fields("full") == {}
    with pytest.raises(ValueError, match="--training"):
        memory.training_fields("top")


@pytest.mark.slow
def test_a_top_two_smollm2_step_peaks_near_what_it_needs():
    """SmolLM2-135M's shape, top 2 blocks trained: the compiled step's bytes are at most 1.5x its parameters,
    gradients, Adam moments and activations (a frozen weight held three times, or copied, would break it)."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--models", "smollm2-135m", "--training", "top2",
           "--devices", "1", "--rules", "dp", "--dtypes", "float32", "--remat", "off", "--breakdown", "--no-decode",
           "--no-check", "--no-budget", "--jobs", "1", "--seq-len", "64", "--batch-per-device", "2"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    (r,) = [json.loads(line) for line in out.stdout.splitlines() if json.loads(line)["bench"] == "memory"]
    assert r["training"] == "top2" and r["frozen_bytes"] > 0.3 * r["param_bytes"]
    assert r["needed_bytes"] == r["param_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"] + r["activation_bytes"]
    assert r["bytes_per_device"] <= 1.5 * r["needed_bytes"], r
