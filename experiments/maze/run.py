"""LMRL-Gym's maze benchmark: one data set, BC, %BC, ILQL (a β sweep) and MC returns, scored as LMRL-Gym scores them.

In execution order: the maze tokenizer → mixed-quality episodes (saved) →
packed rows (each turn seen through its own context window, `ilql_jax.data.packing`)
→ for each method, train through `train_and_evaluate` and play LMRL-Gym's
evaluation (every one of the 25 starts, `rollouts_per_start` episodes each,
sampling at temperature 1), all episodes in lockstep → `results.json`,
`results.md` and a bar plot in the workdir.

The variants (`env`): "fo", fully observed, where the agent acts on its current
observation alone (LMRL-Gym's evaluation keeps 1 text); "po", partially
observed, where it acts on the last `last_k` texts (observations and its own
moves; 40 in LMRL-Gym, and here by default).

Methods (all on the same data):
  bc      π_β alone;
  pbcNN   %BC: π_β on the top NN% of episodes by return;
  ilql    ILQL (τ, γ, α_cql) from the BC run's checkpoint with π_β frozen there
          (LMRL-Gym's ILQL starts from its BC checkpoint too), decoded by sampling
          softmax(log π_β + β·A) at every β of `betas` (rows "ilql β=b"; the row
          "ilql" is `beta`);
  mc      MC returns: the same, with τ = 0.5 and no bootstrapping across turns:
          each turn is its own terminal block whose reward is the discounted return
          that followed it in the data, so Q regresses on observed returns.
Every trained method is scored raw and normalised (`experiments.lmrl.score`),
with LMRL-Gym's data average and with ours (the mean return of our data).
For the value-guided methods the first step is diagnosed at every start
(`first_step_diagnostics`): V against the optimal value, how often the values
and the steered policy pick an optimal move, and the advantage's size against
log π_β's.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from experiments import aggregate as aggregate_lib, lmrl, lockstep, methods, plots, results
from experiments.maze import datasets, env, vocab
from experiments.maze.policies import OptimalPolicy
from ilql_jax import files, losses, recipe, sampler
from ilql_jax.config import TrainConfig
from ilql_jax.data import episodes, packing
from ilql_jax.models import gpt2, ilql
from ilql_jax.models import trunk as trunk_lib
from ilql_jax.state import OptimConfig

VALUE_GUIDED = ("ilql", "mc")
LMRL_LAST_K = {"fo": 1, "po": 40}


@dataclasses.dataclass(frozen=True)
class MazeConfig:
    """One maze benchmark run.

    Attributes:
      variant: "fo" (fully observed) or "po" (partially observed).
      last_k: texts the agent sees (`env.MazeGame`); None: LMRL-Gym's, 1 for fo and 40 for po.
      mixture: the behaviour mix of the data (`datasets.MIXTURES`).
      noise: ε of the mix's noisy expert.
      timeout: how the value methods read an episode that ran out of steps: "truncate" (its last,
        refused action bootstraps like a move into a wall) or "terminal" (LMRL-Gym's; see
        `datasets.episode_chain`).
      n_train: episodes in the data set.
      n_heldout: episodes for the held-out loss.
      rollouts_per_start: evaluation episodes from each of the 25 starts (32 in LMRL-Gym's eval scripts).
      seed: the data and evaluation seed, and the first training seed.
      seeds: training seeds seed, seed + 1, …: each trains every method on the same data; the
        table is their mean ± the standard error across seeds.
      n_layer, n_embd, n_head: the GPT-2 shape (random init, `vocab.maze_tokenizer`).
      max_len: tokens per packed row; None: 128 for fo, 256 for po.
      batch_size: rows per step.
      bc_steps: steps of BC and %BC.
      rl_steps: steps of ILQL and MC returns; None: 4000 for fo (the values need them: at 1500 ILQL scored
        64.8 at its best β, at 4000 99.5, seed 0, docs/results/maze.md) and 1500 for po (its 256-token rows
        already take 24 minutes a seed at 1500).
      learning_rate, rl_learning_rate: AdamW learning rates (warm-up, then cosine decay to 0).
      warmup_steps: learning-rate warm-up.
      tau, gamma, alpha_cql: ILQL's expectile, per-token discount and CQL weight.
      polyak_alpha: target update rate.
      head_init: how the V and Q heads start ("pytorch" or "flax", `ilql.ModelConfig.head_init`).
      beta: the β of the "ilql" and "mc" rows; betas: every β ILQL is also played at.
      adv_clip: the advantage's upper clip when decoding (None: LMRL-Gym's, no clip).
      methods: "bc", "pbcNN", "ilql", "mc" (ILQL and MC start from "bc"'s checkpoint).
      diagnose: the first-step diagnostics of the value-guided methods.
    """

    variant: str = "fo"
    last_k: int | None = None
    mixture: str = "default"
    noise: float = 0.5
    timeout: str = "truncate"
    n_train: int = 1000
    n_heldout: int = 64
    rollouts_per_start: int = 32
    seed: int = 0
    seeds: int = 1
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    max_len: int | None = None
    batch_size: int = 32
    bc_steps: int = 800
    rl_steps: int | None = None
    learning_rate: float = 1e-3
    rl_learning_rate: float = 1e-3
    warmup_steps: int = 50
    tau: float = 0.9
    gamma: float = 0.99
    alpha_cql: float = 0.01
    polyak_alpha: float = 0.1
    head_init: str = "flax"
    beta: float = 4.0
    betas: tuple[float, ...] = (4.0, 16.0, 64.0)
    adv_clip: float | None = None
    methods: tuple[str, ...] = ("bc", "pbc10", "ilql")
    diagnose: bool = True

    def __post_init__(self):
        if self.variant not in env.VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose from {sorted(env.VARIANTS)}")
        if self.mixture not in datasets.MIXTURES:
            raise ValueError(f"unknown mixture {self.mixture!r}; choose from {sorted(datasets.MIXTURES)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.timeout not in ("truncate", "terminal"):
            raise ValueError(f"timeout must be 'truncate' or 'terminal', got {self.timeout!r}")
        if self.last_k is not None and self.last_k < 1:
            raise ValueError(f"last_k must be >= 1, got {self.last_k}")
        methods.check(self.methods, ("bc", "ilql", "mc"))
        if set(self.methods) & set(VALUE_GUIDED) and "bc" not in self.methods:
            raise ValueError("ilql and mc start from the BC run's checkpoint: add 'bc' to methods")
        if self.rollouts_per_start < 1 or self.n_train < 2 or self.n_heldout < 1:
            raise ValueError("rollouts_per_start and n_heldout must be >= 1 and n_train >= 2")

    @property
    def window(self) -> int:
        return LMRL_LAST_K[self.variant] if self.last_k is None else self.last_k

    @property
    def value_steps(self) -> int:
        return (4000 if self.variant == "fo" else 1500) if self.rl_steps is None else self.rl_steps

    @property
    def row_len(self) -> int:
        return (128 if self.variant == "fo" else 256) if self.max_len is None else self.max_len


PRESETS = {
    "default": MazeConfig(),
    "smoke": MazeConfig(n_train=24, n_heldout=4, rollouts_per_start=1, n_layer=1, n_embd=32, batch_size=4,
                        bc_steps=6, rl_steps=6, warmup_steps=1, betas=(4.0,), methods=("bc", "pbc50", "ilql", "mc")),
}

MAX_NEW_TOKENS = 3  # a move is one token, then </a>; one more lets a malformed reply show as an illegal action


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def returns_to_go(game: env.MazeGame, tok, gamma: float) -> list[float]:
    """Each turn's discounted return from that turn on, discounted per token as the ILQL chain does: a turn's
    reward is read at its `</a>`, one transition past its last action token, and the next turn's reward after
    that turn's action tokens and `</a>`."""
    n = [len(tok.encode(t.action)) + 1 for t in game.turns]  # transitions a turn spans, </a> included
    out, g = [], 0.0
    for k in reversed(range(len(game.turns))):
        g = game.turns[k].reward + (gamma ** n[k + 1] * g if k + 1 < len(game.turns) else 0.0)
        out.append(g)
    return out[::-1]


def mc_chains(games, tok, gamma: float) -> list[packing.Chain]:
    """MC returns' data: every turn a terminal chain of its own, rewarded with its return-to-go."""
    return [packing.Chain((packing.Step((episodes.env(t.context),), t.action, g),), terminal=True)
            for game in games for t, g in zip(game.turns, returns_to_go(game, tok, gamma))]


def top_episodes(games, fraction: float) -> list:
    """%BC's data: the top `fraction` of episodes by return (at least one; ties broken by order)."""
    k = max(1, int(round(fraction * len(games))))
    order = np.argsort([-g.total_return for g in games], kind="stable")
    return [games[i] for i in sorted(order[:k])]


def pack(games, tok, cfg: MazeConfig, chains=None) -> dict[str, np.ndarray]:
    chains = [datasets.episode_chain(g, cfg.timeout) for g in games] if chains is None else chains
    return packing.chains_to_arrays(chains, tok, cfg.row_len)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def trunk_config(cfg: MazeConfig, vocab_size: int) -> gpt2.GPT2Config:
    return gpt2.GPT2Config(vocab_size=vocab_size, n_positions=cfg.row_len, n_embd=cfg.n_embd,
                           n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=0.0)


def model_config(cfg: MazeConfig, vocab_size: int) -> ilql.ModelConfig:
    return ilql.ModelConfig(trunk=trunk_config(cfg, vocab_size), target_on_online_trunk=True, frozen_policy=True,
                            head_init=cfg.head_init)


def train_config(cfg: MazeConfig, method: str, vocab_size: int, seed: int, bc_workdir: str) -> TrainConfig:
    """The loop's config for one method: BC and %BC from scratch; ILQL and MC from the BC run, π_β frozen."""
    def optim(learning_rate: float, steps: int) -> OptimConfig:
        return OptimConfig(learning_rate=learning_rate, warmup_steps=cfg.warmup_steps, schedule="cosine",
                           total_steps=steps)

    runs = recipe.BCThenILQL(
        model_config(cfg, vocab_size),
        losses.LossConfig(gamma=cfg.gamma, tau=cfg.tau if method == "ilql" else 0.5, alpha_cql=cfg.alpha_cql),
        bc_steps=cfg.bc_steps, ilql_steps=cfg.value_steps, bc_optim=optim(cfg.learning_rate, cfg.bc_steps),
        ilql_optim=optim(cfg.rl_learning_rate, cfg.value_steps), polyak_alpha=cfg.polyak_alpha,
        loop=dict(batch_size=cfg.batch_size, max_len=cfg.row_len, eval_every=0, eval_batches=2, seed=seed))
    # %BC trains on its own rows (`top_episodes`), not on a fraction the loop picks.
    return runs.ilql(bc_workdir) if method in VALUE_GUIDED else runs.bc()


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def eval_games(cfg: MazeConfig) -> list[env.MazeGame]:
    """LMRL-Gym's evaluation: `rollouts_per_start` fresh episodes from each of the 25 starts."""
    return [env.MazeGame(cfg.variant, s, last_k=cfg.window)
            for s in env.start_positions() for _ in range(cfg.rollouts_per_start)]


def prompt(game: env.MazeGame, tok) -> list[int]:
    """The ids the agent acts on: its window as one environment segment, `<s>window</s>`, as in training."""
    return episodes.prompt_tokens((episodes.env(game.context()),), tok)


def model_chooser(cfg: MazeConfig, state, tok, key: jax.Array, beta: float, guided: bool):
    """Moves sampled at temperature 1 from π_β (+ β·A when `guided`), as `lockstep.play_lockstep` wants them."""
    scfg = sampler.SamplerConfig(max_new_tokens=MAX_NEW_TOKENS, mode="sample", prompt_buckets=(_longest_window(cfg, tok),))
    choose = lockstep.model_player(tok, model_config(cfg, tok.vocab_size), state, lambda g: prompt(g, tok), key, scfg,
                                   beta=beta if guided else 0.0, adv_clip=cfg.adv_clip if guided else None)
    # LMRL-Gym's out_str_process: one trailing newline, whatever was generated.
    return lambda games: [t.removesuffix("\n") + "\n" for t in choose(games)]


def _longest_window(cfg: MazeConfig, tok) -> int:
    """The longest prompt a window can make: `last_k` of the longest texts, framed by `<s>` and `</s>`."""
    texts = vocab.corpus()
    longest_obs = max(len(tok.encode(t)) for t in texts if t not in env.ACTIONS)
    longest_move = max(len(tok.encode(a)) for a in env.ACTIONS)
    n_obs = (cfg.window + 1) // 2
    return n_obs * longest_obs + (cfg.window - n_obs) * longest_move + 2


def play(cfg: MazeConfig, choose) -> dict[str, float]:
    games = eval_games(cfg)
    # The longest episode: MAX_STEPS moves and the one that gets "Failure".
    lockstep.play_lockstep(games, choose, env.MAX_STEPS + 1, buckets=lockstep.power_of_two_buckets(len(games)))
    return datasets.episode_stats(games)


def optimal_value(start, gamma: float) -> float:
    """V* of the token-level MDP at `start`: d moves to the goal, each of two transitions (the move token,
    then `</a>` with the reward), -1 on every move but the last."""
    d = env.distances_to_goal()[tuple(start)]
    return -sum(gamma ** (2 * k + 1) for k in range(d - 1))


def first_step_diagnostics(cfg: MazeConfig, state, tok, beta: float) -> dict[str, float]:
    """At each of the 25 starts (first step): V against the optimal V*, whether argmax Q̄ over the four moves
    and argmax(log π_β + β·A) pick an optimal move, π_β's probability of an optimal move, and the spread of
    A and of log π_β over the moves (how far β·A can move π_β)."""
    model = model_config(cfg, tok.vocab_size)
    starts = env.start_positions()
    prompts = [prompt(env.MazeGame(cfg.variant, s, last_k=cfg.window), tok) for s in starts]
    width = max(map(len, prompts))
    tokens = np.full((len(prompts), width), tok.pad_id, np.int32)
    mask = np.zeros_like(tokens)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)], mask[i, :len(p)] = p, 1
    last = np.array([len(p) - 1 for p in prompts])
    out = ilql.apply(model, state.params, state.target_params, jnp.asarray(tokens), jnp.asarray(mask))
    _, pi_logits = trunk_lib.forward(ilql.policy_params(model, state.params), model.trunk, jnp.asarray(tokens),
                                     jnp.asarray(mask))
    rows = np.arange(len(starts))
    moves = [tok.encode(a)[0] for a in env.ACTIONS]
    v = np.asarray(out.v_t)[rows, last]
    q = np.asarray(out.target_q_t)[rows, last][:, moves]
    log_pi = np.asarray(jax.nn.log_softmax(pi_logits[..., :tok.vocab_size], axis=-1))[rows, last][:, moves]
    adv = q - v[:, None]
    dist = env.distances_to_goal()
    best = np.array([[dist.get((s[0] + dr, s[1] + dc), 10**6) == dist[s] - 1 for dr, dc in env.ACTIONS.values()]
                     for s in starts])
    v_star = np.array([optimal_value(s, cfg.gamma) for s in starts])
    pick = lambda x: best[rows, np.argmax(x, axis=1)]
    return {
        "v_first": float(v.mean()),
        "v_star_first": float(v_star.mean()),
        "v_error_first": float(np.abs(v - v_star).mean()),
        "q_picks_optimal": float(pick(q).mean()),
        "steered_picks_optimal": float(pick(log_pi + beta * adv).mean()),
        "pi_beta_optimal_prob": float((np.exp(log_pi) * best).sum(1).mean()),
        "adv_spread": float((adv.max(1) - adv.min(1)).mean()),
        "log_pi_spread": float((log_pi.max(1) - log_pi.min(1)).mean()),
    }


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def normalisations(cfg: MazeConfig, data_mean: float) -> dict[str, lmrl.Normalisation]:
    theirs = lmrl.THEIRS[f"maze_{cfg.variant}"]
    return {"theirs": theirs, "ours": dataclasses.replace(theirs, average=data_mean)}


