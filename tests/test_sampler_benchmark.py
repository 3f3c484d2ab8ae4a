"""benchmarks/sampler.py: the decode step's FLOP and byte counts against hand counts for a tiny Llama, the worker
at a tiny Llama shape with the cost of guidance, and how the parent merges guidance and transformers' rows.
No network, no torch: transformers' process is replaced by its JSON lines."""

import json

import jax
import pytest

from benchmarks import common
from benchmarks import sampler as bench
from ilql_jax.models import gpt2, hf_import, ilql, llama


def test_decode_flops_count_a_tiny_llama_by_hand():
    cfg = llama.LlamaConfig.tiny()  # V 256, d 64, L 2, 4 query / 2 KV heads of 16, SwiGLU 128
    s = 10
    block = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128        # q, o; k, v (GQA: 2 × 16 wide); gate, up, down
    trunk = 2 * block * 2 + 4 * 2 * s * 64                    # 2 layers; attention over 10 slots, 4 × 16 queries
    assert (block, trunk) == (36864, 152576)
    lm_head = 2 * 64 * 256                                    # 32768
    q_bar = 2 * (64 * 128 + 128 * 256)                        # 81920 each: d → 2d → V
    v = 2 * (64 * 128 + 128 * 1)                              # 16640
    assert bench.decode_flops_per_token(cfg, s, guided=False) == trunk + lm_head == 185344
    assert bench.decode_flops_per_token(cfg, s) == 3 * trunk + lm_head + 2 * q_bar + v == 670976
    # A tied head and the number of KV heads change no FLOP.
    assert bench.decode_flops_per_token(llama.LlamaConfig.tiny(tie_word_embeddings=True), s) == 670976


def test_decode_flops_of_gpt2_are_the_closed_form_of_before():
    cfg, s = gpt2.GPT2Config.tiny(dropout=0.0), 24
    d, v, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    blocks = 2 * 12 * L * d * d + 4 * L * s * d
    assert bench.decode_flops_per_token(cfg, s) == \
        3 * blocks + 2 * v * d + 2 * 2 * (2 * d * d + 2 * d * v) + 2 * (2 * d * d + 2 * d)


@pytest.mark.parametrize("tied", [False, True])
def test_decode_bytes_count_a_tiny_llama_by_hand(tied):
    cfg = llama.LlamaConfig.tiny(tie_word_embeddings=tied)
    model = ilql.ModelConfig(trunk=cfg)
    online, target = ilql.init(model, jax.random.key(0))
    b, fill = 4, 10.5
    # Floats of one trunk a step reads: per block q 64·64, k and v 64·32, o 64·64, gate/up/down 3·64·128 and two
    # RMSNorm scales; the final norm; 4 embedding rows (not the table, nor an untied lm_head).
    trunk = 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192 + 2 * 64) + 64 + b * 64
    assert trunk == 74304
    head = 256 * 64                                   # π_β's LM head over the real vocabulary, tied or not
    q_bar = 64 * 128 + 128 + 128 * 256 + 256          # 41344: hidden layer and output, kernels and biases
    v_head = 64 * 128 + 128 + 128 + 1                 # 8449
    kv = 2 * 2 * b * fill * 2 * 16                    # keys and values, 2 layers, 2 KV heads of 16: 5376
    assert bench.decode_bytes_per_step(model, online, target, b, fill, guided=False) == 4 * (trunk + head + kv)
    assert bench.decode_bytes_per_step(model, online, target, b, fill) == \
        4 * (3 * trunk + head + 2 * q_bar + v_head + 3 * kv) == 1386244


def test_worker_runs_at_a_tiny_llama_shape_with_the_cost_of_guidance():
    rec = bench.worker("tiny-llama", 1, False, (1, 4), batch=4, new_tokens=4)
    assert rec["bench"] == "sampler" and rec["arch"] == "LlamaConfig" and rec["batch"] == 4
    assert rec["tokens_per_s"] > 0 and rec["decode_bytes_per_step"] > 0
    assert rec["decode_gflop_per_step"] == pytest.approx(
        4 * bench.decode_flops_per_token(llama.LlamaConfig.tiny(), bench.PROMPT_LEN + 2) / 1e9)
    assert [g["batch"] for g in rec["guidance"]] == [1, 4]
    for g in rec["guidance"]:
        assert g["guided_tokens_per_s"] > 0 and g["policy_only_tokens_per_s"] > 0
        # π_β alone reads one trunk and one head: well under the three trunks and the heads.
        assert g["policy_only_decode_bytes_per_step"] < g["guided_decode_bytes_per_step"] / 2
        assert g["policy_only_decode_gflop_per_token"] < g["guided_decode_gflop_per_token"] / 2
    # At the row's own batch the guided figure is the row's timing, not another decode.
    assert rec["guidance"][1]["guided_tokens_per_s"] == rec["tokens_per_s"]


