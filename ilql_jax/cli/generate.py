"""`ilql-jax generate`: prompts in, value-guided replies with log π, log π_β and KL out (ILQL_SPEC §5).

Prompts are checked (markup, length) before the checkpoint is read. Rows
(each prompt `num` times) are decoded `batch_size` at a time; the last batch
is filled up with copies of its first row, so every batch has one shape and
`sampler.sample` compiles once per prompt-length bucket.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ilql_jax import files
from ilql_jax.cli.options import GenerateOptions
from ilql_jax.config import ConfigError
from ilql_jax.data import episodes
from ilql_jax.data.records import DataError, check_text, prompt_histories

__all__ = ["generate"]


def _prompts(opts: GenerateOptions) -> list[tuple[int | None, tuple]]:
    """`(line or None, history)` of every prompt, checked."""
    if opts.prompt is not None:
        return [(None, (episodes.env(check_text(opts.prompt, "--prompt", 1, "prompt")),))]
    return prompt_histories(opts.prompts)


def _batches(rows: list[list[int]], batch_size: int, pad_id: int):
    """Left-padded `(tokens, mask, n_real)` batches of exactly `batch_size` rows."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n_real = len(chunk)
        chunk = chunk + [chunk[0]] * (batch_size - n_real)
        width = max(map(len, chunk))
        tokens = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros_like(tokens)
        for i, ids in enumerate(chunk):
            tokens[i, width - len(ids):], mask[i, width - len(ids):] = ids, 1
        yield start, tokens, mask, n_real


def generate(opts: GenerateOptions) -> list[dict]:
    """Runs `ilql-jax generate`; returns one dict per generation (as printed or written)."""
    import jax

    from ilql_jax import sampler
    from ilql_jax.cli.workdir import load_run, read_config

    histories = _prompts(opts)
    step = read_config(opts.workdir).step
    trunk = step.model.trunk
    per_utterance = step.mode == "ilql_utt"
    if per_utterance != (opts.mode == "rerank"):  # a per-utterance run has no token-level advantage
        kind, modes = ("per-utterance", "rerank") if per_utterance else ("token-level", "sample, greedy, beam or best_of_n")
        raise ConfigError(f"{opts.workdir} holds {kind} ILQL: generate with --mode {modes}")
    # Mode rerank scores each candidate with its </a> after the prompt: one more position.
    room = trunk.n_positions - opts.max_new_tokens - (opts.mode == "rerank")
    if room < 1:
        raise DataError("--max_new_tokens", f"{opts.max_new_tokens} leaves no room for a prompt in the model's "
                        f"n_positions={trunk.n_positions}")
    run = load_run(opts.workdir)
    tok = run.tokenizer
    prompt_ids = []
    for line, history in histories:
        ids = episodes.prompt_tokens(history, tok)
        if len(ids) > room:
            raise DataError(opts.prompts or "--prompt", f"the prompt is {len(ids)} tokens; with --max_new_tokens "
                            f"{opts.max_new_tokens} at most {room} fit the model's n_positions={trunk.n_positions}",
                            line if line is not None else None)
        prompt_ids.append(ids)

    if opts.mode == "rerank":
        return _write(opts, _rerank(opts, run, histories, prompt_ids))
    scfg = sampler.SamplerConfig(max_new_tokens=opts.max_new_tokens, mode=opts.mode, num_beams=opts.num_beams,
                                 n=opts.n, top_k=opts.top_k, top_p=opts.top_p)
    forbidden = [tok.s_id, tok.end_s_id, tok.a_id, tok.eod_id, tok.pad_id] if opts.forbid_markup else None
    rows = [(p, k) for p in range(len(prompt_ids)) for k in range(opts.num)]
    key = jax.random.key(opts.seed)
    results = []
    for start, tokens, mask, n_real in _batches([prompt_ids[p] for p, _ in rows], opts.batch_size, tok.pad_id):
        out = sampler.sample(run.config.step.model, run.state.params, run.state.target_params, tokens, mask,
                             jax.random.fold_in(key, start), beta=opts.beta, temperature=opts.temperature,
                             adv_clip=opts.adv_clip, stop_ids=(tok.end_a_id,), pad_id=tok.pad_id,
                             sampler_config=scfg, forbidden_ids=forbidden)
        out = jax.device_get(out)
        for i in range(n_real):
            p, k = rows[start + i]
            length = int(out.lengths[i])
            ids = [int(t) for t in out.tokens[i, :length]]
            # Only the final stop id is cut (as generate_text does): markup emitted mid-reply stays visible.
            ids = ids[:-1] if ids and ids[-1] == tok.end_a_id else ids
            line, history = histories[p]
            results.append({
                "prompt": history[-1].text if history else "",
                **({"line": line} if line is not None else {}),
                "sample": k, "text": tok.decode(ids), "num_tokens": length,
                "logp": float(np.sum(out.logp[i, :length])), "logp_beta": float(np.sum(out.logp_beta[i, :length])),
                "kl": float(out.kl[i]), "beta": opts.beta, "mode": opts.mode,
            })
    return _write(opts, results)


