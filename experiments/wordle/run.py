"""The Wordle benchmark: one data set, six methods, 1024 evaluation games each (docs/algorithm.md §6–§7).

In execution order: word list → mixed-quality games (saved) → token arrays →
for each method, train through `train_and_evaluate` and play the evaluation
games (greedily; sampled at temperature 1 with `--data lmrl`, as LMRL-Gym's
eval scripts do) → `results.json`, `results.md` and a bar plot in the workdir.

Methods (all on the same data):
  bc      π_β alone on every game;
  pbcNN   %BC: π_β on the top NN% of games by return;
  ssrl    single-step RL: ILQL with τ = 0.5 (values of π_β), decoded with β;
  ilql    ILQL with τ = 0.7, decoded with β.
Value-guided methods decode on π_β + β·A with A clipped at `adv_clip`
(16 and 0 in the paper: only bad actions are pushed down). Each is also played
at β = 0 (row "ilql at β = 0"): its π_β alone, so the table separates what the
values add from what π_β's own training does.

Single-step RL and ILQL start from the BC run's checkpoint (`rl_from_bc`): π_β
and the value trunk begin as the BC baseline, and π_β stays exactly the BC
baseline during the value steps (`freeze_policy`), so every method gets
`bc_steps` of policy training and a value-guided method differs from BC by
β·A alone (`--freeze_policy false` keeps training π_β on its BC loss).
Scaling the paper's settings to a CPU: BC at learning rate 6e-4 for 3000
steps, the value-learning runs at 4e-3 for 1200 steps (warm-up and cosine
decay), and a Polyak rate of 0.2 (0.005 published):
at 0.005 the values had not converged after 1000 steps (mean V ≈ −0.9 against
a mean discounted return-to-go of −1.9 in the data); at 0.2 they reach it in
~250 steps. The README's Wordle section has the runs behind these choices.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from etils import epath

from experiments import aggregate as aggregate_lib, lmrl, lockstep, methods, plots, results
from experiments.wordle import datasets, env, words as words_lib
from experiments.wordle.policies import ExpertPolicy
from ilql_jax import losses, recipe, sampler, tokenizers
from ilql_jax.config import TrainConfig
from ilql_jax.data import episodes
from ilql_jax.models import gpt2, ilql
from ilql_jax.state import OptimConfig

METHODS = ("bc", "pbc10", "pbc20", "pbc30", "ssrl", "ilql")
VALUE_GUIDED = ("ssrl", "ilql")


@dataclasses.dataclass(frozen=True)
class WordleConfig:
    """One Wordle benchmark run.

    Attributes:
      n_words: the most frequent five-letter words from wordfreq (answers and guesses).
      vocab: a word-list file (one word a line) instead of `n_words`.
      mixture: which behaviour mix makes the data (`datasets.MIXTURES`: "default",
        a habitual poor opener followed by mostly expert play; "repeats", the
        earlier default with a repeating player; "habit", "opener" and "lmrl"; see
        the `datasets` docstring).
      data: "ours" (the data `mixture` names) or "lmrl": LMRL-Gym's Wordle data
        (their player, `datasets.LMRL_MIXTURES`; `mixture` must stay "default"),
        and every row also scored as LMRL-Gym scores Wordle (`experiments.lmrl`),
        with their data average and maximum and with ours (our data's mean return
        and the expert's). Their runs use 400 words (`--n_words 400`).
      n_train_games: games in the offline data set.
      n_heldout_games: games for the held-out loss.
      n_eval_games: games played per method (fixed answers and seeds).
      seed: the data and evaluation-games seed, and the first training seed.
      seeds: training seeds seed, seed + 1, …: each trains every method on the same games; the table is
        their mean ± the standard error across seeds.
      n_layer, n_embd, n_head: the GPT-2 shape (random init, 35-token vocabulary).
      max_len: tokens per game (six guesses of 12 tokens plus markup fit in 75).
      batch_size: episodes per step.
      bc_steps: steps for BC and %BC.
      rl_steps: steps for single-step RL and ILQL.
      learning_rate: AdamW learning rate (the paper's 1e-5 is for GPT-2 small at batch 1024).
      rl_learning_rate: the learning rate of single-step RL and ILQL (None: `learning_rate`).
      tau: ILQL's expectile (single-step RL uses 0.5).
      alpha_cql: CQL weight (1e-4 published for Wordle).
      polyak_alpha: target update rate (0.005 published, for many more steps).
      rl_from_bc: single-step RL and ILQL start π_β and the value trunk from
        this run's BC checkpoint (docs/algorithm.md §2 allows π_β from a BC run); π_β
        keeps its BC loss during the value steps unless `freeze_policy`.
      freeze_policy: with `rl_from_bc`, π_β stays the BC checkpoint during the
        value steps (no BC loss, no update), so single-step RL, ILQL, BC and %BC
        all get `bc_steps` of policy training and the value-guided methods
        differ from BC by β·A alone.
      target_on_online_trunk: the target Q heads read the online value trunk
        (docs/algorithm.md §2's cheaper option: one trunk forward less per step).
      head_init: how the V and Q heads start, "pytorch" or "flax" (`ilql.ModelConfig.head_init`).
      warmup_steps, cosine: learning-rate warm-up, then cosine decay to 0 (else constant).
      beta, adv_clip: inference β and the advantage's upper clip.
      decode: "greedy" or "sample" (temperature 1, no filtering: LMRL-Gym's Wordle eval scripts sample, and
        their data player picks a random consistent word, which greedy decoding of its clone cannot reproduce);
        None: "sample" with `--data lmrl`, "greedy" otherwise.
      methods: which of `METHODS` to run.
    """

    n_words: int = 200
    vocab: str | None = None
    mixture: str = "default"
    data: str = "ours"
    n_train_games: int = 40000
    n_heldout_games: int = 256
    n_eval_games: int = 1024
    seed: int = 0
    seeds: int = 1
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    max_len: int = 80
    batch_size: int = 32
    bc_steps: int = 3000
    rl_steps: int = 1200
    learning_rate: float = 6e-4
    rl_learning_rate: float | None = 4e-3
    tau: float = 0.7
    alpha_cql: float = 1e-4
    polyak_alpha: float = 0.2
    rl_from_bc: bool = True
    freeze_policy: bool = True
    target_on_online_trunk: bool = True
    # The library's default ("pytorch") is what the graph walks need. Here, over two seeds from the same BC
    # checkpoints, its ILQL flipped the first guess in one (-1.733) and tied BC in the other (-2.095), where
    # "flax" flipped it in both (-1.776, -1.764); docs/results/wordle.md.
    head_init: str = "flax"
    warmup_steps: int = 50
    cosine: bool = True
    beta: float = 16.0
    adv_clip: float = 0.0
    decode: str | None = None
    methods: tuple[str, ...] = METHODS

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.mixture not in datasets.MIXTURES:
            raise ValueError(f"unknown mixture {self.mixture!r}; choose from {sorted(datasets.MIXTURES)}")
        if self.data not in ("ours", "lmrl"):
            raise ValueError(f"unknown data {self.data!r}; choose from ['lmrl', 'ours']")
        if self.data == "lmrl" and self.mixture != "default":
            raise ValueError("--data lmrl brings LMRL-Gym's own player: leave --mixture at its default")
        if self.decode not in (None, "greedy", "sample"):
            raise ValueError(f"unknown decode {self.decode!r}; choose from ['greedy', 'sample']")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {METHODS}")
        if self.rl_from_bc and "bc" not in self.methods and set(self.methods) & set(VALUE_GUIDED):
            raise ValueError("rl_from_bc needs the 'bc' method: single-step RL and ILQL start from its checkpoint")
        if self.freeze_policy and not self.rl_from_bc:
            raise ValueError("freeze_policy needs rl_from_bc: a frozen π_β must start from the BC checkpoint "
                             "(with --rl_from_bc false, also pass --freeze_policy false)")


PRESETS = {
    "default": WordleConfig(),
    "smoke": WordleConfig(n_words=60, n_train_games=256, n_heldout_games=32, n_eval_games=64, n_layer=1,
                          n_embd=32, batch_size=16, bc_steps=10, rl_steps=10, warmup_steps=2),
}


def decode_mode(cfg: WordleConfig) -> str:
    """How the evaluation games are decoded: `cfg.decode`, or LMRL-Gym's sampling for their data."""
    return cfg.decode or ("sample" if cfg.data == "lmrl" else "greedy")


def trunk_config(cfg: WordleConfig) -> gpt2.GPT2Config:
    return gpt2.GPT2Config(vocab_size=tokenizers.wordle_tokenizer().vocab_size, n_positions=cfg.max_len,
                           n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=0.0)


def model_config(cfg: WordleConfig) -> ilql.ModelConfig:
    return ilql.ModelConfig(trunk=trunk_config(cfg), target_on_online_trunk=cfg.target_on_online_trunk,
                            frozen_policy=cfg.freeze_policy, head_init=cfg.head_init)


def optim_config(cfg: WordleConfig, num_steps: int, learning_rate: float | None = None) -> OptimConfig:
    return OptimConfig(learning_rate=cfg.learning_rate if learning_rate is None else learning_rate,
                       warmup_steps=cfg.warmup_steps,
                       schedule="cosine" if cfg.cosine else "constant",
                       total_steps=num_steps if cfg.cosine else None)


def train_config(cfg: WordleConfig, method: str, bc_workdir: str | None = None, seed: int | None = None) -> TrainConfig:
    """The loop's config for one method at training seed `seed` (`cfg.seed` by default); `bc_workdir` is the BC
    run that `rl_from_bc` starts from."""
    model = model_config(cfg)
    runs = recipe.BCThenILQL(
        model, losses.LossConfig(gamma=0.99, tau=0.5 if method == "ssrl" else cfg.tau, alpha_cql=cfg.alpha_cql),
        bc_steps=cfg.bc_steps, ilql_steps=cfg.rl_steps, bc_optim=optim_config(cfg, cfg.bc_steps),
        ilql_optim=optim_config(cfg, cfg.rl_steps, cfg.rl_learning_rate), polyak_alpha=cfg.polyak_alpha,
        bc_model=model, loop=dict(batch_size=cfg.batch_size, max_len=cfg.max_len, eval_every=0, eval_batches=4,
                                  seed=cfg.seed if seed is None else seed))
    if method not in VALUE_GUIDED:
        return runs.bc(methods.top_fraction(method))
    if cfg.rl_from_bc and bc_workdir is None:
        raise ValueError(f"rl_from_bc: {method} needs the BC run's workdir")
    return runs.ilql(bc_workdir if cfg.rl_from_bc else None)


def play(choose, words: list[str], n_games: int, seed: int) -> dict[str, float]:
    """Plays `n_games` in lockstep; `choose(games) -> guesses`, one per game (`lockstep.play_lockstep`).

    Answers come from `seed` as in `datasets.evaluate_policy`, so every method
    and the expert meet the same games. Every call gets all games (finished
    ones too, their guesses ignored) so the decoder sees one batch shape.
    """
    answers = np.random.default_rng(seed).integers(len(words), size=n_games)
    word_set = frozenset(words)
    games = [env.WordleGame(words[a], word_set) for a in answers]
    lockstep.play_lockstep(games, choose, env.MAX_GUESSES)
    return datasets.game_stats(games)


def model_guesser(cfg: WordleConfig, method: str, state, tok, seed: int):
    """Guesses from a trained model (`decode_mode`): π_β for BC, π_β + β·A for the value-guided methods."""
    value_guided = method in VALUE_GUIDED
    scfg = sampler.SamplerConfig(max_new_tokens=6, mode=decode_mode(cfg), prompt_buckets=(cfg.max_len - 6,))
    return lockstep.model_player(tok, model_config(cfg), state,
                                 lambda g: env.prompt_ids(g.turns, tok) if not g.done else [tok.a_id],
                                 jax.random.key(seed), scfg, beta=cfg.beta if value_guided else 0.0,
                                 adv_clip=cfg.adv_clip if value_guided else None)


def beta0_name(method: str) -> str:
    """The result row of a value-guided method's checkpoint decoded at β = 0 (its π_β alone)."""
    return f"{method} at β = 0"


def print_row(row: dict, n_seeds: int = 1) -> None:
    label = f"seed {row['seed']} " if n_seeds > 1 else ""
    print(f"{label}{row['method']}: mean return {row['mean_return']:.3f} ± {row['stderr']:.3f}, "
          f"win rate {row['win_rate']:.3f}")


def run(cfg: WordleConfig, workdir: str) -> list[dict]:
    """Runs the benchmark (every method once per training seed); returns the rows aggregated over seeds
    (`experiments.aggregate`); results.json also keeps every seed's rows."""
    t0 = time.perf_counter()
    workdir = epath.Path(workdir)
    tok = tokenizers.wordle_tokenizer()
    words = words_lib.load_vocab(cfg.vocab) if cfg.vocab else words_lib.default_words(cfg.n_words)
    # The words and the seeded games are the same on every process; process 0 records them.
    words_lib.save_vocab(workdir / "words.txt", words)

    games = datasets.generate_games(words, cfg.n_train_games + cfg.n_heldout_games, cfg.seed,
                                    datasets.MIXTURES["lmrl" if cfg.data == "lmrl" else cfg.mixture])
    train_games, heldout_games = games[:cfg.n_train_games], games[cfg.n_train_games:]
    datasets.save_games(workdir / "data" / "train.jsonl", train_games)
    datasets.save_games(workdir / "data" / "heldout.jsonl", heldout_games)
    train_arrays = episodes.episodes_to_arrays(datasets.games_to_episodes(train_games), tok, cfg.max_len)
    heldout_arrays = episodes.episodes_to_arrays(datasets.games_to_episodes(heldout_games), tok, cfg.max_len)
    returns = np.array([g.total_return for g in train_games])
    data_stats = datasets.game_stats(train_games)
    print(f"data: {len(train_games)} games, mean return {data_stats['mean_return']:.3f}, "
          f"win rate {data_stats['win_rate']:.3f}")

    expert = ExpertPolicy(words)
    rows = [{"method": "expert (upper reference)", "seed": None, **datasets.evaluate_policy(
        expert, words, cfg.n_eval_games, seed=cfg.seed + 1)}]
    rows.append({"method": "data (behaviour mix)", "seed": None, **data_stats})
    rows += aggregate_lib.over_seeds(cfg.seed, cfg.seeds, workdir, lambda seed, seed_dir: seed_rows(
        cfg, seed, seed_dir, tok, words, train_arrays, heldout_arrays, returns))
    metrics = METRICS
    if cfg.data == "lmrl":
        norms = lmrl_normalisations(data_stats["mean_return"], rows[0]["mean_return"])
        rows = [{**r, **{f"score_{k}": lmrl.score(r["mean_return"], n) for k, n in norms.items()}} for r in rows]
        metrics = METRICS + ("score_theirs", "score_ours")
    table = aggregate_lib.aggregate(rows, ("method",), metrics, {"mean_return": "stderr"})
    write_results(workdir, table, rows, cfg, time.perf_counter() - t0)
    return table


def lmrl_normalisations(data_mean: float, expert_mean: float) -> dict[str, lmrl.Normalisation]:
    """LMRL-Gym's Wordle normalisation, and ours: our data's mean return as the 50 and our expert's as the 100."""
    theirs = lmrl.THEIRS["wordle"]
    return {"theirs": theirs, "ours": dataclasses.replace(theirs, average=data_mean, maximum=expert_mean)}


METRICS = ("mean_return", "win_rate", "mean_guesses", "repeat_rate", "invalid_rate", "n_games")


def seed_rows(cfg: WordleConfig, seed: int, workdir: epath.Path, tok, words: list[str], train_arrays, heldout_arrays,
              returns: np.ndarray) -> list[dict]:
    """Trains every method at one training seed and plays the evaluation games (the same for every seed)."""
    rows = []
    runs = methods.train_methods(
        [m for m in METHODS if m in cfg.methods],  # BC first: rl_from_bc reads its checkpoint
        workdir, lambda m: train_config(cfg, m, bc_workdir=str(workdir / "bc"), seed=seed),
        lambda m: (train_arrays, heldout_arrays), returns)
    for method, _, tc, state, seconds in runs:
        start = time.perf_counter()
        stats = play(model_guesser(cfg, method, state, tok, seed), words, cfg.n_eval_games, cfg.seed + 1)
        rows.append({"method": method, "seed": seed, **stats, "train_steps": tc.num_steps,
                     "seconds": round(seconds + time.perf_counter() - start, 1)})
        print_row(rows[-1], cfg.seeds)
        if method in VALUE_GUIDED:
            # The same checkpoint at β = 0 is its π_β alone: what the values add is the gap to this row.
            stats = play(model_guesser(dataclasses.replace(cfg, beta=0.0), method, state, tok, seed),
                         words, cfg.n_eval_games, cfg.seed + 1)
            rows.append({"method": beta0_name(method), "seed": seed, **stats})
            print_row(rows[-1], cfg.seeds)
    return rows


COLUMNS: tuple[results.Column, ...] = (
    ("method", lambda r: r["method"]),
    ("mean return ± s.e.", lambda r: aggregate_lib.mean_se(r, "mean_return")),
    ("per seed", lambda r: aggregate_lib.per_seed(r, "mean_return")),
    ("win rate", lambda r: aggregate_lib.mean_se(r, "win_rate")),
    ("mean guesses", lambda r: f"{r['mean_guesses']:.2f}"),
    ("repeated guesses", lambda r: f"{r['repeat_rate']:.3f}"),
    ("invalid guesses", lambda r: f"{r['invalid_rate']:.3f}"),
    ("games", lambda r: f"{r['n_games']:g}"),
)


def write_results(workdir: str | epath.PathLike, table: list[dict], rows: list[dict], cfg: WordleConfig,
                  seconds: float) -> None:
    words = cfg.vocab or f"{cfg.n_words}"
    n_methods = sum(r["method"] in METHODS for r in table)
    spread = results.spread(cfg.seeds, "games")
    columns, scored = COLUMNS, ""
    sampled = ", moves sampled at temperature 1" if decode_mode(cfg) == "sample" else ""
    if cfg.data == "lmrl":
        published = lmrl.PUBLISHED["wordle"]
        base = methods.family
        columns = COLUMNS[:1] + (
            ("LMRL-Gym score ± s.e.", lambda r: aggregate_lib.mean_se(r, "score_theirs", ".1f")),
            ("score, our average and max", lambda r: f"{r['score_ours']:.1f}"),
            ("published", lambda r: f"{published[base(r['method'])]:.1f}" if base(r["method"]) in published else ""),
        ) + COLUMNS[1:]
        theirs = lmrl.THEIRS["wordle"]
        scored = (f" LMRL-Gym's data and scores: data average {theirs.average:g} and maximum {theirs.maximum:g} "
                  f"(theirs); ours: the data's and the expert's mean returns.")
    results.write_table(workdir, table, columns,
                        f"{n_methods} methods, {cfg.n_train_games} training games over {words} words, "
                        f"β = {cfg.beta}, adv_clip = {cfg.adv_clip}{sampled}; {spread}; {seconds / 60:.1f} min in all."
                        + scored, seed_rows=rows)
    plots.bar_plot_returns(epath.Path(workdir) / "results.png", table, "Wordle")
