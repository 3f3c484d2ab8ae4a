"""Writes tiny GGUF files for tests, deterministically (tests/fixtures/make_gguf_reference.py writes the same ones).

`write_tiny_gguf(path)` writes a random Llama (GQA: 4 query heads on 2 KV heads; or, `arch="qwen2"`, a Qwen2 with
q/k/v biases, unpermuted) as llama.cpp's converter would:
tensors quantised with `gguf.quants.quantize` to a mix of F32, F16, BF16, Q8_0 and Q4_1, the q and k rows
permuted per head (`llama_cpp_permute`), a hand-made byte-level BPE tokenizer (`tokenizer.ggml.*`, pre-tokenizer
"smollm") and a SmolLM2-style chat template. It returns the independent reference: the same weights quantised
*unpermuted* and dequantised, in Hugging Face layout (quantisation blocks run along a row, so quantising commutes
with the row permutation: the file's tensors are exactly these, permuted).
"""

from __future__ import annotations

import numpy as np

# SmolLM2-135M-Instruct's template, with a shorter default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Merges in byte-level BPE notation (Ġ = space, Ċ = newline, Ã© = "é"). "1 2", "12 3" and "Ġ 1" merge digits, which
# the "smollm" pre-tokenizer (every digit on its own) never lets happen, so the digit rule is visible here.
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġ Ġ", "ĠĠ Ġ", "Ċ Ċ", "1 2", "12 3", "Ġ 1", "e r", "o r", "a n",
          "Ġ w", "e s", "Ġ s", "Ã ©", "l l", "o u", "Ġ y", "Ġy ou")
# A text with unicode, digits, runs of spaces and newlines before digits, and the template's special tokens.
MIXED_TEXT = ("Héllo wörld, the year 1234 and  12 or\n\n123; 日本語 ½ x²  \t tabs   three   spaces "
              "<|im_start|>user\nyou there?<|im_end|>\n<|endoftext|>Ünïcödé 99")


def byte_alphabet() -> list[str]:
    """GPT-2's byte → unicode map, in byte order (tokens 0..255 of a byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): the 3 special tokens (type 3, control), 256 bytes, then one token per merge."""
    tokens = list(SPECIALS) + byte_alphabet()
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    assert len(set(tokens)) == len(tokens)
    return tokens, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)), list(MERGES)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py) of a q or k weight: rotate-half → interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


SHAPE = dict(n_embd=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=16, intermediate_size=96, context_length=256,
             rope_theta=100000.0, rms_norm_eps=1e-5)
# ggml type of each tensor (by GGUF name suffix; "blk.1.*" overrides "blk.*"). Row lengths 64 and 96 are
# multiples of the 32-value blocks of Q8_0 and Q4_1.
TYPES = {"token_embd.weight": "Q8_0", "output.weight": "Q4_1", "output_norm.weight": "F32",
         "blk.attn_norm.weight": "F32", "blk.ffn_norm.weight": "F32",
         "blk.0.attn_q.weight": "Q4_1", "blk.0.attn_k.weight": "Q8_0", "blk.0.attn_v.weight": "F32",
         "blk.0.attn_output.weight": "Q4_1", "blk.0.ffn_gate.weight": "Q4_1", "blk.0.ffn_up.weight": "Q8_0",
         "blk.0.ffn_down.weight": "F16",
         "blk.1.attn_q.weight": "Q8_0", "blk.1.attn_k.weight": "Q4_1", "blk.1.attn_v.weight": "Q4_1",
         "blk.1.attn_output.weight": "F32", "blk.1.ffn_gate.weight": "BF16", "blk.1.ffn_up.weight": "Q4_1",
         "blk.1.ffn_down.weight": "Q4_1"}


def _type(name: str) -> str:
    if name.endswith(".bias"):
        return "F32"
    if name in TYPES:
        return TYPES[name]
    return TYPES["blk." + name.split(".", 2)[2]]