def with_scores(row: dict, norms: dict[str, lmrl.Normalisation]) -> dict:
    return {**row, **{f"score_{name}": lmrl.score(row["mean_return"], n) for name, n in norms.items()}}


def run(cfg: MazeConfig, workdir: str) -> list[dict]:
    """Runs the benchmark (every method once per training seed); returns the rows aggregated over seeds
    (`experiments.aggregate`); results.json also keeps every seed's rows."""
    t0 = time.perf_counter()
    workdir = epath.Path(workdir)
    tok = vocab.maze_tokenizer()  # built from the maze's texts, the same on every process
    if files.is_writer():
        tok.save(workdir / "tokenizer")
    logged = datasets.generate(cfg.variant, cfg.n_train + cfg.n_heldout, cfg.seed, datasets.MIXTURES[cfg.mixture],
                               last_k=cfg.window, noise=cfg.noise)
    datasets.save_episodes(workdir / "data" / "train.jsonl", logged[:cfg.n_train])
    datasets.save_episodes(workdir / "data" / "heldout.jsonl", logged[cfg.n_train:])
    train_games = [e.game for e in logged[:cfg.n_train]]
    heldout_games = [e.game for e in logged[cfg.n_train:]]
    data = {"all": pack(train_games, tok, cfg), "heldout": pack(heldout_games, tok, cfg)}
    for m in cfg.methods:
        if methods.top_fraction(m) is not None:
            data[m] = pack(top_episodes(train_games, methods.top_fraction(m)), tok, cfg)
        elif m == "mc":
            data[m] = pack(None, tok, cfg, mc_chains(train_games, tok, cfg.gamma))
            data["mc_heldout"] = pack(None, tok, cfg, mc_chains(heldout_games, tok, cfg.gamma))
    data_stats = datasets.episode_stats(train_games)
    norms = normalisations(cfg, data_stats["mean_return"])
    print(f"data: {len(train_games)} episodes, mean return {data_stats['mean_return']:.2f}, success rate "
          f"{data_stats['success_rate']:.3f}, {data['all']['tokens'].shape[0]} rows of {cfg.row_len} tokens")

    optimal = OptimalPolicy()
    reference = play(cfg, lambda games: ["" if g.done else optimal(g) for g in games])
    rows = [with_scores({"method": "optimal (moves on the true position)", "seed": None, **reference}, norms),
            with_scores({"method": "data (behaviour mix)", "seed": None, **data_stats}, norms)]
    rows += aggregate_lib.over_seeds(cfg.seed, cfg.seeds, workdir,
                                     lambda seed, seed_dir: seed_rows(cfg, seed, seed_dir, tok, data, norms))
    table = aggregate(rows, cfg)
    write_results(workdir, table, rows, cfg, norms, time.perf_counter() - t0)
    return table


