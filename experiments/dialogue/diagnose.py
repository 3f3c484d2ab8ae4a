"""Do a dialogue run's values tell the opening questions apart? Each opener of the data, its return, and what
the learned values say of it.

Value-guided decoding improves on π_β only where the values rank utterances
as their returns do. At the first turn every dialogue is in the same state
(`<a>`), so the data hold, for each opening utterance u, many dialogues that
start with it: their mean discounted return G(u) (γ = 0.99 per utterance) is
what u is worth under the data's continuations, an unbiased target for a
value of the behaviour (τ = 0.5) and a lower bound for the expectile values
(τ > 0.5). This prints, per opener seen at least `--min_count` times:

  n, G            how often the data open with u, and its mean return-to-go;
  log π_β         log π_β(u | <a>) of the run's π_β (what BC samples by);
  Q̄_utt           min(Q̄1, Q̄2)(<a>, u) of a per-utterance run (what reranking ranks by);
  ΣA              Σ_t A(h_t, a_t) over u's tokens and `</a>` of a token-level run (what the sampler adds
                  β times to log π_β(u)), with V(<a>) once;

and, over the openers, the Spearman correlation of each value with G, and the
spread (standard deviation) of log π_β against that of the scaled values:
reranking moves away from π_β only where Q̄ differences exceed w times log π_β
differences; the token-level sampler where β·ΣA differences exceed log π_β's.

    python -m experiments.dialogue.diagnose WORKDIR [--catalogue CSV] [--min_count 20]

reads `WORKDIR/data/train.jsonl`, `WORKDIR/tokenizer/` and the newest
checkpoints of `WORKDIR/ilql` and `WORKDIR/ilql_utt` (either may be missing).
With several seeds pass one seed's directory, e.g. `WORKDIR/seed1`: the data
and the tokenizer the seeds share are read from the directory above it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from experiments.dialogue import catalogue as catalogue_lib
from experiments.dialogue import datasets
from ilql_jax import tokenizers, utterance
from ilql_jax.checkpoint import restore
from ilql_jax.config import TrainConfig, config_from_dict
from ilql_jax.models import heads, ilql
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.train import abstract_state

GAMMA = 0.99


def load_run(run_dir: str):
    """(TrainConfig, state) of a run directory's newest checkpoint, or None when it has none."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = config_from_dict(TrainConfig, json.load(f))
    state, _ = restore(run_dir, abstract_state(config.step))
    return config, state


def opener_returns(games, min_count: int) -> list[tuple[str, int, float]]:
    """(opener text, count, mean discounted return-to-go) of the openers seen at least `min_count` times."""
    returns = collections.defaultdict(list)
    for g in games:
        rewards = [t.rewards["standard"] for t in g.turns]
        returns[g.turns[0].text].append(sum(r * GAMMA ** k for k, r in enumerate(rewards)))
    rows = [(u, len(rs), float(np.mean(rs))) for u, rs in returns.items() if len(rs) >= min_count]
    return sorted(rows, key=lambda r: -r[2])


