"""`ilql-jax generate` and `ilql-jax sweep`: prompts in, value-guided replies at one or more β out (docs/algorithm.md §5).

Prompts are checked (markup, length) and `--reward` is loaded before the
checkpoint is read. Rows (each prompt `num` times) are decoded `batch_size` at
a time; the last batch is filled up with copies of its first row, so every
batch has one shape and `sampler.sample` compiles once per prompt-length
bucket, for every β (β is a traced argument). Each β decodes with the same
random draws (the key depends on the batch, not on β), so differences between
rows of a sweep come from β, not from sampling noise.

With several β or a reward, one summary line per β follows: mean reward ± its
standard error over the replies, mean KL estimate Σ_t (log π − log π_β),
distinct-2 (unique word bigrams over all bigrams of the replies) and mean length.
`sweep` also writes that table to WORKDIR/NAME.json and WORKDIR/NAME.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from ilql_jax import files
from ilql_jax.cli import reward as reward_lib
from ilql_jax.cli.options import GenerateOptions, SweepOptions
from ilql_jax.config import ConfigError, config_to_dict
from ilql_jax.data import episodes
from ilql_jax.data.records import DataError, check_text, prompt_histories

__all__ = ["generate", "summarize"]


def _prompts(opts: GenerateOptions) -> list[tuple[int | None, tuple]]:
    """`(line or None, history)` of every prompt, checked."""
    if opts.prompt is not None:
        return [(None, (episodes.env(check_text(opts.prompt, "--prompt", 1, "prompt")),))]
    return prompt_histories(opts.prompts)


def _turns(history: tuple) -> list[dict]:
    """A history as a data file's "turns"."""
    return [{"role": "agent", "text": s.text, "reward": s.reward} if s.is_agent else {"role": "env", "text": s.text}
            for s in history]


def _prompt_fields(history: tuple) -> dict:
    """The output record's prompt: "prompt" for a single env turn, else the whole history as "turns"."""
    if len(history) == 1 and not history[0].is_agent:
        return {"prompt": history[0].text}
    return {"turns": _turns(history)}


def _generation(tok, histories, row: tuple[int, int], out, i: int) -> tuple[dict, int]:
    """The fields every output record starts with (prompt, line, sample, text, num_tokens) for row `i` of a
    decode's `out` that answers `row` (prompt index, sample index), and the reply's length in tokens. Only the
    final stop id is cut (as generate_text does): markup emitted mid-reply stays visible."""
    p, k = row
    length = int(out.lengths[i])
    ids = [int(t) for t in out.tokens[i, :length]]
    ids = ids[:-1] if ids and ids[-1] == tok.end_a_id else ids
    line, history = histories[p]
    return {**_prompt_fields(history), **({"line": line} if line is not None else {}), "sample": k,
            "text": tok.decode(ids), "num_tokens": length}, length


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


def summarize(beta: float, results: list[dict]) -> dict:
    """One row of the β table from the generations at `beta` (with "reward" when they were scored)."""
    from ilql_jax.diagnostics import distinct_n

    texts = [r["text"] for r in results]
    row = {"beta": beta, "n": len(results)}
    if "reward" in results[0]:
        rewards = np.asarray([r["reward"] for r in results])
        row["mean_reward"] = float(rewards.mean())
        row["stderr"] = float(rewards.std(ddof=1) / math.sqrt(len(rewards))) if len(rewards) > 1 else 0.0
    if "kl" in results[0]:  # mode rerank picks among π_β's samples: no per-token KL estimate
        row["kl"] = float(np.mean([r["kl"] for r in results]))
    row.update(distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2),
               mean_length=float(np.mean([r["num_tokens"] for r in results])))
    return row


def _line(row: dict) -> str:
    reward = f"reward {row['mean_reward']:.3f} ± {row['stderr']:.3f}, " if "mean_reward" in row else ""
    kl = f"KL {row['kl']:.2f}, " if "kl" in row else ""
    return (f"β={row['beta']:g}: {reward}{kl}distinct-2 {row['distinct_2']:.3f}, "
            f"length {row['mean_length']:.1f} tokens ({row['n']} replies)")


def _command(opts: GenerateOptions) -> str:
    """The command line that reproduces `opts` (flags that differ from their defaults)."""
    flags = [f"--{f.name} {getattr(opts, f.name)}" for f in dataclasses.fields(opts)
             if f.default is dataclasses.MISSING or getattr(opts, f.name) != f.default]
    return f"ilql-jax {'sweep' if isinstance(opts, SweepOptions) else 'generate'} " + " ".join(flags)