METRICS = ("score_theirs", "score_ours", "mean_return", "success_rate", "mean_actions", "illegal_rate", "n_episodes")
DIAGNOSTICS = ("v_first", "v_star_first", "v_error_first", "q_picks_optimal", "steered_picks_optimal",
               "pi_beta_optimal_prob", "adv_spread", "log_pi_spread")


def seed_rows(cfg: MazeConfig, seed: int, workdir: epath.Path, tok, data: dict, norms: dict) -> list[dict]:
    """Trains every method at one training seed and plays the evaluation episodes."""
    rows = []
    label = f"seed {seed} " if cfg.seeds > 1 else ""
    key = jax.random.key(seed)
    runs = methods.train_methods(
        sorted(cfg.methods, key=lambda m: m != "bc"),  # BC first: ILQL and MC start from it
        workdir, lambda m: train_config(cfg, m, tok.vocab_size, seed, str(workdir / "bc")),
        lambda m: (data["all" if m in ("bc", "ilql") else m], data["mc_heldout" if m == "mc" else "heldout"]))
    for method, _, tc, state, train_seconds in runs:
        betas = sorted({cfg.beta, *(cfg.betas if method == "ilql" else ())}) if method in VALUE_GUIDED else [0.0]
        for beta in betas:
            start = time.perf_counter()
            stats = play(cfg, model_chooser(cfg, state, tok, key, beta, guided=method in VALUE_GUIDED))
            name = method if beta in (0.0, cfg.beta) else f"{method} β={beta:g}"
            row = with_scores({"method": name, "seed": seed, **stats, "beta": beta, "train_steps": tc.num_steps,
                               "train_seconds": round(train_seconds, 1),
                               "eval_seconds": round(time.perf_counter() - start, 1)}, norms)
            if method in VALUE_GUIDED and cfg.diagnose:
                row.update(first_step_diagnostics(cfg, state, tok, beta))
            rows.append(row)
            print(f"{label}{name}: score {row['score_theirs']:.1f} (ours {row['score_ours']:.1f}), mean return "
                  f"{stats['mean_return']:.2f} ± {stats['stderr']:.2f}, success {stats['success_rate']:.3f}, "
                  f"{stats['mean_actions']:.1f} actions, illegal {stats['illegal_rate']:.3f} "
                  f"({row['train_seconds']:.0f} s training, {row['eval_seconds']:.0f} s playing)")
    return rows


