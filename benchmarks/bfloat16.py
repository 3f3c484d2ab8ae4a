"""How far bfloat16 compute moves a trained model's advantages, and whether greedy β = 16 decoding changes.

    python -m experiments.wordle --workdir runs/wordle_bf16 --methods '["bc", "ilql"]' [sizes ...]
    python -m benchmarks.bfloat16 runs/wordle_bf16 [--method ilql] [--games 128]

Reads a Wordle run's newest ILQL checkpoint (trained in float32) and evaluates
the same float32 parameters three ways: float32 compute; bfloat16 compute
(`GPT2Config(dtype="bfloat16")`: trunks and the heads' hidden layers in
bfloat16, the heads' output matmuls accumulated and returned in float32); and
bfloat16 compute with Q and V rounded to bfloat16 after the heads, which is
what the heads returned before they accumulated in float32. Prints JSON lines:

- `"bench": "bf16_advantage"`: over every action token of the held-out games
  (`WORKDIR/data/heldout.jsonl`), A(h_t, a_t) = min(Q̄1, Q̄2)(h_t)[a_t] − V(h_t)
  end to end (trunk, heads, subtraction): max and mean |A_bf16 − A_f32|, and
  mean |A_f32| for scale;
- `"bench": "bf16_greedy"`: `--games` games against held-out answers played
  greedily at the run's β (16 by default), every guess decoded from π_β + β·A:
  how many games take exactly the float32 path (same guesses, turn by turn),
  and the mean returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

if __package__ in (None, ""):  # run as `python benchmarks/bfloat16.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from benchmarks import common  # noqa: E402
from experiments import lockstep  # noqa: E402
from experiments.wordle import datasets, env, run as wordle, words as words_lib  # noqa: E402
from ilql_jax import checkpoint, files, losses, sampler, tokenizers, train  # noqa: E402
from ilql_jax.config import TrainConfig, config_from_dict  # noqa: E402
from ilql_jax.data import episodes  # noqa: E402
from ilql_jax.models import heads, ilql  # noqa: E402

VARIANTS = ("float32", "bfloat16", "bfloat16, Q and V rounded")


def load_run(run_dir: epath.Path) -> tuple[TrainConfig, object]:
    """The run's config and its newest checkpoint's state (on one device)."""
    config = config_from_dict(TrainConfig, files.read_json(run_dir / "config.json"))
    state, _ = checkpoint.restore(run_dir, train.abstract_state(config.step))
    return config, state


def model_variant(model: ilql.ModelConfig, variant: str) -> ilql.ModelConfig:
    dtype = "float32" if variant == "float32" else "bfloat16"
    return dataclasses.replace(model, trunk=dataclasses.replace(model.trunk, dtype=dtype))


class _RoundedHeads:
    """While active, Q and V are rounded to bfloat16 after the heads (the heads' former outputs)."""

    def __init__(self, active: bool):
        self.active = active

    def __enter__(self):
        self._q, self._v = heads.q_t, heads.v_t
        if self.active:
            rounded = lambda f: lambda *a: f(*a).astype(jnp.bfloat16).astype(jnp.float32)
            heads.q_t, heads.v_t = rounded(self._q), rounded(self._v)
        return self

    def __exit__(self, *exc):
        heads.q_t, heads.v_t = self._q, self._v


def advantages(model: ilql.ModelConfig, state, arrays: dict) -> np.ndarray:
    """A(h_t, a_t) at every action token (float64, flattened)."""
    @jax.jit
    def adv_t(params, target, batch):
        out = ilql.apply(model, params, target, batch["tokens"], batch["attention_mask"])
        a_t = losses.next_actions(batch["tokens"])
        q = losses.gather_actions(out.target_q_t, a_t)
        return q - out.v_t

    adv = np.asarray(adv_t(state.params, state.target_params, arrays), np.float64)
    return adv[np.asarray(arrays["action_mask"]) > 0]


def play(model: ilql.ModelConfig, state, words: list[str], n_games: int, beta: float, adv_clip, seed: int):
    """Greedy games, as `experiments.wordle.run.play` with `model_guesser` plays them; also every game's guesses."""
    tok = tokenizers.wordle_tokenizer()
    scfg = sampler.SamplerConfig(max_new_tokens=6, mode="greedy", prompt_buckets=(model.trunk.n_positions - 6,))
    answers = np.random.default_rng(seed).integers(len(words), size=n_games)
    games = [env.WordleGame(words[a], frozenset(words)) for a in answers]
    choose = lockstep.model_player(tok, model, state, lambda g: env.prompt_ids(g.turns, tok) if not g.done else [tok.a_id],
                                   jax.random.key(seed), scfg, beta=beta, adv_clip=adv_clip)
    lockstep.play_lockstep(games, choose, env.MAX_GUESSES)
    return [[t.guess for t in g.turns] for g in games], datasets.game_stats(games)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--method", default="ilql")
    parser.add_argument("--games", type=int, default=128)
    parser.add_argument("--beta", type=float, default=None, help="default: the run's (WordleConfig.beta)")
    parser.add_argument("--adv_clip", type=float, default=0.0)
    args = parser.parse_args(argv)
    workdir = epath.Path(args.workdir)
    config, state = load_run(workdir / args.method)
    beta = wordle.WordleConfig().beta if args.beta is None else args.beta
    words = words_lib.load_vocab(workdir / "words.txt")
    tok = tokenizers.wordle_tokenizer()
    heldout = datasets.load_games(workdir / "data" / "heldout.jsonl", words)
    arrays = episodes.episodes_to_arrays(datasets.games_to_episodes(heldout), tok, config.max_len)

    adv, paths, stats = {}, {}, {}
    for variant in VARIANTS:
        jax.clear_caches()  # the rounded variant has the same static config: retrace the sampler
        model = model_variant(config.step.model, variant)
        with _RoundedHeads(variant.endswith("rounded")):
            adv[variant] = advantages(model, state, arrays)
            paths[variant], stats[variant] = play(model, state, words, args.games, beta, args.adv_clip, seed=1)
    for variant in VARIANTS[1:]:
        diff = np.abs(adv[variant] - adv["float32"])
        same = sum(a == b for a, b in zip(paths[variant], paths["float32"]))
        common.emit({"bench": "bf16_advantage", "variant": variant, "actions": int(diff.size),
                     "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                     "mean_abs_adv_f32": float(np.abs(adv["float32"]).mean()),
                     "beta_times_max_diff": float(beta * diff.max())})
        common.emit({"bench": "bf16_greedy", "variant": variant, "beta": beta, "games": args.games,
                     "same_path_games": int(same), "mean_return": stats[variant]["mean_return"],
                     "mean_return_f32": stats["float32"]["mean_return"]})


if __name__ == "__main__":
    main()