def _markdown(table: dict) -> str:
    scored = "mean_reward" in table["rows"][0]
    head = ["β", *(["reward ± s.e."] if scored else []), "KL", "distinct-2", "length", "replies"]
    lines = [f"# β sweep of {table['workdir']} (ILQL step {table['step']})", "", f"`{table['command']}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [f"{r['beta']:g}", *([f"{r['mean_reward']:.3f} ± {r['stderr']:.3f}"] if scored else []),
                 f"{r['kl']:.2f}", f"{r['distinct_2']:.3f}", f"{r['mean_length']:.1f}", str(r["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    adv = table.get("advantage")
    if adv:
        lines += ["", f"Train's advantage diagnostic (advantage.json): k = {adv['k']:.3g}, σ = {adv['sigma']:.3g}; "
                  f"suggested β {','.join(f'{b:g}' for b in adv['suggested_betas'])}."]
    return "\n".join(lines) + "\n"


def generate(opts: GenerateOptions) -> list[dict]:
    """Runs `ilql-jax generate` (or `sweep`); returns one dict per generation (as printed or written)."""
    import jax

    from ilql_jax import sampler
    from ilql_jax.cli.workdir import load_run, read_config

    sweep = isinstance(opts, SweepOptions)
    betas = opts.betas
    reward = reward_lib.load(opts.reward) if opts.reward else None
    histories = _prompts(opts)
    step = read_config(opts.workdir).step
    trunk = step.model.trunk
    per_utterance = step.mode == "ilql_utt"
    if per_utterance != (opts.mode == "rerank"):  # a per-utterance run has no token-level advantage
        kind, modes = ("per-utterance", "rerank") if per_utterance else ("token-level", "sample, greedy, beam or best_of_n")
        raise ConfigError(f"{opts.workdir} holds {kind} ILQL: generate with --mode {modes}")
    if opts.mode == "rerank" and (sweep or len(betas) > 1):
        raise ConfigError("--mode rerank has no β to sweep (it reranks π_β's samples by Q̄): give one --beta or none")
    # Mode rerank scores each candidate with its </a> after the prompt: one more position.
    room = trunk.n_positions - opts.max_new_tokens - (opts.mode == "rerank")
    if room < 1:
        raise DataError("--max_new_tokens", f"{opts.max_new_tokens} leaves no room for a prompt in the model's "
                        f"n_positions={trunk.n_positions}")
    run = load_run(opts.workdir)
    tok = run.tokenizer
    prompt_ids = []
    for line, history in histories:
        try:
            ids = episodes.prompt_tokens(history, tok)
        except ValueError as e:  # e.g. a chat template's special token inside the prompt
            raise DataError(opts.prompts or "--prompt", str(e), line) from None
        if len(ids) > room:
            raise DataError(opts.prompts or "--prompt", f"the prompt is {len(ids)} tokens; with --max_new_tokens "
                            f"{opts.max_new_tokens} at most {room} fit the model's n_positions={trunk.n_positions} "
                            "(train's --max_len for --model scratch)", line if line is not None else None)
        prompt_ids.append(ids)
    longest = max(map(len, prompt_ids))
    print(f"room: prompts take up to {longest} of the model's {trunk.n_positions} positions, leaving "
          f"{trunk.n_positions - longest} tokens for a reply (--max_new_tokens {opts.max_new_tokens})")

    if opts.mode != "rerank":
        scfg = sampler.SamplerConfig(max_new_tokens=opts.max_new_tokens, mode=opts.mode, num_beams=opts.num_beams,
                                     n=opts.n, top_k=opts.top_k, top_p=opts.top_p)
    forbidden = [*sampler.inner_markup_ids(tok), tok.pad_id] if opts.forbid_markup else None
    rows = [(p, k) for p in range(len(prompt_ids)) for k in range(opts.num)]
    key = jax.random.key(opts.seed)
    results, table = [], []
    for beta in betas:
        if opts.mode == "rerank":
            at_beta = _rerank(opts, run, histories, prompt_ids, rows, key)
        else:
            at_beta = []
            for start, tokens, mask, n_real in _batches([prompt_ids[p] for p, _ in rows], opts.batch_size, tok.pad_id):
                out = sampler.sample(run.config.step.model, run.state.params, run.state.target_params, tokens, mask,
                                     jax.random.fold_in(key, start), beta=beta, temperature=opts.temperature,
                                     adv_clip=opts.adv_clip, stop_ids=(tok.end_a_id,), pad_id=tok.pad_id,
                                     sampler_config=scfg, forbidden_ids=forbidden)
                out = jax.device_get(out)
                for i in range(n_real):
                    fields, length = _generation(tok, histories, rows[start + i], out, i)
                    at_beta.append({
                        **fields, "logp": float(np.sum(out.logp[i, :length])),
                        "logp_beta": float(np.sum(out.logp_beta[i, :length])),
                        "kl": float(out.kl[i]), "beta": beta, "mode": opts.mode,
                    })
        if reward is not None:
            where = [f"the reply to {opts.prompts or '--prompt'}" + (f" line {histories[p][0]}" if opts.prompts else "")
                     + f" at β={beta:g}" for p, _ in rows]
            scores = reward_lib.score(reward, [_turns(histories[p][1]) for p, _ in rows],
                                      [r["text"] for r in at_beta], where)
            for r, value in zip(at_beta, scores):
                r["reward"] = float(value)
        results += at_beta
        table.append(summarize(beta, at_beta))

    if opts.out:
        files.atomic_write_text(opts.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
        print(f"wrote {len(results)} generations to {os.fspath(opts.out)}")
    elif not sweep:
        for r in results:
            prompt = r["prompt"] if "prompt" in r else " / ".join(t["text"] for t in r["turns"])
            scores = (f"Q̄ {r['q']:.2f}, log π_β {r['logp_beta']:.2f}, score {r['score']:.2f}" if r["mode"] == "rerank"
                      else f"log π {r['logp']:.2f}, log π_β {r['logp_beta']:.2f}, KL {r['kl']:.2f}")
            print(f"{prompt!r} -> {r['text']!r}  (" + (f"β {r['beta']:g}, " if len(betas) > 1 else "")
                  + (f"reward {r['reward']:.3g}, " if "reward" in r else "") + scores + ")")
    if sweep or len(betas) > 1 or reward is not None:
        for row in table:
            print(_line(row))
    if sweep:
        advantage_path = os.path.join(opts.workdir, "advantage.json")
        advantage = None
        if os.path.isfile(advantage_path):
            with open(advantage_path, encoding="utf-8") as f:
                advantage = json.load(f)
        summary = {"command": _command(opts), "workdir": opts.workdir, "step": int(run.state.step),
                   "options": config_to_dict(opts), "advantage": advantage, "rows": table}
        stem = os.path.join(opts.workdir, opts.name)
        files.atomic_write_text(stem + ".json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        files.atomic_write_text(stem + ".md", _markdown(summary))
        print(f"wrote the table to {stem}.json and {stem}.md")
    return results


def _rerank(opts: GenerateOptions, run, histories, prompt_ids: list[list[int]], rows: list[tuple[int, int]],
            key) -> list[dict]:
    """Mode rerank (a per-utterance ILQL workdir, docs/per_utterance.md): each generation is the best of
    `opts.n` samples of π_β by Q̄(s, u) + w · log π_β(u | s)."""
    import jax

    from ilql_jax import reranking, sampler

    tok = run.tokenizer
    scfg = sampler.SamplerConfig(max_new_tokens=opts.max_new_tokens, mode="sample", top_k=opts.top_k, top_p=opts.top_p)
    forbidden = [*sampler.inner_markup_ids(tok), tok.pad_id] if opts.forbid_markup else None
    results = []
    for start, tokens, mask, n_real in _batches([prompt_ids[p] for p, _ in rows], opts.batch_size, tok.pad_id):
        out = jax.device_get(reranking.rerank(
            run.config.step.model, run.state.params, run.state.target_params, tokens, mask,
            jax.random.fold_in(key, start), n=opts.n, logp_weight=opts.rerank_weight, temperature=opts.temperature,
            stop_ids=(tok.end_a_id,), end_a_id=tok.end_a_id, pad_id=tok.pad_id, sampler_config=scfg,
            forbidden_ids=forbidden))
        for i in range(n_real):
            results.append({
                **_generation(tok, histories, rows[start + i], out, i)[0], "q": float(out.q[i]),
                "logp_beta": float(out.logp_beta[i]), "score": float(out.score[i]), "n": opts.n, "mode": "rerank",
            })
    return results