def aggregate(rows: list[dict], cfg: MazeConfig) -> list[dict]:
    """One row per method (`aggregate_lib.aggregate`), the diagnostics aggregated over the rows that have them,
    and LMRL-Gym's published score beside each."""
    table = aggregate_lib.aggregate(rows, ("method",), METRICS, {"mean_return": "stderr"})
    diagnosed = {r["method"]: r for r in aggregate_lib.aggregate([r for r in rows if DIAGNOSTICS[0] in r],
                                                                  ("method",), DIAGNOSTICS)}
    return [with_published({**diagnosed.get(r["method"], {}), **r}, cfg) for r in table]


def with_published(row: dict, cfg: MazeConfig) -> dict:
    published = lmrl.PUBLISHED[f"maze_{cfg.variant}"]
    return {**row, "published": published.get(methods.family(row["method"]))}


COLUMNS: tuple[results.Column, ...] = (
    ("method", lambda r: r["method"]),
    ("score ± s.e. (LMRL-Gym's average)", lambda r: aggregate_lib.mean_se(r, "score_theirs", ".1f")),
    ("score (our data's average)", lambda r: f"{r['score_ours']:.1f}"),
    ("LMRL-Gym's published score", lambda r: "" if r.get("published") is None else f"{r['published']:.1f}"),
    ("mean return ± s.e.", lambda r: aggregate_lib.mean_se(r, "mean_return", ".2f")),
    ("per seed", lambda r: aggregate_lib.per_seed(r, "mean_return", ".2f")),
    ("success", lambda r: f"{r['success_rate']:.3f}"),
    ("actions", lambda r: f"{r['mean_actions']:.1f}"),
    ("illegal", lambda r: f"{r['illegal_rate']:.3f}"),
    ("episodes", lambda r: f"{r['n_episodes']:g}"),
)


def write_results(workdir, table: list[dict], rows: list[dict], cfg: MazeConfig, norms: dict,
                  seconds: float) -> None:
    spread = results.spread(cfg.seeds, "episodes")
    theirs, ours = norms["theirs"], norms["ours"]
    footer = (f"Maze `{cfg.variant}` (window of {cfg.window} text(s)); {cfg.n_train} training episodes; "
              f"25 starts × {cfg.rollouts_per_start} sampled episodes per method; β = {cfg.beta:g}, adv_clip = "
              f"{cfg.adv_clip}. Scores: min {theirs.minimum:g}, max {theirs.maximum:g}, data average "
              f"{theirs.average:g} (LMRL-Gym's) or {ours.average:.2f} (ours); {spread}; {seconds / 60:.1f} min in all.")
    results.write_table(workdir, table, COLUMNS, footer, seed_rows=rows, config=dataclasses.asdict(cfg),
                        normalisation={k: dataclasses.asdict(v) for k, v in norms.items()})
    plots.bar_plot_returns(epath.Path(workdir) / "results.png", table, f"Maze ({cfg.variant})")