def write_tiny_gguf(path, *, seed: int = 0, arch: str = "llama", tied: bool = True, chat_template: str | None =
                    CHAT_TEMPLATE, types: dict[str, str] | None = None, pre: str = "smollm",
                    rope_theta: float | None = None):
    """Writes the tiny GGUF; returns `(hf_config, reference)`: the config.json dict of the same model and its
    dequantised weights by Hugging Face key (the file's tensors before llama.cpp's permutation)."""
    import gguf

    s = dict(SHAPE, **({} if rope_theta is None else {"rope_theta": rope_theta}))
    tokens, token_types, merges = tiny_vocab()
    vocab = len(tokens)
    d, q, kv, f = s["n_embd"], s["n_head"] * s["head_dim"], s["n_kv_head"] * s["head_dim"], s["intermediate_size"]
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.1):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    hf = {"model.embed_tokens.weight": ("token_embd.weight", normal(vocab, d, scale=0.5)),
          "model.norm.weight": ("output_norm.weight", 1 + normal(d))}
    if not tied:
        hf["lm_head.weight"] = ("output.weight", normal(vocab, d, scale=0.3))
    for i in range(s["n_layer"]):
        pre_hf, pre_gg = f"model.layers.{i}", f"blk.{i}"
        for hf_name, gg_name, shape in (
                ("input_layernorm.weight", "attn_norm.weight", (d,)),
                ("post_attention_layernorm.weight", "ffn_norm.weight", (d,)),
                ("self_attn.q_proj.weight", "attn_q.weight", (q, d)),
                ("self_attn.k_proj.weight", "attn_k.weight", (kv, d)),
                ("self_attn.v_proj.weight", "attn_v.weight", (kv, d)),
                ("self_attn.o_proj.weight", "attn_output.weight", (d, q)),
                ("mlp.gate_proj.weight", "ffn_gate.weight", (f, d)), ("mlp.up_proj.weight", "ffn_up.weight", (f, d)),
                ("mlp.down_proj.weight", "ffn_down.weight", (d, f))):
            value = 1 + normal(*shape) if "norm" in hf_name else normal(*shape, scale=0.15)
            hf[f"{pre_hf}.{hf_name}"] = (f"{pre_gg}.{gg_name}", value)
        if arch == "qwen2":  # Qwen2's q, k and v biases (stored F32, not permuted)
            for proj, gg_name, n in (("q_proj", "attn_q.bias", q), ("k_proj", "attn_k.bias", kv),
                                     ("v_proj", "attn_v.bias", kv)):
                hf[f"{pre_hf}.self_attn.{proj}.bias"] = (f"{pre_gg}.{gg_name}", normal(n))

    plan = {**TYPES, **(types or {})}
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("ilql_jax tiny test model")
    writer.add_context_length(s["context_length"])
    writer.add_embedding_length(d)
    writer.add_block_count(s["n_layer"])
    writer.add_feed_forward_length(f)
    writer.add_head_count(s["n_head"])
    writer.add_head_count_kv(s["n_kv_head"])
    writer.add_rope_dimension_count(s["head_dim"])
    writer.add_rope_freq_base(s["rope_theta"])
    writer.add_layer_norm_rms_eps(s["rms_norm_eps"])
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    reference = {}
    for key, (name, value) in hf.items():
        qtype = gguf.GGMLQuantizationType[plan.get(name) or _type(name)]
        stored = value
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):  # qwen2 is written unpermuted
            stored = llama_cpp_permute(value, s["n_head"] if "attn_q" in name else s["n_kv_head"])
        data = gguf.quants.quantize(stored, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
        # The reference: quantised before the permutation, dequantised (what a float export of the file holds).
        reference[key] = gguf.quants.dequantize(gguf.quants.quantize(value, qtype), qtype).astype(np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hf_config = {"architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
                 "model_type": arch, "vocab_size": vocab, "hidden_size": d,
                 "intermediate_size": f, "num_hidden_layers": s["n_layer"], "num_attention_heads": s["n_head"],
                 "num_key_value_heads": s["n_kv_head"], "head_dim": s["head_dim"],
                 "max_position_embeddings": s["context_length"], "hidden_act": "silu",
                 "rms_norm_eps": float(np.float32(s["rms_norm_eps"])), "rope_theta": s["rope_theta"],
                 "tie_word_embeddings": tied}
    hf_config.update({"use_sliding_window": False} if arch == "qwen2" else {"attention_bias": False, "mlp_bias": False})
    return hf_config, reference


def write_reference_directory(directory, hf_config: dict, reference: dict) -> None:
    """The reference weights as a Hugging Face directory (config.json + model.safetensors), for hf_import."""
    import json
    import os

    import safetensors.numpy

    os.makedirs(directory, exist_ok=True)
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in reference.items()},
                                os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
