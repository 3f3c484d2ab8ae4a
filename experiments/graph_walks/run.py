"""Graph walks: learn shortest paths to a goal from random walks, the learning check against trlx's ILQL.

The benchmark of trlx's `randomwalks` example, built anew (`graph.py`): a random
21-node graph, 1,000 random walks from random starts, each rewarded with its
optimality in [0, 1] at its end; a 6-layer, 144-wide GPT-2 trained from scratch
for 200 steps at batch 100; decoding by top-k 10 sampling at β ∈ {0, 1, 100}
and greedily. Random walks are rarely short, so π_β alone (β = 0) walks about
as badly as the data; the values must find the short paths inside the data.

Two recipes, each trained and decoded once per seed (the graph and its walks
stay fixed; a seed sets initialisation, dropout, batch order and sampling):
  shared        trlx's one stage: π_β is the value trunk's LM head, the target Q
                heads read the online trunk, BC and the value losses train together.
  bc_then_ilql  our two stages: BC π_β (`bc_steps`), then ILQL (`ilql_steps`) with every
                trunk starting from π_β and π_β frozen there (docs/algorithm.md §2).
Settings are trlx's (`ilql_randomwalks.yml`): τ 0.8, γ 0.99, α_cql 0.1, the target
moved every 5 steps with α 0.1, AdamW 2e-4 (β₂ 0.95, weight decay 1e-6), dropout
0.1, rewards z-scored, and its decoding order: top-k on log π_β + β·A
(`order="adv_first"`). Decoding is masked to node symbols and `</a>` (trlx's
vocabulary has nothing else to emit; `mask_markup=False` lets markup through,
which then counts as an invalid walk).

In the workdir: `seed<k>/<recipe>/...` (the runs), `results.json` (every
seed's rows and the rows aggregated over seeds), `results.md`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from experiments import aggregate as aggregate_lib
from experiments import results
from experiments.graph_walks import graph as graph_lib
from ilql_jax import losses, recipe as recipe_lib, sampler, tokenizers
from ilql_jax.checkpoint import CheckpointConfig
from ilql_jax.config import TrainConfig
from ilql_jax.data import episodes, rewards
from ilql_jax.loop import train_and_evaluate
from ilql_jax.models import gpt2, ilql
from ilql_jax.state import OptimConfig

RECIPES = ("shared", "bc_then_ilql")


@dataclasses.dataclass(frozen=True)
class GraphWalkConfig:
    """One graph-walk benchmark run.

    Attributes:
      n_nodes, p_edge, max_length: the graph (nodes are letters; node a is the goal) and the walk limit.
      n_walks: random walks in the data set.
      data_seed: seeds the graph and the walks (fixed across `seeds`); 1000 gives trlx's data set.
      seeds: training seeds 0 .. seeds − 1 (initialisation, dropout, batch order, sampling).
      recipes: any of `RECIPES` ("shared", "bc_then_ilql").
      n_layer, n_embd, n_head, dropout: the GPT-2 shape (trlx's: 6 × 144, 12 heads, dropout 0.1).
      head_init: "pytorch" (U(±1/√fan_in), the references') or "flax" (lecun-normal, zero bias).
      batch_size: walks per step.
      steps: training steps of the shared recipe.
      bc_steps, ilql_steps: the two stages of bc_then_ilql.
      learning_rate, b2, weight_decay: AdamW.
      tau, gamma, alpha_cql: ILQL's expectile, discount and CQL weight.
      polyak_alpha, target_update_every: the target moves by α every k optimizer steps.
      reward_norm: "zscore" (trlx's), "scale" or "none" (see `ilql_jax.data.rewards`).
      betas: inference β values, each decoded by sampling and greedily.
      top_k, temperature, order: sampling filter, temperature and where β·A goes (`sampler.ORDERS`).
      samples_per_start: sampled walks per start node and β (greedy decodes one).
      mask_markup: decode only node symbols and `</a>`.
    """

    n_nodes: int = 21
    p_edge: float = 0.1
    max_length: int = 10
    n_walks: int = 1000
    data_seed: int = 1000
    seeds: int = 3
    recipes: tuple[str, ...] = RECIPES
    n_layer: int = 6
    n_embd: int = 144
    n_head: int = 12
    dropout: float = 0.1
    head_init: str = "pytorch"
    batch_size: int = 100
    steps: int = 200
    bc_steps: int = 200
    ilql_steps: int = 200
    learning_rate: float = 2e-4
    b2: float = 0.95
    weight_decay: float = 1e-6
    tau: float = 0.8
    gamma: float = 0.99
    alpha_cql: float = 0.1
    polyak_alpha: float = 0.1
    target_update_every: int = 5
    reward_norm: str = "zscore"
    betas: tuple[float, ...] = (0.0, 1.0, 100.0)
    top_k: int = 10
    temperature: float = 1.0
    order: str = "adv_first"
    samples_per_start: int = 32
    mask_markup: bool = True

    def __post_init__(self):
        bad = [r for r in self.recipes if r not in RECIPES]
        if bad or not self.recipes:
            raise ValueError(f"unknown recipe(s) {bad}; choose from {RECIPES}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not self.betas:
            raise ValueError("betas must not be empty")


PRESETS = {
    "default": GraphWalkConfig(),
    # The test suite's version: a smaller trunk, the same data, steps and settings.
    "fast": GraphWalkConfig(n_layer=2, n_embd=64, n_head=4, seeds=2, samples_per_start=8),
    "smoke": GraphWalkConfig(n_layer=1, n_embd=32, n_head=4, seeds=2, steps=5, bc_steps=5, ilql_steps=5,
                             samples_per_start=2, betas=(0.0, 100.0)),
}


def max_len(cfg: GraphWalkConfig) -> int:
    """<s> start </s>, up to max_length − 1 further nodes, </a> </eod>."""
    return cfg.max_length + 4


def model_config(cfg: GraphWalkConfig, recipe: str, vocab_size: int) -> ilql.ModelConfig:
    trunk = gpt2.GPT2Config(vocab_size=vocab_size, n_positions=max_len(cfg), n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=cfg.dropout)
    if recipe == "shared":
        return ilql.ModelConfig(trunk=trunk, shared_policy=True, target_on_online_trunk=True,
                                head_init=cfg.head_init)
    return ilql.ModelConfig(trunk=trunk, frozen_policy=True, target_on_online_trunk=True, head_init=cfg.head_init)


def train_configs(cfg: GraphWalkConfig, recipe: str, vocab_size: int, seed: int, workdir: str) -> list[TrainConfig]:
    """The loop configs of a recipe, in order (bc_then_ilql: BC, then ILQL from its π_β)."""
    shared = recipe == "shared"
    optim = OptimConfig(learning_rate=cfg.learning_rate, b2=cfg.b2, weight_decay=cfg.weight_decay)
    runs = recipe_lib.BCThenILQL(
        model_config(cfg, recipe, vocab_size), losses.LossConfig(gamma=cfg.gamma, tau=cfg.tau, alpha_cql=cfg.alpha_cql),
        bc_steps=cfg.bc_steps, ilql_steps=cfg.steps if shared else cfg.ilql_steps, bc_optim=optim, ilql_optim=optim,
        polyak_alpha=cfg.polyak_alpha, target_update_every=cfg.target_update_every,
        cadence=lambda steps: {"log_every": max(1, steps // 4)},
        loop=dict(batch_size=cfg.batch_size, max_len=max_len(cfg), eval_every=0, eval_batches=1, seed=seed,
                  progress=False, checkpoint=CheckpointConfig(every_steps=10**6, keep=1)))
    # The shared recipe is one ILQL run from scratch, π_β trained with the values.
    return [runs.ilql(None)] if shared else [runs.bc(), runs.ilql(os.path.join(workdir, "bc"))]


def decode_walks(cfg: GraphWalkConfig, graph: graph_lib.Graph, tok, model: ilql.ModelConfig, state, *,
                 beta: float, mode: str, key: jax.Array) -> list[str]:
    """Walks (start node, then the decoded text) from every non-goal start (`samples_per_start` each when
    sampling)."""
    n = cfg.samples_per_start if mode == "sample" else 1
    starts = [s for s in graph.symbols if s != graph.symbols[graph_lib.GOAL] for _ in range(n)]
    scfg = sampler.SamplerConfig(max_new_tokens=cfg.max_length, mode=mode, top_k=cfg.top_k, order=cfg.order,
                                 prompt_buckets=(3,))
    allowed = [tok.encode(s)[0] for s in graph.symbols] if cfg.mask_markup else None
    texts = sampler.generate_text(tok, model, state.params, state.target_params, [[episodes.env(s)] for s in starts],
                                  key, sampler_config=scfg, beta=beta, temperature=cfg.temperature,
                                  allowed_ids=allowed)
    return [s + text for s, text in zip(starts, texts)]


def walk_stats(graph: graph_lib.Graph, walks: list[str], data_walks: set[str]) -> dict:
    """Mean optimality (± s.e. over walks), the share reaching the goal, and the share of those whose path
    (cut at the goal) is no walk of the data: composed from pieces of several walks rather than copied."""
    opt = np.array([graph.optimality(w) for w in walks])
    paths = [w[:graph.path_length(w)] for w, o in zip(walks, opt) if o > 0]
    return {"optimality": float(opt.mean()), "stderr": float(opt.std() / np.sqrt(opt.size)),
            "reached_goal": float((opt > 0).mean()),
            "unseen_paths": float(np.mean([p not in data_walks for p in paths])) if paths else 0.0,
            "walks": int(opt.size)}


def seed_rows(cfg: GraphWalkConfig, recipe: str, seed: int, graph, tok, arrays, data_walks: set[str],
              workdir: str) -> list[dict]:
    """Trains one recipe at one seed and decodes it at every β, sampled and greedy."""
    start = time.perf_counter()
    state = None
    for tc in train_configs(cfg, recipe, tok.vocab_size, seed, workdir):
        stage = "bc" if tc.step.mode == "bc" else "ilql"
        state = train_and_evaluate(tc, os.path.join(workdir, stage), arrays)
    model = model_config(cfg, recipe, tok.vocab_size)
    seconds = time.perf_counter() - start
    rows = []
    for mode in ("sample", "greedy"):
        for beta in cfg.betas:
            walks = decode_walks(cfg, graph, tok, model, state, beta=beta, mode=mode,
                                 key=jax.random.fold_in(jax.random.key(seed), int(beta * 1000)))
            rows.append({"recipe": recipe, "decode": mode, "beta": beta, "seed": seed,
                         **walk_stats(graph, walks, data_walks), "train_seconds": round(seconds, 1)})
    return rows


def run(cfg: GraphWalkConfig, workdir: str) -> list[dict]:
    """Runs every recipe at every seed; returns the aggregated rows (all rows go to the workdir)."""
    t0 = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    graph, walks = graph_lib.make_task(cfg.data_seed, cfg.n_nodes, cfg.p_edge, cfg.max_length, cfg.n_walks)
    tok = tokenizers.symbol_tokenizer(graph.symbols)
    eps = [episodes.Episode([episodes.env(w[0]), episodes.agent(w[1:], graph.optimality(w))]) for w in walks]
    norm = rewards.fit_reward_norm(eps, cfg.reward_norm)
    arrays = episodes.episodes_to_arrays(norm.apply(eps), tok, max_len(cfg))
    data_opt = np.array([graph.optimality(w) for w in walks])
    print(f"data: {len(walks)} walks on a {cfg.n_nodes}-node graph, mean optimality {data_opt.mean():.3f}, "
          f"{(data_opt > 0).mean():.0%} reach the goal; rewards {norm}")

    rows = []
    for seed in range(cfg.seeds):
        for recipe in cfg.recipes:
            rows += seed_rows(cfg, recipe, seed, graph, tok, arrays, set(walks),
                              os.path.join(workdir, f"seed{seed}", recipe))
            for row in rows[-2 * len(cfg.betas):]:
                print(f"seed {seed} {recipe} {row['decode']} β={row['beta']:g}: optimality {row['optimality']:.3f}")
    table = aggregate_lib.aggregate(rows, ("recipe", "decode", "beta"), ("optimality", "reached_goal", "unseen_paths"),
                                    {"optimality": "stderr"})
    data_row = {"data_optimality": float(data_opt.mean()), "data_stderr": float(data_opt.std() / np.sqrt(data_opt.size)),
                "reward_norm": dataclasses.asdict(norm)}
    write_results(workdir, cfg, table, rows, data_row, time.perf_counter() - t0)
    return table


COLUMNS: tuple[results.Column, ...] = (
    ("recipe", lambda r: r["recipe"]),
    ("decode", lambda r: f"{r['decode']} β = {r['beta']:g}"),
    ("optimality ± s.e. (seeds)", lambda r: f"{r['optimality']:.3f} ± {r['optimality_se_seeds']:.3f}"),
    ("per seed", lambda r: " / ".join(f"{v:.2f}" for v in r["optimality_seeds"])),
    ("s.e. (walks)", lambda r: f"{r['optimality_se_episodes']:.3f}"),
    ("reach goal", lambda r: f"{r['reached_goal']:.2f}"),
    ("paths not in data", lambda r: f"{r['unseen_paths']:.2f}"),
)


def write_results(workdir: str, cfg: GraphWalkConfig, table: list[dict], rows: list[dict], data_row: dict,
                  seconds: float) -> None:
    results.write_table(workdir, table, COLUMNS,
                        f"Data: mean optimality {data_row['data_optimality']:.3f} ± {data_row['data_stderr']:.3f} "
                        f"({cfg.n_walks} random walks). {cfg.seeds} seeds; {seconds / 60:.1f} min in all.",
                        seed_rows=rows, data=data_row, config=dataclasses.asdict(cfg))