def _rerank(opts: GenerateOptions, run, histories, prompt_ids: list[list[int]]) -> list[dict]:
    """Mode rerank (a per-utterance ILQL workdir, docs/per_utterance.md): each generation is the best of
    `opts.n` samples of π_β by Q̄(s, u) + w · log π_β(u | s)."""
    import jax

    from ilql_jax import reranking, sampler

    tok = run.tokenizer
    scfg = sampler.SamplerConfig(max_new_tokens=opts.max_new_tokens, mode="sample", top_k=opts.top_k, top_p=opts.top_p)
    forbidden = [tok.s_id, tok.end_s_id, tok.a_id, tok.eod_id, tok.pad_id] if opts.forbid_markup else None
    rows = [(p, k) for p in range(len(prompt_ids)) for k in range(opts.num)]
    key = jax.random.key(opts.seed)
    results = []
    for start, tokens, mask, n_real in _batches([prompt_ids[p] for p, _ in rows], opts.batch_size, tok.pad_id):
        out = jax.device_get(reranking.rerank(
            run.config.step.model, run.state.params, run.state.target_params, tokens, mask,
            jax.random.fold_in(key, start), n=opts.n, logp_weight=opts.rerank_weight, temperature=opts.temperature,
            stop_ids=(tok.end_a_id,), end_a_id=tok.end_a_id, pad_id=tok.pad_id, sampler_config=scfg,
            forbidden_ids=forbidden))
        for i in range(n_real):
            p, k = rows[start + i]
            length = int(out.lengths[i])
            ids = [int(t) for t in out.tokens[i, :length]]
            ids = ids[:-1] if ids and ids[-1] == tok.end_a_id else ids
            line, history = histories[p]
            results.append({
                "prompt": history[-1].text if history else "", **({"line": line} if line is not None else {}),
                "sample": k, "text": tok.decode(ids), "num_tokens": length, "q": float(out.q[i]),
                "logp_beta": float(out.logp_beta[i]), "score": float(out.score[i]), "n": opts.n, "mode": "rerank",
            })
    return results


def _write(opts: GenerateOptions, results: list[dict]) -> list[dict]:
    """Prints the generations, or writes them to `opts.out` as JSONL; returns them."""
    if opts.out:
        files.atomic_write_text(opts.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
        print(f"wrote {len(results)} generations to {os.fspath(opts.out)}")
    else:
        for r in results:
            scores = (f"Q̄ {r['q']:.2f}, log π_β {r['logp_beta']:.2f}, score {r['score']:.2f}" if r["mode"] == "rerank"
                      else f"log π {r['logp']:.2f}, log π_β {r['logp_beta']:.2f}, KL {r['kl']:.2f}")
            print(f"{r['prompt']!r} -> {r['text']!r}  ({scores})")
    return results
