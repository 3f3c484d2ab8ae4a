"""Are a Wordle run's values good enough to steer play? Q̄ at each guess's `</a>`, by what the state tells.

Value-guided decoding can only improve on π_β where the values tell guesses
apart. Q̄ at the state that emits a guess's `</a>` is the expected discounted
return of having typed that guess (docs/algorithm.md §1, §3): an expectation over the
answers still possible, so grouping guesses by hindsight (won or not) compares
it with something it cannot know. This groups them by what the history
already says instead:

  repeat        the guess was made before: −1 and no new information;
  inconsistent  a listed word that earlier feedback rules out: it cannot win;
  invalid       not in the word list: −1 and no feedback;
  k=N           one of the N words still consistent: it wins with chance 1/N.

Within a group, a calibrated Q̄ matches the mean discounted return-to-go G of
the games. R² of G from Q̄, beside R² from the (turn, group) means themselves
(fitted on the same games, so an upper reference), says how much of what the
state tells the values have learnt.

Greedy decoding chooses a word letter by letter, so what steers it is the
advantage at each letter, not Q̄ at the word's end: `--words` prints, for
guesses typed at the start of a game, log π_β, Q̄, V and A = Q̄ − V at every
letter (the opener is where the default data set puts its decision; README).

    python -m experiments.wordle.diagnose WORKDIR [--method ilql] [--games FILE] [--words known,share]

reads `WORKDIR/words.txt`, `WORKDIR/METHOD/` (config and newest checkpoint)
and, by default, the run's held-out games `WORKDIR/data/heldout.jsonl`.
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

from experiments.wordle import datasets, words as words_lib
from experiments.wordle.env import Turn, WordleGame, prompt_ids, turns_to_episode
from experiments.wordle.policies import FeedbackTable
from ilql_jax import tokenizers
from ilql_jax.checkpoint import restore
from ilql_jax.config import TrainConfig, config_from_dict
from ilql_jax.data import episodes
from ilql_jax.models import ilql, layers
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.train import abstract_state

GROUPS = ("k=1", "k=2", "k=3-5", "k=6-20", "k>20", "inconsistent", "repeat", "invalid")


def guess_group(history: Sequence[Turn], guess: str, table: FeedbackTable) -> str:
    """Which of `GROUPS` a guess falls in, given the turns before it (see the module docstring)."""
    if guess in {t.guess for t in history}:
        return "repeat"
    if guess not in table.index:
        return "invalid"
    consistent = table.consistent(history)
    if not consistent[table.index[guess]]:
        return "inconsistent"
    k = int(consistent.sum())
    return "k=1" if k == 1 else "k=2" if k == 2 else "k=3-5" if k <= 5 else "k=6-20" if k <= 20 else "k>20"


def returns_to_go(turns: Sequence[Turn], gamma: float, tokenizer) -> np.ndarray:
    """G_i = r_i + γ^{n_{i+1}} G_{i+1}, the discounted return from guess i's `</a>` on.

    Every agent token is one discounted step and environment tokens are skipped
    (docs/algorithm.md §1), so guess i+1's reward arrives n_{i+1} = |guess i+1| + 1
    actions (its letters and its `</a>`) after guess i's.
    """
    g = np.zeros(len(turns))
    later = 0.0
    for i in reversed(range(len(turns))):
        g[i] = later = turns[i].reward + later
        later *= gamma ** (len(tokenizer.encode(turns[i].guess)) + 1)
    return g


def end_of_guess_q(model_config: ilql.ModelConfig, state, games: Sequence[Sequence[Turn]], tokenizer,
                   batch_size: int = 64) -> list[np.ndarray]:
    """Q̄(h_t)[`</a>`] = min of the target heads, at the state emitting each guess's `</a>`, per game.

    Games become the training layout (`episodes_to_arrays`, padded to the
    model's positions, so one compiled forward serves every batch); attention
    is causal, so padding never reaches a real position.
    """
    end = tokenizer.end_a_id
    n_positions = model_config.trunk.n_positions
    game_episodes = [turns_to_episode(turns) for turns in games]
    for i, episode in enumerate(game_episodes):
        n = len(episodes.episode_tokens(episode, tokenizer))
        if n > n_positions:
            raise ValueError(f"game {i} is {n} tokens, longer than the model's {n_positions} positions")
    arrays = episodes.episodes_to_arrays(game_episodes, tokenizer, n_positions)

    @jax.jit
    def q_bar_end(tokens, mask):
        o = ilql.apply(model_config, state.params, state.target_params, tokens, mask)
        return o.target_q_t[..., end]

    out = []
    for start in range(0, len(game_episodes), batch_size):
        tokens = arrays["tokens"][start:start + batch_size]
        q_bar = np.asarray(q_bar_end(tokens, arrays["attention_mask"][start:start + batch_size]))
        for row in range(len(tokens)):
            out.append(q_bar[row, np.flatnonzero(tokens[row, 1:] == end)])  # h_t predicts x_{t+1}
    return out


def calibration(model_config: ilql.ModelConfig, state, games: Sequence[WordleGame], words: Sequence[str],
                gamma: float, tokenizer) -> tuple[list[dict], dict[str, float]]:
    """Rows of (turn, group, n, mean Q̄, mean G, s.e. of G), turn "all" included, and the R² summary."""
    table = FeedbackTable(words)
    turns = [g.turns for g in games]
    q_bar = end_of_guess_q(model_config, state, turns, tokenizer)
    records = []  # (turn, group, Q̄, G)
    for game_turns, q in zip(turns, q_bar):
        if len(q) != len(game_turns):
            raise AssertionError(f"found {len(q)} `</a>` states for {len(game_turns)} guesses")
        g = returns_to_go(game_turns, gamma, tokenizer)
        for i, turn in enumerate(game_turns):
            records.append((i + 1, guess_group(game_turns[:i], turn.guess, table), float(q[i]), float(g[i])))
    cells = collections.defaultdict(list)
    for turn, group, q, g in records:
        cells[(turn, group)].append((q, g))
        cells[("all", group)].append((q, g))
    rows = []
    for (turn, group), qg in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), GROUPS.index(kv[0][1]))):
        qg = np.array(qg)
        rows.append({"turn": turn, "group": group, "n": len(qg), "q_bar": float(qg[:, 0].mean()),
                     "g": float(qg[:, 1].mean()), "g_se": float(qg[:, 1].std() / np.sqrt(len(qg)))})
    q = np.array([r[2] for r in records])
    g = np.array([r[3] for r in records])
    cell_mean = {k: np.mean([x[1] for x in v]) for k, v in cells.items()}
    g_cells = np.array([cell_mean[(r[0], r[1])] for r in records])
    r2 = lambda pred: float(1.0 - ((g - pred) ** 2).mean() / g.var()) if g.var() > 0 else float("nan")
    summary = {"n_guesses": len(records), "r2_q_bar": r2(q), "r2_groups": r2(g_cells),
               "corr_q_bar_g": float(np.corrcoef(q, g)[0, 1]) if q.std() > 0 and g.std() > 0 else float("nan")}
    return rows, summary


def letter_advantages(model_config: ilql.ModelConfig, state, history: Sequence[Turn], guess: str,
                      tokenizer) -> list[dict]:
    """Per action of typing `guess` (its letters, then `</a>`) after `history`: the token, log π_β, Q̄, V, A.

    A = min(Q̄1, Q̄2)[a] − V at the state emitting a (docs/algorithm.md §5, before clipping); the
    sampler adds β·min(A, adv_clip) to π_β's logits there.
    """
    prefix = prompt_ids(history, tokenizer)
    actions = tokenizer.encode(guess) + [tokenizer.end_a_id]
    x = jnp.asarray([prefix + actions])
    o = ilql.apply(model_config, state.params, state.target_params, x, jnp.ones_like(x))
    pi = o.pi_logits_t
    if pi is None:  # a frozen π_β is not run by `apply`
        _, pi = trunk_lib.forward(ilql.policy_params(model_config, state.params), model_config.trunk, x, jnp.ones_like(x))
    logp = np.asarray(jax.nn.log_softmax(layers.mask_padded_vocab(pi[0], tokenizer.vocab_size)))
    q_bar = np.asarray(o.target_q_t[0])
    v = np.asarray(o.v_t[0])
    rows = []
    for i, a in enumerate(actions):
        t = len(prefix) - 1 + i  # h_t emits x_{t+1}
        rows.append({"token": tokenizer.decode([a]), "log_pi_beta": float(logp[t, a]), "q_bar": float(q_bar[t, a]),
                     "v": float(v[t]), "a": float(q_bar[t, a] - v[t])})
    return rows


def load_run(workdir: str, method: str):
    """(TrainConfig, state) of the value-guided run `workdir/method`; clear errors otherwise."""
    run_dir = os.path.join(workdir, method)
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such run (is {workdir!r} a Wordle workdir and {method!r} a method of it?)")
    with open(path) as f:
        config = config_from_dict(TrainConfig, json.load(f))
    if config.step.mode != "ilql":
        raise ValueError(f"{run_dir} is a {config.step.mode!r} run: it has no values to diagnose "
                         f"(use a value-guided method: ssrl or ilql)")
    state, _ = restore(run_dir, abstract_state(config.step))
    return config, state


def format_table(rows: Sequence[dict], summary: dict[str, float]) -> str:
    lines = ["| guess | group | n | Q̄ at </a> | G (mean ± s.e.) |", "|---|---|---|---|---|"]
    lines += [f"| {r['turn']} | {r['group']} | {r['n']} | {r['q_bar']:.2f} | {r['g']:.2f} ± {r['g_se']:.2f} |"
              for r in rows]
    lines.append(f"\n{summary['n_guesses']} guesses; R² of G from Q̄ {summary['r2_q_bar']:.3f}, from the "
                 f"(guess, group) means {summary['r2_groups']:.3f}; corr(Q̄, G) {summary['corr_q_bar_g']:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.wordle.diagnose",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a `python -m experiments.wordle` workdir")
    parser.add_argument("--method", default="ilql", help="the value-guided run to read (ssrl or ilql)")
    parser.add_argument("--games", default=None, help="JSONL games (default: WORKDIR/data/heldout.jsonl)")
    parser.add_argument("--words", default="", help="comma-separated guesses whose per-letter A to print "
                        "as a game's first guess, e.g. known,share")
    args = parser.parse_args(argv)
    words = words_lib.load_vocab(os.path.join(args.workdir, "words.txt"))
    games = datasets.load_games(args.games or os.path.join(args.workdir, "data", "heldout.jsonl"), words)
    config, state = load_run(args.workdir, args.method)
    tok = tokenizers.wordle_tokenizer()
    rows, summary = calibration(config.step.model, state, games, words, config.step.loss.gamma, tok)
    out = os.path.join(args.workdir, args.method, "value_calibration.json")
    with open(out, "w") as f:
        json.dump({"rows": rows, "summary": summary}, f, indent=1)
    print(format_table(rows, summary))
    print(f"written to {out}")
    for word in filter(None, args.words.split(",")):
        letters = letter_advantages(config.step.model, state, [], word, tok)
        print(f"{word} as the first guess: " + "  ".join(
            f"{r['token']}: log π_β {r['log_pi_beta']:.2f}, A {r['a']:+.3f}" for r in letters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
