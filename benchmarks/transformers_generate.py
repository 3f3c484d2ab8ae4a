"""transformers' own PyTorch `generate` of a randomly initialised model: what a user of that model would otherwise run.

    PYTHON -m benchmarks.transformers_generate --config JSON [--batches 32,1] [--prompt-len 16]
                                               [--new-tokens 64] [--runs N] [--threads 2] [--seed 0]
    PYTHON benchmarks/transformers_generate.py ...      # the same, from any directory

PYTHON is an interpreter with torch and transformers (the `bench` extra: torch==2.13.0 CPU, transformers==4.57.6).
This file imports neither JAX nor ilql_jax, so it runs in that environment alone; `benchmarks/sampler.py
--torch-python PYTHON` runs it beside our decoder, at the same shape, batch, prompt length and new tokens.

`--config` is the model's `config.json` as a JSON string (`ilql_jax.models.hf_import.config_to_hf` writes it for
any of our trunk configs); the model is built from it with `AutoModelForCausalLM.from_config`
(`LlamaForCausalLM`, `GPT2LMHeadModel`), random weights, float32, no download. Per batch size B: B prompts of
`--prompt-len` random ids (all real, attention mask of ones), then `model.generate` with plain sampling
(`do_sample=True`, T = 1, `top_k=0`, `top_p=1`) and `min_new_tokens` = `max_new_tokens` = `--new-tokens`, so
every row decodes all of them (the end-of-text id is suppressed until then); KV cache on, as by default. One
warm-up call, then `--runs` timed calls under `torch.inference_mode()`, torch at `--threads` intra-op threads.

One JSON line per batch size, `"bench": "transformers_generate"`: `batch`, `prompt_len`, `new_tokens`,
`tokens_per_s_best` (B·M over the best call), `tokens_per_s` (over the median call), `call_s_best`,
`timed_runs`, `peak_rss_bytes` (this process's peak so far, `peak_rss_bytes`), `threads`, `torch_version`,
`transformers_version`, `model_type`, `n_params`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run as a file: benchmarks/'s own modules (sampler.py, memory.py) must not shadow torch's


def peak_rss_bytes() -> int:
    """This process's own peak resident memory: /proc's VmHWM (Linux), else ru_maxrss.

    ru_maxrss is not enough here: Linux carries the high-water mark of the address space an exec replaces
    into it, so a child of a large parent reports at least the parent's RSS at fork time. VmHWM is the
    peak of this address space alone."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _eos_id(config) -> int | None:
    """The end-of-text id when the vocabulary holds it (a toy vocabulary may not hold GPT-2's 50256)."""
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return eos if isinstance(eos, int) and 0 <= eos < config.vocab_size else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the model's config.json, as a JSON string")
    parser.add_argument("--batches", default="32", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2, help="timed calls per batch size after one warm-up call")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        hf = json.loads(args.config)
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError as e:
        parser.error(f"--config / --batches: {e}")
    if not isinstance(hf, dict) or "model_type" not in hf:
        parser.error("--config: a config.json object with a model_type")
    try:
        import torch
        import transformers
    except ImportError as e:
        sys.exit(f"{sys.executable}: {e}; install the `bench` extra (torch==2.13.0, transformers==4.57.6)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fields = {k: v for k, v in hf.items() if k not in ("architectures", "model_type", "torch_dtype")}
    config = transformers.AutoConfig.for_model(hf["model_type"], **fields)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    eos = _eos_id(config)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(args.seed)
    m, p = args.new_tokens, args.prompt_len
    for b in batches:
        ids = torch.randint(1, config.vocab_size, (b, p), generator=gen)
        mask = torch.ones_like(ids)

        def call():
            with torch.inference_mode():
                return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                      top_p=1.0, max_new_tokens=m, min_new_tokens=m, eos_token_id=eos,
                                      pad_token_id=0)

        out = call()  # warm-up
        if out.shape != (b, p + m):
            sys.exit(f"generate returned {tuple(out.shape)}, expected {(b, p + m)}: not every row decoded {m} tokens")
        walls = []
        for _ in range(args.runs):
            t = time.perf_counter()
            call()
            walls.append(time.perf_counter() - t)
        print(json.dumps({
            "bench": "transformers_generate", "model_type": hf["model_type"], "batch": b, "prompt_len": p,
            "new_tokens": m, "tokens_per_s_best": b * m / min(walls), "tokens_per_s": b * m / statistics.median(walls),
            "call_s_best": min(walls), "timed_runs": args.runs,
            "peak_rss_bytes": peak_rss_bytes(), "threads": args.threads,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "n_params": n_params}), flush=True)


if __name__ == "__main__":
    main()