def _sequences(tok, openers: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`<a> u </a>` right-padded [U, W], its mask, and the `</a>` position of each."""
    ids = [[tok.a_id, *tok.encode(u), tok.end_a_id] for u in openers]
    width = max(map(len, ids))
    tokens = np.full((len(ids), width), tok.pad_id, np.int32)
    mask = np.zeros_like(tokens)
    for i, row in enumerate(ids):
        tokens[i, :len(row)], mask[i, :len(row)] = row, 1
    return tokens, mask, np.asarray([len(r) - 1 for r in ids], np.int32)


def log_pi_beta(model: ilql.ModelConfig, params, tokens, mask, end) -> np.ndarray:
    """log π_β(u | <a>) of each row, `</a>` included."""
    cfg = model.trunk
    _, logits = trunk_lib.forward(ilql.policy_params(model, params), cfg, jnp.asarray(tokens), jnp.asarray(mask))
    logp = jax.nn.log_softmax(logits[:, :-1, :cfg.vocab_size], axis=-1)
    taken = jnp.take_along_axis(logp, jnp.asarray(tokens[:, 1:, None]), axis=-1)[..., 0]
    steps = np.arange(tokens.shape[1] - 1)[None, :] < end[:, None]
    return np.asarray(jnp.sum(jnp.where(steps, taken, 0.0), axis=1))


def summed_advantage(model: ilql.ModelConfig, params, target, tokens, mask, end) -> tuple[np.ndarray, float]:
    """(Σ_t A(h_t, a_t) over each row's utterance and `</a>`, V(<a>)) of a token-level run."""
    out = ilql.apply(model, params, target, jnp.asarray(tokens), jnp.asarray(mask))
    q = out.target_q_t[:, :-1]
    q_a = jnp.take_along_axis(q, jnp.asarray(tokens[:, 1:, None]), axis=-1)[..., 0]
    adv = q_a - out.v_t[:, :-1]
    steps = np.arange(tokens.shape[1] - 1)[None, :] < end[:, None]
    return np.asarray(jnp.sum(jnp.where(steps, adv, 0.0), axis=1)), float(out.v_t[0, 0])


def shared(workdir: str, name: str) -> str:
    """`workdir/name`, or the run directory's above it when `workdir` is one seed's of several (`seed<k>/`)."""
    path = os.path.join(workdir, name)
    return path if os.path.exists(path) else os.path.join(os.path.dirname(os.path.abspath(workdir)), name)


def diagnose(workdir: str, catalogue_path: str, data: str | None, min_count: int) -> str:
    catalogue = catalogue_lib.load_catalogue(catalogue_path)
    games = datasets.load_dialogues(data or shared(workdir, os.path.join("data", "train.jsonl")), catalogue)
    tok = tokenizers.load_tokenizer(shared(workdir, "tokenizer"))
    rows = opener_returns(games, min_count)
    openers = [u for u, _, _ in rows]
    tokens, mask, end = _sequences(tok, openers)
    columns = {"n": [n for _, n, _ in rows], "G": [g for _, _, g in rows]}
    notes = []
    utt = load_run(os.path.join(workdir, "ilql_utt"))
    tok_run = load_run(os.path.join(workdir, "ilql"))
    for run in (utt, tok_run):
        if run is not None:
            columns["log π_β"] = log_pi_beta(run[0].step.model, run[1].params, tokens, mask, end)
            break
    if utt is not None:
        config, state = utt
        columns["Q̄_utt"] = np.asarray(utterance.q_at(config.step.model, state.params, state.target_params,
                                                      jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(end)))
        v0 = float(heads.v_t(state.params["value"]["v"], config.step.model.trunk,
                             trunk_lib.forward(state.params["value"]["trunk"], config.step.model.trunk,
                                               jnp.asarray(tokens[:1, :1]), jnp.asarray(mask[:1, :1]),
                                               with_logits=False)[0])[0, 0])
        notes.append(f"per-utterance V(<a>) = {v0:.3f}")
    if tok_run is not None:
        config, state = tok_run
        columns["ΣA"], v0 = summed_advantage(config.step.model, state.params, state.target_params, tokens, mask, end)
        notes.append(f"token-level V(<a>) = {v0:.3f}")
    all_returns = [sum(t.rewards["standard"] * GAMMA ** k for k, t in enumerate(g.turns)) for g in games]
    notes.append(f"the data's mean discounted return from <a>: {np.mean(all_returns):.3f} over {len(games)} dialogues")
    names = list(columns)
    lines = ["| opener | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, u in enumerate(openers):
        lines.append(f"| {u} | " + " | ".join(f"{columns[c][i]:.3f}" if c != "n" else str(columns[c][i])
                                              for c in names) + " |")
    lines.append("")
    g = np.asarray(columns["G"])
    for name in names[2:]:
        x = np.asarray(columns[name])
        rho = scipy.stats.spearmanr(x, g).statistic
        lines.append(f"- {name}: Spearman ρ with G {rho:.2f}; standard deviation over the openers {x.std():.3f}")
    lines.append(f"- G: standard deviation over the openers {g.std():.3f}")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.dialogue.diagnose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir")
    parser.add_argument("--catalogue", default=catalogue_lib.SMALL_PATH)
    parser.add_argument("--data", default=None, help="the dialogues (default: WORKDIR/data/train.jsonl, or the run's above a seed's directory)")
    parser.add_argument("--min_count", type=int, default=20)
    args = parser.parse_args(argv)
    print(diagnose(args.workdir, args.catalogue, args.data, args.min_count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