def test_transformers_args_describe_the_same_model():
    cfg = bench.SHAPES["smollm2-135m"]()
    args = bench.transformers_args(cfg, (32, 1), 2, 2)
    assert args[0].endswith("benchmarks/transformers_generate.py")
    opts = dict(zip(args[1::2], args[2::2]))
    hf = json.loads(opts["--config"])
    assert hf["model_type"] == "llama" and hf["tie_word_embeddings"] is True
    back = hf_import.config_from_hf(hf)
    for field in ("vocab_size", "n_embd", "n_layer", "n_head", "n_kv_head", "head_dim", "intermediate_size",
                  "rope_theta", "tie_word_embeddings"):
        assert getattr(back, field) == getattr(cfg, field), field
    assert (back.n_layer, back.n_embd, back.n_kv_head, back.vocab_size) == (30, 576, 3, 49152)
    assert opts["--batches"] == "32,1" and opts["--prompt-len"] == str(bench.PROMPT_LEN)
    assert opts["--new-tokens"] == str(bench.NEW_TOKENS) and opts["--threads"] == "2"


def test_bench_shape_merges_guidance_and_transformers_rows(monkeypatch):
    """Two rounds of fake worker and transformers lines: the best round counts, the ratios are of the bests."""
    def guidance(batch, guided, policy_only):
        return {"batch": batch, "guided_tokens_per_s": guided, "policy_only_tokens_per_s": policy_only,
                "guided_decode_bytes_per_step": 3, "policy_only_decode_bytes_per_step": 1,
                "guided_decode_gflop_per_token": 0.3, "policy_only_decode_gflop_per_token": 0.1}

    def worker_round(rate, median, peak, b1, b32):
        return {"bench": "sampler", "tokens_per_s": rate, "tokens_per_s_median": median, "peak_memory_bytes": peak,
                "decode_bytes_per_step": 1e6, "decode_gflop_per_step": 1.0, "device": "cpu",
                "guidance": [guidance(1, *b1), guidance(32, *b32)]}

    worker_rounds = iter([worker_round(100.0, 90.0, 5, (10.0, 30.0), (100.0, 250.0)),
                          worker_round(120.0, 110.0, 7, (12.0, 24.0), (120.0, 240.0))])
    torch_rate = iter([{32: 60.0, 1: 20.0}, {32: 80.0, 1: 16.0}])
    calls = []

    def fake_run(cmd, env=None, timeout=None):
        calls.append(cmd)
        if cmd[0] == "/torch/python":
            assert env is not None and "PYTHONPATH" not in env
            assert "--batches" in cmd and cmd[cmd.index("--batches") + 1] == "32,1"
            rates = next(torch_rate)
            return [{"bench": "transformers_generate", "batch": b, "tokens_per_s_best": r, "tokens_per_s": r / 2,
                     "peak_rss_bytes": 9, "threads": 2, "torch_version": "t", "transformers_version": "x"}
                    for b, r in rates.items()]
        assert "--worker-guidance" in cmd
        return [next(worker_rounds)]

    monkeypatch.setattr(common, "run_json_lines", fake_run)
    meter, bandwidth = common.PeakMeter(64), common.BandwidthMeter(1 << 20)
    rec, g1, g32 = bench.bench_shape("tiny-llama", 1, 2, None, False, True, "/torch/python", 2, meter, bandwidth)
    assert len(calls) == 4
    assert rec["tokens_per_s"] == 120.0 and rec["tokens_per_s_rounds"] == [100.0, 120.0]
    assert rec["row_matmul_shape"] == [32, 128, 256]  # [B, 2d, V_pad] of this shape's Q̄ output layer
    assert rec["transformers_tokens_per_s"] == 80.0 and rec["ratio_vs_transformers"] == pytest.approx(1.5)
    assert rec["transformers_tokens_per_s_rounds"] == [60.0, 80.0]
    assert rec["policy_only_tokens_per_s"] == 250.0 and rec["guidance_cost"] == pytest.approx(250 / 120)
    assert rec["policy_only_ratio_vs_transformers"] == pytest.approx(250 / 80) and "guidance" not in rec
    assert (g1["bench"], g1["batch"], g32["batch"]) == ("sampler_guidance", 1, 32)
    assert (g1["guided_tokens_per_s"], g1["policy_only_tokens_per_s"]) == (12.0, 30.0)
    assert g1["guidance_cost"] == pytest.approx(2.5) and g1["guidance_cost_rounds"] == pytest.approx([3.0, 2.0])
    assert g1["transformers_tokens_per_s"] == 20.0 and g1["ratio_vs_transformers"] == pytest.approx(0.6)
    assert g1["policy_only_ratio_vs_transformers"] == pytest.approx(1.5)
    assert g32["guided_tokens_per_s"] == rec["tokens_per_s"]


@pytest.mark.parametrize("argv, message", [
    (["--torch-python", "/nonexistent/python"], "not an executable file"),
    (["--guidance", "smollm3"], "unknown shape"),
])
def test_bad_options_fail_early_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--shapes", "tiny", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_torch_is_the_bench_extras_alone():
    import configparser
    import pathlib

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).resolve().parents[1] / "setup.cfg")
    extras = cfg["options.extras_require"]
    assert extras["bench"].split() == ["torch==2.13.0", "transformers==4.57.6"]
    assert "torch" not in cfg["options"]["install_requires"]
    assert all("torch" not in extras[name] for name in extras if name != "bench")
