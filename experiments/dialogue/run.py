"""The ask-to-identify dialogue benchmark: one data set; BC, %BC, ILQL and per-utterance ILQL; 1024 evaluation
dialogues per row.

The paper's Visual Dialogue setting made offline (docs/algorithm.md §6–§7): many turns,
an answerer's reply between the agent's utterances, a cost per question, and
reward variants that punish redundant (`yn`) or unparseable (`conservative`)
questions. In execution order: catalogue → word-level tokenizer → mixed-quality
dialogues (saved) → token arrays under `reward` → for each method, train
through `train_and_evaluate` and play the evaluation dialogues, all in
lockstep, one batched decode per turn → `results.json`, `results.md` and a bar
plot in the workdir.

Methods (all on the same data), and the rows of the table each gives:
  bc        π_β alone on every dialogue. With `bc_from_ilql` (the default) this
            is the ILQL run's own π_β decoded alone (β = 0): in that run π_β is a
            separate network that only the plain BC loss reaches (β_awac = 0, no
            gradient clipping, no weight decay, so AdamW updates it independently
            of the value losses), i.e. BC on the same batches, without paying for
            a second training run. Row `bc`;
  bc_rerank the same π_β, decoded as the best of N samples by log π_β(u | s)
            alone (the per-utterance decoder without values: what reranking
            gains from likelihood, not from Q̄), for each N of `rerank_n`.
            Rows `bc_rerankN`;
  pbcNN     %BC: π_β on the top NN% of dialogues by return. Row `pbcNN`;
  ilql      token-level ILQL (τ, γ = 0.99 per token, α_cql), trained once and
            decoded on log π_β + β·A for each β of `betas` (A clipped from above
            at `adv_clip`; None: not clipped). Rows `ilql_betaB`;
  ilql_utt  per-utterance ILQL (`ilql_jax.utterance`: τ, γ = 0.99 per utterance,
            no CQL), trained once and decoded by reranking N samples of its π_β
            by Q̄(s, u) + w · log π_β(u | s) for each N of `rerank_n` and w of
            `rerank_weights` (`ilql_jax.rerank`). Rows `ilql_utt_rerankN_wW`.
Sampling is at T = 1 (`decode`). Every row is scored under all three reward
variants; every method is trained on `reward`.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from etils import epath

from experiments import aggregate as aggregate_lib, lockstep, methods, plots, results
from experiments.dialogue import catalogue as catalogue_lib
from experiments.dialogue import datasets, env, vocab
from experiments.dialogue.policies import InfoGainPolicy
from ilql_jax import files, losses, recipe, sampler
from ilql_jax.config import TrainConfig
from ilql_jax.data import episodes
from ilql_jax.models import gpt2, ilql
from ilql_jax.state import OptimConfig

@dataclasses.dataclass(frozen=True)
class DialogueConfig:
    """One dialogue benchmark run.

    Attributes:
      catalogue: the catalogue CSV (default: the shipped 16 items × 12 attributes; `catalogue.DEFAULT_PATH` has
        100 × 23).
      data_mix: the scripted questioners' mixture, a key of `datasets.MIXTURES`: "habit" (a habitual checklist
        is the most frequent speaker) or "expert" (the expert's choice is the most frequent one).
      reward: the training reward, one of `env.REWARDS` (standard, yn, conservative).
      n_train: dialogues in the data set.
      n_heldout: dialogues for the held-out loss.
      n_eval: dialogues played per method (fixed targets).
      seed: the data and evaluation-targets seed, and the first training seed.
      seeds: training seeds seed, seed + 1, …: each trains every method on the same dialogues; the table is
        their mean ± the standard error across seeds.
      n_layer, n_embd, n_head: the GPT-2 shape (random init, word-level vocabulary).
      max_len: tokens per dialogue (the longest generated one is ~100; 120 leaves room for decoding).
      max_new_tokens: decode limit per utterance (`</a>` included; the longest scripted one has 8 words).
      batch_size: dialogues per step.
      bc_steps, rl_steps: steps for BC / %BC and for ILQL.
      learning_rate: AdamW learning rate.
      tau, alpha_cql: ILQL's expectile and CQL weight (per-utterance ILQL has no CQL term).
      polyak_alpha: the target networks' update rate, for both ILQL variants.
      betas: the inference β of each ILQL row (one training, one row per β).
      adv_clip: the advantage's upper clip (None: no clip).
      rerank_n: candidates per utterance of each per-utterance ILQL and bc_rerank row (one training, one row
        per N).
      rerank_weights: the w of each per-utterance ILQL row, in the score Q̄(s, u) + w · log π_β(u | s)
        (0: the paper's Visual Dialogue).
      decode: "sample" (T = 1, a fresh key per turn) or "greedy" (token-level rows only; reranking samples).
        Greedy π_β repeats one question until the dialogue runs out (it never guesses), so every method
        scored −10 in a pilot.
      methods: "bc", "pbcNN" (NN% of the data by return), "ilql" and/or "ilql_utt".
      bc_from_ilql: with "ilql" in `methods`, "bc" is the ILQL run's π_β at β = 0 (see the module docstring).
    """

    catalogue: str = catalogue_lib.SMALL_PATH
    data_mix: str = "habit"
    reward: str = "standard"
    n_train: int = 6000
    n_heldout: int = 256
    n_eval: int = 1024
    seed: int = 0
    seeds: int = 1
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    max_len: int = 120
    max_new_tokens: int = 9
    batch_size: int = 32
    bc_steps: int = 2000
    rl_steps: int = 2000
    learning_rate: float = 1e-3
    tau: float = 0.7
    alpha_cql: float = 0.1
    polyak_alpha: float = 0.05
    betas: tuple[float, ...] = (1.0, 4.0, 8.0, 16.0)
    adv_clip: float | None = None
    rerank_n: tuple[int, ...] = (4, 8)
    rerank_weights: tuple[float, ...] = (0.0, 1.0)
    decode: str = "sample"
    methods: tuple[str, ...] = ("bc", "bc_rerank", "pbc10", "pbc20", "pbc50", "ilql", "ilql_utt")
    bc_from_ilql: bool = True

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        methods.check(self.methods, ("bc", "bc_rerank", "ilql", "ilql_utt"))
        if self.data_mix not in datasets.MIXTURES:
            raise ValueError(f"unknown data_mix {self.data_mix!r}; choose from {sorted(datasets.MIXTURES)}")
        if "ilql" in self.methods and not self.betas:
            raise ValueError("methods has ilql but betas is empty: give at least one β")
        reranked = {"ilql_utt", "bc_rerank"} & set(self.methods)
        if reranked and (not self.rerank_n or min(self.rerank_n) < 1):
            raise ValueError(f"methods has {sorted(reranked)}: rerank_n needs at least one N >= 1, got {self.rerank_n}")
        if "ilql_utt" in self.methods and not self.rerank_weights:
            raise ValueError("methods has ilql_utt but rerank_weights is empty: give at least one w")
        if reranked and self.decode != "sample":
            raise ValueError(f"{sorted(reranked)} rerank samples of π_β: they need decode 'sample'")
        if self.reward not in env.REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; choose from {env.REWARDS}")


PRESETS = {
    "default": DialogueConfig(),
    "smoke": DialogueConfig(n_train=256, n_heldout=32, n_eval=64, n_layer=1, n_embd=32, batch_size=16,
                            bc_steps=10, rl_steps=10, methods=("bc", "bc_rerank", "pbc20", "ilql", "ilql_utt"),
                            betas=(8.0,), rerank_n=(2,), rerank_weights=(1.0,)),
}


def trunk_config(cfg: DialogueConfig, vocab_size: int) -> gpt2.GPT2Config:
    return gpt2.GPT2Config(vocab_size=vocab_size, n_positions=cfg.max_len, n_embd=cfg.n_embd,
                           n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=0.0)


def train_config(cfg: DialogueConfig, method: str, tok, seed: int | None = None) -> TrainConfig:
    """The loop's config for one method at training seed `seed` (`cfg.seed` by default): every run starts from
    scratch, ILQL training its π_β alongside the values."""
    utt = method == "ilql_utt"  # per-utterance ILQL: no CQL term
    runs = recipe.BCThenILQL(
        ilql.ModelConfig(trunk=trunk_config(cfg, tok.vocab_size)),
        losses.LossConfig(gamma=0.99, tau=cfg.tau, **({} if utt else {"alpha_cql": cfg.alpha_cql})),
        bc_steps=cfg.bc_steps, ilql_steps=cfg.rl_steps, bc_optim=OptimConfig(learning_rate=cfg.learning_rate),
        ilql_optim=OptimConfig(learning_rate=cfg.learning_rate), polyak_alpha=cfg.polyak_alpha,
        mode="ilql_utt" if utt else "ilql", end_a_id=tok.end_a_id if utt else None,
        loop=dict(batch_size=cfg.batch_size, max_len=cfg.max_len, eval_every=0, eval_batches=4,
                  seed=cfg.seed if seed is None else seed))
    return runs.ilql(None) if method in ("ilql", "ilql_utt") else runs.bc(methods.top_fraction(method))


def play(speak, catalogue: catalogue_lib.Catalogue, n: int, seed: int) -> dict[str, float]:
    """Plays `n` dialogues in lockstep; `speak(games) -> utterances`, one per dialogue (`lockstep.play_lockstep`).

    Targets come from `datasets.eval_targets(seed)`, as for the scripted
    reference, so every method meets the same targets. Every call gets all
    dialogues (finished ones too, their utterances ignored) so the decoder
    sees one batch shape.
    """
    games = [env.DialogueGame(t, catalogue) for t in datasets.eval_targets(catalogue, n, seed)]
    lockstep.play_lockstep(games, speak, env.MAX_TURNS)
    return datasets.dialogue_stats(games)


def model_speaker(cfg: DialogueConfig, method: str, state, tok, seed: int, beta: float = 0.0,
                  rerank_n: int | None = None, rerank_weight: float | None = None):
    """Utterances (`cfg.decode`) from a state trained as `method`: π_β + β·A (β = 0: π_β alone), or, with
    `rerank_n`, the best of that many π_β samples by Q̄ + w · log π_β (a per-utterance state; w =
    `rerank_weight`), or by log π_β alone when `rerank_weight` is None."""
    # A reranked candidate is scored with its `</a>` after the prompt, one more token than decoding needs.
    room = cfg.max_len - cfg.max_new_tokens - (rerank_n is not None)
    scfg = sampler.SamplerConfig(max_new_tokens=cfg.max_new_tokens, mode=cfg.decode, prompt_buckets=(room,))

    def prompt(game: env.DialogueGame) -> list[int]:
        ids = env.prompt_ids(game.turns, tok) if not game.done else [tok.a_id]
        # Cannot happen at the defaults: 9 earlier turns of ≤ 9 + 3 tokens (words, </a>, a one-id reply, </s>) and <a>
        # make 109 ≤ 120 − 9 − 1 (the vocabulary keeps every id one id through decode and encode).
        if len(ids) > room:
            raise ValueError(f"a dialogue prompt has {len(ids)} tokens; max_len={cfg.max_len} leaves room for {room}")
        return ids

    rerank = None
    if rerank_n is not None:
        likelihood = rerank_weight is None
        rerank = dict(n=rerank_n, logp_weight=1.0 if likelihood else rerank_weight, q_weight=0.0 if likelihood else 1.0)
    return lockstep.model_player(tok, train_config(cfg, method, tok).step.model, state, prompt, jax.random.key(seed),
                                 scfg, beta=beta, adv_clip=cfg.adv_clip if beta else None, rerank=rerank)


def evaluations(cfg: DialogueConfig, method: str) -> list[tuple[str, dict]]:
    """The rows a method gives: (row name, `model_speaker` keyword arguments)."""
    if method == "ilql":
        return [(f"ilql_beta{b:g}", {"beta": b}) for b in cfg.betas]
    if method == "ilql_utt":
        return [(f"ilql_utt_rerank{n}_w{w:g}", {"rerank_n": n, "rerank_weight": w})
                for w in cfg.rerank_weights for n in cfg.rerank_n]
    if method == "bc_rerank":
        return [(f"bc_rerank{n}", {"rerank_n": n}) for n in cfg.rerank_n]
    return [(method, {})]


def run(cfg: DialogueConfig, workdir: str) -> list[dict]:
    """Runs the benchmark (every method once per training seed); returns the rows aggregated over seeds
    (`experiments.aggregate`); results.json also keeps every seed's rows."""
    t0 = time.perf_counter()
    workdir = epath.Path(workdir)
    catalogue = catalogue_lib.load_catalogue(cfg.catalogue)
    tok = vocab.word_tokenizer(catalogue)  # built from the catalogue, the same on every process
    if files.is_writer():
        tok.save(workdir / "tokenizer")

    games = datasets.generate_dialogues(catalogue, cfg.n_train + cfg.n_heldout, cfg.seed,
                                        mixtures=datasets.MIXTURES[cfg.data_mix])
    train_games, heldout_games = games[:cfg.n_train], games[cfg.n_train:]
    # Seeded, so every process generates the same dialogues; process 0 records them.
    datasets.save_dialogues(workdir / "data" / "train.jsonl", train_games)
    datasets.save_dialogues(workdir / "data" / "heldout.jsonl", heldout_games)
    train_arrays = episodes.episodes_to_arrays(datasets.dialogues_to_episodes(train_games, cfg.reward), tok,
                                               cfg.max_len)
    heldout_arrays = episodes.episodes_to_arrays(datasets.dialogues_to_episodes(heldout_games, cfg.reward), tok,
                                                 cfg.max_len)
    returns = np.array([g.total_return(cfg.reward) for g in train_games])
    data_stats = datasets.dialogue_stats(train_games)
    print(f"data: {len(train_games)} dialogues, mean return {data_stats['mean_return']:.3f}, "
          f"success rate {data_stats['success_rate']:.3f}")

    rows = [{"method": "info_gain (scripted expert)", "seed": None,
             **datasets.evaluate_policy(InfoGainPolicy(catalogue), catalogue, cfg.n_eval, seed=cfg.seed + 1)},
            {"method": "data (behaviour mix)", "seed": None, **data_stats}]
    rows += aggregate_lib.over_seeds(cfg.seed, cfg.seeds, workdir, lambda seed, seed_dir: seed_rows(
        cfg, seed, seed_dir, tok, catalogue, train_arrays, heldout_arrays, returns))
    table = aggregate_lib.aggregate(rows, ("method",), METRICS, EPISODE_STDERR)
    if cfg.seeds > 1:
        for r in table:
            print(f"{r['method']} over {r['n_seeds']} seed(s): mean return {aggregate_lib.mean_se(r, 'mean_return')}, "
                  f"success rate {aggregate_lib.mean_se(r, 'success_rate')}")
    write_results(workdir, table, rows, cfg, time.perf_counter() - t0)
    return table


METRICS = ("mean_return", "success_rate", "mean_turns", "unparsed_rate", "mean_return_yn", "mean_return_conservative",
           "n_dialogues")
EPISODE_STDERR = {"mean_return": "stderr", "mean_return_yn": "stderr_yn",
                  "mean_return_conservative": "stderr_conservative"}


def seed_rows(cfg: DialogueConfig, seed: int, workdir: epath.Path, tok, catalogue, train_arrays, heldout_arrays,
              returns: np.ndarray) -> list[dict]:
    """Trains every method at one training seed and plays the evaluation dialogues (the same for every seed).

    Each row records `train_seconds` (the training it was read from, 0 when an earlier row paid for it) and
    `eval_seconds` (playing its dialogues), wall clock.
    """
    rows = []
    label = f"seed {seed} " if cfg.seeds > 1 else ""

    def trained_as(method: str) -> str:
        # "bc" and "bc_rerank" may be read off the ILQL run's π_β (see the module docstring).
        bc = method in ("bc", "bc_rerank")
        return "ilql" if (bc and cfg.bc_from_ilql and "ilql" in cfg.methods) else "bc" if bc else method

    runs = methods.train_methods(cfg.methods, workdir, lambda run: train_config(cfg, run, tok, seed),
                                 lambda run: (train_arrays, heldout_arrays), returns, trained_as)
    for method, trained, tc, state, train_seconds in runs:
        for name, decoding in evaluations(cfg, method):
            start = time.perf_counter()
            speaker = model_speaker(cfg, trained, state, tok, seed, **decoding)
            stats = play(speaker, catalogue, cfg.n_eval, cfg.seed + 1)
            rows.append({"method": name, "seed": seed, **stats, "trained_as": trained, "train_steps": tc.num_steps,
                         **decoding, "train_seconds": round(train_seconds, 1),
                         "eval_seconds": round(time.perf_counter() - start, 1)})
            train_seconds = 0.0
            print(f"{label}{name}: mean return {stats['mean_return']:.3f} ± {stats['stderr']:.3f}, "
                  f"success rate {stats['success_rate']:.3f}, turns {stats['mean_turns']:.2f}")
    return rows


COLUMNS: tuple[results.Column, ...] = (
    ("method", lambda r: r["method"]),
    ("return ± s.e.", lambda r: aggregate_lib.mean_se(r, "mean_return")),
    ("per seed", lambda r: aggregate_lib.per_seed(r, "mean_return")),
    ("success", lambda r: aggregate_lib.mean_se(r, "success_rate")),
    ("mean turns", lambda r: f"{r['mean_turns']:.2f}"),
    ("unparsed", lambda r: f"{r['unparsed_rate']:.3f}"),
    ("`yn` return", lambda r: aggregate_lib.mean_se(r, "mean_return_yn")),
    ("`conservative` return", lambda r: aggregate_lib.mean_se(r, "mean_return_conservative")),
    ("dialogues", lambda r: f"{r['n_dialogues']:g}"),
)


def write_results(workdir: str | epath.PathLike, table: list[dict], rows: list[dict], cfg: DialogueConfig,
                  seconds: float) -> None:
    spread = results.spread(cfg.seeds, "dialogues")
    results.write_table(workdir, table, COLUMNS,
                        f"Trained on the `{cfg.reward}` reward; {cfg.n_train} training dialogues; "
                        f"data mix `{cfg.data_mix}`; adv_clip = {cfg.adv_clip}; {spread}; "
                        f"{seconds / 60:.1f} min in all.", seed_rows=rows)
    plots.bar_plot_returns(epath.Path(workdir) / "results.png", table, "Ask-to-identify dialogue")
