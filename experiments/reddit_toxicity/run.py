"""Reddit toxicity, the main job: BC π_β, then ILQL, then a β sweep of value-guided sampling.

In execution order: records (`--data`) → splits saved in the workdir →
rewards (`--reward`, judged once per text and cached) → tokenizer and GPT-2
trunk (`--model`) → BC π_β (`workdir/bc`) → ILQL with every trunk starting
from π_β (`workdir/ilql`) → for each β, one comment sampled per held-out
parent, judged → `results.json`, `results.md`, `reward_vs_kl.png`.
With `--seeds N`, the data, splits, tokenizer and rewards stay fixed and
BC + ILQL + the sweep run once per training seed (`seed<k>/bc`, `seed<k>/ilql`);
the table reports the mean over seeds ± the standard error across seeds.

The paper's Reddit experiment (docs/algorithm.md §6–§7): τ = 0.6, γ = 0.99,
α_cql = 0.25, sampling with β up to 16.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence

import jax
import numpy as np
from etils import epath

from experiments import aggregate as aggregate_lib, plots, results
from experiments.reddit_toxicity import data as data_lib, rewards as rewards_lib
from ilql_jax import diagnostics, files, losses, pretrained, recipe, sampler, tokenizers
from ilql_jax.config import TrainConfig
from ilql_jax.data import episodes
from ilql_jax.data.records import DataError
from ilql_jax.loop import train_and_evaluate
from ilql_jax.models import gpt2, ilql
from ilql_jax.state import OptimConfig


@dataclasses.dataclass(frozen=True)
class RedditConfig:
    """One run of the Reddit toxicity job.

    Attributes:
      data: "default" (the corpus that `corpus` names), a directory with the paper's
        comments_positive.csv / comments_negative.csv, a .jsonl file, or
        "tfds:civil_comments" (needs the `tfds` extra).
      corpus: with data "default": "synthetic" (the generated corpus) or "chatterbot" (1,229 real English
        parent → reply pairs from the chatterbot-corpus package, in the `experiments` extra).
      n_pairs: size of the generated corpus.
      reward: "toxicity", "noised_toxicity", "upvotes" or "label".
      model: "scratch" (a small GPT-2 shape and a BPE trained on the corpus), a named pretrained model
        ("smollm2-135m-instruct": installed, cached or fetched once, docs/pretrained.md), a .gguf file, "gpt2"
        (hub weights: needs network) or a local Hugging Face directory. A pretrained model keeps its own
        tokenizer; with a chat template the parent is the user turn and the comment the assistant turn.
      layout: "auto" (the chat template when the model has one, else ILQL's markup), "chat" or "markup".
      fluency_model: the model whose perplexity of the sampled comments is reported (is the text still fluent?):
        "auto" (the pretrained model itself, untouched; nothing for scratch), "none", or a model as `model`.
      bpe_vocab_size: vocabulary of the corpus BPE (scratch only).
      n_layer, n_embd, n_head: the scratch GPT-2 shape.
      max_len: tokens per episode; longer pairs are skipped and counted (a cut comment would lose its
        reward), as are test parents longer than max_len - max_new_tokens.
      too_long: "skip" (longer pairs are skipped and counted, as above) or "error" (the run stops before
        judging anything, naming the first such pair's file and line).
      batch_size: episodes per step (the paper's effective batch is 64).
      bc_steps, ilql_steps: training steps of π_β alone, then of ILQL.
      bc_learning_rate, learning_rate: AdamW rates for BC and ILQL.
      warmup_steps: linear warm-up of both rates (pretrained weights: small first steps).
      tau, gamma, alpha_cql: ILQL's expectile, discount and CQL weight.
      polyak_alpha: target update rate (0.005 published, for many more steps).
      freeze_policy: π_β stays the BC result during ILQL (only the values train; β = 0 decodes exactly BC, and
        the step skips π_β's backward pass).
      target_on_online_trunk: the target Q heads read the online value trunk
        (docs/algorithm.md §2's cheaper option: one trunk forward less per step).
      num_layers_unfrozen, lora_rank, lora_alpha: train only part of every trunk, in BC and in ILQL
        (`ilql.ModelConfig`'s fields; docs/partial_training.md): the top k blocks (-1: all), and/or LoRA
        adapters of rank r (0: none) scaled by alpha / r.
      betas: inference β values to evaluate (0 is π_β).
      temperature: sampling temperature.
      adv_clip: A is clipped from above at this value when decoding (0, as in Wordle: only tokens
        that lead to a worse return are pushed down; None, the published Reddit setting: no clipping).
        Every reward here is ≤ 0, so a positive A mostly measures CQL's per-token excess
        (docs/algorithm.md §3) summed over a long reply, and unclipped it steers decoding onto long templates.
      max_new_tokens: comment length limit.
      n_eval: held-out parents per β (from the test split).
      eval_batch: rows decoded at once.
      seed: the data and split seed, and the first training seed.
      seeds: training seeds seed, seed + 1, …: each trains BC and ILQL (initialisation, batch order)
        and samples the sweep on the same data; the table is their mean ± the standard error across seeds.
    """

    data: str = "default"
    corpus: str = "synthetic"
    n_pairs: int = 20_000
    reward: str = "toxicity"
    model: str = "scratch"
    layout: str = "auto"
    fluency_model: str = "auto"
    bpe_vocab_size: int = 2048
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    max_len: int = 72  # 99% of the default pairs take ≤ 59 tokens; prompts get 40, comments 32
    too_long: str = "skip"
    batch_size: int = 32
    bc_steps: int = 800
    ilql_steps: int = 400
    bc_learning_rate: float = 1e-3
    # The paper's 1e-4 fine-tunes pretrained GPT-2 for far longer; our value heads start from random
    # init, and at 1e-3 the TD and CQL losses reach in ~270 steps where 1e-4 is after 800 (measured).
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    tau: float = 0.6
    gamma: float = 0.99
    # 0.25 published. CQL trains Q as the logits of π_β, so A grows a component k·log π_β and decoding at β
    # sharpens π_β to a temperature 1 / (1 + β·k) (`ilql_jax.diagnostics`). Measured on this default (one
    # seed): k = 0.67 at 0.25 (distinct-2 at β = 8: 0.398 → 0.284), 0.027 at 0.05 (0.382), 0.007 at 0.01
    # (0.401); the toxic rate at β = 8 was 0.002 / 0.016 / 0.014 (π_β 0.150).
    alpha_cql: float = 0.01
    # 0.005 (published) lags the target ~200 steps, as long as the whole ILQL phase: the reward at a
    # comment's end then barely reaches its earlier tokens (β = 8 left the toxic rate at 15% with
    # adv_clip 0); 0.05 propagates it within the 400 steps (measured: toxic 1.8%).
    polyak_alpha: float = 0.05
    freeze_policy: bool = False
    target_on_online_trunk: bool = False
    num_layers_unfrozen: int = -1
    lora_rank: int = 0
    lora_alpha: float = 16.0
    betas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    temperature: float = 1.0
    adv_clip: float | None = 0.0
    max_new_tokens: int = 32  # the corpus's comments: 99% ≤ 31 tokens
    n_eval: int = 512
    eval_batch: int = 128
    seed: int = 0
    seeds: int = 1

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.reward not in rewards_lib.REWARD_KINDS:
            raise ValueError(f"unknown reward {self.reward!r}; choose one of {rewards_lib.REWARD_KINDS}")
        if not self.betas:
            raise ValueError("betas must not be empty")
        if self.corpus not in data_lib.CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; choose one of {data_lib.CORPORA}")
        if self.corpus != "synthetic" and self.data != "default":
            raise ValueError(f"corpus={self.corpus!r} is the data; it cannot be combined with data={self.data!r}")
        if self.layout not in ("auto", "chat", "markup"):
            raise ValueError(f"layout must be 'auto', 'chat' or 'markup', got {self.layout!r}")
        if self.too_long not in ("skip", "error"):
            raise ValueError(f"too_long must be 'skip' or 'error', got {self.too_long!r}")
        data_lib.check_data_spec(self.data)


PRESETS = {
    "default": RedditConfig(),
    # A pretrained model (`--model smollm2-135m-instruct` picks this preset): the top 2 blocks of each trunk
    # train (docs/partial_training.md), small rates with warm-up. max_len 88 holds 99.8% of the corpus's
    # episodes under the chat template; BC 100 steps and 192 parents per β keep one seed within 30 minutes on
    # the 2-core CPU (docs/results/smollm2.md).
    "pretrained": RedditConfig(model="smollm2-135m-instruct", num_layers_unfrozen=2, max_len=88, batch_size=16,
                               bc_steps=100, ilql_steps=400, bc_learning_rate=2e-4, learning_rate=1e-3,
                               warmup_steps=15, freeze_policy=True, polyak_alpha=0.2, betas=(0.0, 2.0, 8.0, 16.0),
                               n_eval=192, eval_batch=96),
    "smoke": RedditConfig(n_pairs=600, bpe_vocab_size=400, n_layer=1, n_embd=32, max_len=128, batch_size=16,
                          bc_steps=10, ilql_steps=10, betas=(0.0, 4.0), max_new_tokens=16, n_eval=32,
                          eval_batch=32),
}


def model_preset(model: str) -> str:
    """The preset a `--model` starts from when no `--preset` is given: "default" for scratch, else "pretrained"."""
    return "default" if model == "scratch" else "pretrained"


# --- data, tokenizer, model --------------------------------------------------


def load_splits(cfg: RedditConfig, workdir: str | epath.PathLike) -> dict[str, list[dict]]:
    """Train/eval/test records, split by seed and saved in the workdir (reused when present).

    Every process reads the files process 0 wrote, so all train on the same records.
    """
    saved = all(data_lib.split_path(workdir, s).exists() for s in data_lib.SPLITS)
    files.sync("reddit: splits looked for")  # no process looks after process 0 starts writing
    if not saved:
        if files.is_writer():
            records = data_lib.load_records(cfg.data, seed=cfg.seed, n_pairs=cfg.n_pairs, corpus=cfg.corpus)
            if not records:
                raise DataError(cfg.data, "holds no records")
            data_lib.make_splits(records, workdir, seed=cfg.seed)
        files.sync("reddit: splits written")
    return {s: data_lib.read_split(workdir, s) for s in data_lib.SPLITS}


def load_tokenizer_and_trunk(cfg: RedditConfig, workdir: str | epath.PathLike, train_records: Sequence[dict]):
    """The tokenizer (saved with the run; every process loads process 0's) and the trunk config.

    A pretrained `--model`'s weights are not read here: the BC run starts from
    them (`train_configs`' `init`), each device reading only its shards.
    """
    tok_dir = epath.Path(workdir) / "tokenizer"
    saved = (tok_dir / tokenizers.CONFIG_FILE).exists()
    files.sync("reddit: tokenizer looked for")
    if not saved:
        if files.is_writer():
            if cfg.model == "scratch":
                texts = [t for r in train_records for t in (r["parent"], r["comment"])]
                tokenizers.train_bpe_tokenizer(texts, cfg.bpe_vocab_size).save(tok_dir)
            else:  # the model's own tokenizer: its chat layout, or its vocabulary plus our markup ids
                pretrained.tokenizer_and_trunk(cfg.model, layout=cfg.layout)[0].save(tok_dir)
        files.sync("reddit: tokenizer written")
    if cfg.model == "scratch":
        tok = tokenizers.load_tokenizer(tok_dir)
        return tok, gpt2.GPT2Config(vocab_size=tok.vocab_size, n_positions=cfg.max_len, n_embd=cfg.n_embd,
                                    n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=0.0)
    tok, trunk = pretrained.tokenizer_and_trunk(cfg.model, layout=cfg.layout, saved_tokenizer=str(tok_dir),
                                                dropout=0.0)
    if cfg.max_len > trunk.n_positions:
        raise ValueError(f"max_len={cfg.max_len} exceeds the model's n_positions={trunk.n_positions}")
    return tok, trunk


def train_configs(cfg: RedditConfig, trunk: gpt2.GPT2Config, seed: int | None = None,
                  bc_workdir: str | None = None) -> tuple[TrainConfig, TrainConfig]:
    """Loop configs for BC π_β (starting from `cfg.model`'s weights unless scratch) and for ILQL, at training
    seed `seed` (`cfg.seed` by default). A frozen π_β is read from the BC run in `bc_workdir`, which it needs."""
    if cfg.freeze_policy and bc_workdir is None:
        raise ValueError("freeze_policy: the ILQL run reads π_β from the BC run; pass its bc_workdir")
    model = ilql.ModelConfig(trunk=trunk, target_on_online_trunk=cfg.target_on_online_trunk,
                             frozen_policy=cfg.freeze_policy, num_layers_unfrozen=cfg.num_layers_unfrozen,
                             lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)
    runs = recipe.BCThenILQL(
        model, losses.LossConfig(gamma=cfg.gamma, tau=cfg.tau, alpha_cql=cfg.alpha_cql),
        bc_steps=cfg.bc_steps, ilql_steps=cfg.ilql_steps,
        bc_optim=OptimConfig(learning_rate=cfg.bc_learning_rate, warmup_steps=cfg.warmup_steps),
        ilql_optim=OptimConfig(learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps),
        polyak_alpha=cfg.polyak_alpha, init=cfg.model,
        cadence=lambda steps: dict(log_every=max(1, steps // 10), eval_every=max(1, steps // 3)),
        loop=dict(batch_size=cfg.batch_size, max_len=cfg.max_len, eval_batches=4,
                  seed=cfg.seed if seed is None else seed))
    # An unfrozen π_β starts ILQL from the BC run's weights, which `train_and_sweep` passes itself.
    return runs.bc(), runs.ilql(bc_workdir if cfg.freeze_policy else None)


# --- evaluation ----------------------------------------------------------------


distinct_n = diagnostics.distinct_n  # unique word n-grams over all word n-grams (`ilql-jax sweep` reports the same)


def eval_parents(cfg: RedditConfig, tok, test: Sequence[dict]) -> tuple[list[str], int]:
    """The first `n_eval` test parents whose prompt leaves `max_new_tokens` room, and how many were skipped."""
    room = cfg.max_len - cfg.max_new_tokens
    parents, n_skipped = [], 0
    for record in test:
        if len(parents) == cfg.n_eval:
            break
        if len(episodes.prompt_tokens([episodes.env(record["parent"])], tok)) <= room:
            parents.append(record["parent"])
        else:
            n_skipped += 1
    if not parents:
        raise DataError(cfg.data, f"no test parent fits in max_len - max_new_tokens = {room} tokens")
    return parents, n_skipped


def generate(cfg: RedditConfig, tok, model: ilql.ModelConfig, state, parents: Sequence[str], beta: float,
             key: jax.Array) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One sampled comment per parent at inverse temperature β: texts, KL estimates, lengths (tokens)."""
    scfg = sampler.SamplerConfig(max_new_tokens=cfg.max_new_tokens, mode="sample",
                                 prompt_buckets=(cfg.max_len - cfg.max_new_tokens,))
    prompts = [episodes.prompt_tokens([episodes.env(p)], tok) for p in parents]
    texts, kls, lengths = [], [], []
    for start in range(0, len(prompts), cfg.eval_batch):
        chunk = prompts[start:start + cfg.eval_batch]
        chunk = chunk + [chunk[0]] * (cfg.eval_batch - len(chunk))  # one batch shape: one compilation
        width = max(map(len, chunk))
        tokens = np.full((len(chunk), width), tok.pad_id, np.int32)
        mask = np.zeros_like(tokens)
        for i, p in enumerate(chunk):
            tokens[i, width - len(p):], mask[i, width - len(p):] = p, 1
        out = sampler.sample(model, state.params, state.target_params, tokens, mask,
                             jax.random.fold_in(key, start), beta=beta, temperature=cfg.temperature,
                             adv_clip=cfg.adv_clip,
                             stop_ids=(tok.end_a_id,), pad_id=tok.pad_id, sampler_config=scfg)
        n_real = min(cfg.eval_batch, len(prompts) - start)
        for row, length in zip(np.asarray(out.tokens)[:n_real], np.asarray(out.lengths)[:n_real]):
            ids = [int(i) for i in row[:length]]
            ids = ids[:ids.index(tok.end_a_id)] if tok.end_a_id in ids else ids
            texts.append(tok.decode(ids))  # markup emitted mid-comment stays visible to the judge
            lengths.append(len(ids))
        kls.extend(np.asarray(out.kl)[:n_real].tolist())
    return texts, np.asarray(kls), np.asarray(lengths)


def advantage_slope(cfg: RedditConfig, tok, model, state, parents: Sequence[str], comments: Sequence[str]) -> float:
    """Median slope k of A on log π_β over the states that sample `comments` (`ilql_jax.diagnostics`)."""
    rows = [(episodes.prompt_tokens([episodes.env(p)], tok), tok.encode(c) + [tok.end_a_id])
            for p, c in zip(parents, comments)]
    tokens = np.full((len(rows), cfg.max_len), tok.pad_id, np.int32)
    mask, positions = np.zeros_like(tokens), np.zeros(tokens.shape, bool)
    for i, (p, c) in enumerate(rows):
        seq = (p + c)[:cfg.max_len]
        tokens[i, :len(seq)], mask[i, :len(seq)] = seq, 1
        positions[i, len(p) - 1:len(seq) - 1] = True  # the states that chose the comment's tokens
    return float(np.median(diagnostics.advantage_slope(model, state.params, state.target_params, tokens, mask,
                                                       positions)))


def fluency_scorer(cfg: RedditConfig, tok):
    """`score(parents, comments)`: the perplexity of the comments (as replies to their parents) under
    `cfg.fluency_model`, untouched (`diagnostics.perplexity`); None when there is none. Its weights are read at
    the first call, after training."""
    name = cfg.model if cfg.fluency_model == "auto" else cfg.fluency_model
    if name in ("none", "scratch"):
        return None
    loaded = {}

    def score(parents: Sequence[str], comments: Sequence[str]) -> float:
        if not loaded:
            loaded["tok"] = tok if name == cfg.model else pretrained.tokenizer_and_trunk(name)[0]
            loaded["config"], loaded["params"] = pretrained.load_trunk(name, dropout=0.0)
        ref = loaded["tok"]
        prompts = [episodes.prompt_tokens([episodes.env(p)], ref) for p in parents]
        return diagnostics.perplexity(loaded["params"], loaded["config"], prompts, [ref.encode(c) for c in comments],
                                      pad_id=ref.pad_id)

    return score


def evaluate(cfg: RedditConfig, tok, model, state, parents: Sequence[str], judge, seed: int,
             fluency=None) -> tuple[list[dict], dict]:
    """The β sweep at training seed `seed`: one row of statistics per β (with the comments' perplexity under
    the untouched fluency model when `fluency` scores them), and the generations."""
    rows, generations = [], {}
    label = f"seed {seed} " if cfg.seeds > 1 else ""
    for beta in cfg.betas:
        texts, kl, lengths = generate(cfg, tok, model, state, parents, beta, jax.random.key(seed + 1))
        levels = rewards_lib.judge_levels(texts, judge)
        reward = rewards_lib.rewards_from_levels(levels)
        rows.append({
            "seed": seed, "beta": beta, "mean_reward": float(reward.mean()),
            "stderr": float(reward.std(ddof=1) / math.sqrt(len(reward))) if len(reward) > 1 else 0.0,
            "toxic_rate": rewards_lib.toxic_rate(levels), "kl": float(kl.mean()),
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "mean_length": float(lengths.mean()), "n": len(texts),
        })
        if fluency is not None:
            rows[-1]["perplexity"] = fluency(parents, texts)
        generations[beta] = texts
        r = rows[-1]
        print(f"{label}β={beta:g}: reward {r['mean_reward']:.3f} ± {r['stderr']:.3f}, toxic {r['toxic_rate']:.3f}, "
              f"KL {r['kl']:.2f}, distinct-2 {r['distinct_2']:.3f}"
              + (f", perplexity {r['perplexity']:.1f}" if "perplexity" in r else ""))
    return rows, generations


# --- the job ---------------------------------------------------------------------


def prepare(cfg: RedditConfig, workdir: epath.Path, judge):
    """Splits, tokenizer and trunk config, judged token arrays and the held-out parents, all checked before any
    training: (tokenizer, trunk, {"train", "eval"} arrays, parents, skipped-pair counts)."""
    splits = load_splits(cfg, workdir)
    tok, trunk = load_tokenizer_and_trunk(cfg, workdir, splits["train"])
    # Lengths are checked before anything is judged: an error here costs no judging.
    fits = {name: data_lib.fits_in_length(splits[name], tok, cfg.max_len) for name in ("train", "eval")}
    for name, ok in fits.items():
        if cfg.too_long == "error" and not all(ok):
            record = splits[name][ok.index(False)]
            raise DataError(data_lib.locate(cfg.data, record), f"the pair is longer than max_len={cfg.max_len} "
                            "tokens with its markup; raise --max_len, or pass --too_long skip to skip such pairs")
        if sum(ok) < cfg.batch_size:  # batches are never padded: the loop would refuse it after judging
            raise DataError(cfg.data, f"{sum(ok)} {name} pairs fit in max_len={cfg.max_len} tokens "
                            f"({len(ok) - sum(ok)} are longer), fewer than batch_size={cfg.batch_size}: "
                            "add data, raise --max_len or lower --batch_size")
    if cfg.reward in ("upvotes", "label"):  # rewards from the data's own fields: each record checked here
        for name in ("train", "eval"):
            for record in splits[name]:
                try:
                    rewards_lib.compute_rewards([record], cfg.reward)
                except ValueError as e:
                    raise DataError(data_lib.locate(cfg.data, record),
                                    str(e).replace("record 0", f"--reward {cfg.reward}:", 1)) from e
    parents, n_test_skipped = eval_parents(cfg, tok, splits["test"])
    arrays, returns, skipped = {}, {}, {}
    for name in ("train", "eval"):
        r = rewards_lib.compute_rewards(splits[name], cfg.reward, judge=judge, seed=cfg.seed)
        kept = [e for e, ok in zip(data_lib.to_episodes(splits[name], r), fits[name]) if ok]
        skipped[name] = len(fits[name]) - len(kept)
        arrays[name] = episodes.episodes_to_arrays(kept, tok, cfg.max_len)
        returns[name] = r
    skipped["test"] = n_test_skipped
    print(f"data: {len(splits['train'])} train / {len(splits['eval'])} eval / {len(splits['test'])} test pairs; "
          f"train reward {returns['train'].mean():.3f}; vocab {tok.vocab_size}")
    print(f"skipped as too long (max_len={cfg.max_len}, prompts ≤ {cfg.max_len - cfg.max_new_tokens} tokens): "
          + ", ".join(f"{n} {name}" for name, n in skipped.items()))
    return tok, trunk, arrays, parents, skipped


def run(cfg: RedditConfig, workdir: str) -> list[dict]:
    """Trains BC π_β and ILQL, sweeps β (once per training seed), writes the results; returns the rows
    aggregated over seeds (`experiments.aggregate`).

    Multi-host: the same command on every host, with a shared workdir (e.g.
    `gs://`); every process reads process 0's splits and tokenizer, trains
    and decodes its part, and process 0 writes the shared files.
    """
    t0 = time.perf_counter()
    workdir = epath.Path(workdir)
    judge = rewards_lib.ToxicityJudge(cache_dir=workdir)
    tok, trunk, arrays, parents, skipped = prepare(cfg, workdir, judge)
    fluency = fluency_scorer(cfg, tok)
    examples, minutes = {}, [(time.perf_counter() - t0) / 60]  # the first seed's generations; setup, then each seed

    def seed_rows(seed: int, seed_dir: epath.Path) -> list[dict]:
        rows, generations = train_and_sweep(cfg, seed, seed_dir, tok, trunk, arrays, parents, judge, fluency)
        write_generations(seed_dir, parents, generations)
        if not examples:
            examples.update(generations)
        minutes.append((time.perf_counter() - t0) / 60 - sum(minutes))
        return rows

    rows = aggregate_lib.over_seeds(cfg.seed, cfg.seeds, workdir, seed_rows)
    table = aggregate_lib.aggregate(rows, ("beta",), METRICS + (("perplexity",) if fluency else ()),
                                    {"mean_reward": "stderr"})
    criteria = main_criteria(table, rows)
    if cfg.seeds > 1:
        for r in table:
            print(f"β={r['beta']:g} over {cfg.seeds} seeds: reward {aggregate_lib.mean_se(r, 'mean_reward')}, "
                  f"toxic {aggregate_lib.mean_se(r, 'toxic_rate')}, KL {aggregate_lib.mean_se(r, 'kl', '.2f')}, "
                  f"distinct-2 {aggregate_lib.mean_se(r, 'distinct_2')}"
                  + (f", perplexity {aggregate_lib.mean_se(r, 'perplexity', '.1f')}" if "perplexity" in r else ""))
    if criteria:
        print(criteria_line(criteria))
    print(f"minutes: setup {minutes[0]:.1f}, per seed " + " / ".join(f"{m:.1f}" for m in minutes[1:]))
    write_results(workdir, cfg, table, rows, criteria, parents, examples, minutes, skipped)
    return table


METRICS = ("mean_reward", "toxic_rate", "kl", "distinct_1", "distinct_2", "mean_length", "advantage_slope")


def train_and_sweep(cfg: RedditConfig, seed: int, workdir: epath.Path, tok, trunk, arrays: dict, parents: Sequence[str],
                    judge, fluency=None) -> tuple[list[dict], dict]:
    """One training seed: BC π_β, ILQL from it, the β sweep; the rows (with `seed`) and the generations."""
    bc_cfg, rl_cfg = train_configs(cfg, trunk, seed, str(workdir / "bc"))
    bc_state = train_and_evaluate(bc_cfg, str(workdir / "bc"), arrays["train"], arrays["eval"])
    # Every ILQL trunk starts from the BC π_β, as they would from a pretrained GPT-2 (whole, when BC trained
    # only part of it); a frozen π_β is read from the BC run by the ILQL config's init.
    weights = {}
    if not rl_cfg.init.startswith("bc:"):
        policy = ilql.materialize(bc_cfg.step.model, bc_state.params, {})[0]["policy"]
        weights = dict(trunk=policy, policy=policy)
    state = train_and_evaluate(rl_cfg, str(workdir / "ilql"), arrays["train"], arrays["eval"], **weights)
    rows, generations = evaluate(cfg, tok, rl_cfg.step.model, state, parents, judge, seed, fluency)
    # How much of β·A only sharpens π_β, read on π_β's own comments (the lowest β evaluated).
    k = advantage_slope(cfg, tok, rl_cfg.step.model, state, parents, generations[min(generations)])
    for row in rows:
        row["advantage_slope"] = k
    print(f"A ≈ k·log π_β + …: median k = {k:.3f}, so β = 8 acts on π_β like a temperature {1 / (1 + 8 * k):.2f}")
    return rows, generations


# --- results ---------------------------------------------------------------------

CRITERIA_BETA = 8.0


FLUENCY_RATIO = 1.5


def main_criteria(table: Sequence[dict], rows: Sequence[dict], beta: float = CRITERIA_BETA) -> dict | None:
    """The main job's criteria at β (None unless the sweep has β = 0 and β): the toxic rate at most half of
    π_β's (β = 0) and distinct-2 at least 0.8 of π_β's, and where the comments' perplexity under the untouched
    fluency model was measured, at most 1.5 × π_β's (fluency kept); for the means over seeds and for each seed
    against its own π_β."""
    agg = {r["beta"]: r for r in table}
    if 0.0 not in agg or beta not in agg:
        return None
    fluency = "perplexity" in agg[0.0]

    def holds(base: dict, steered: dict) -> bool:
        return (steered["toxic_rate"] <= 0.5 * base["toxic_rate"]
                and steered["distinct_2"] >= 0.8 * base["distinct_2"]
                and (not fluency or steered["perplexity"] <= FLUENCY_RATIO * base["perplexity"]))

    by_seed: dict = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["beta"]] = r
    return {"beta": beta, "toxic_rate": [agg[0.0]["toxic_rate"], agg[beta]["toxic_rate"]],
            "distinct_2": [agg[0.0]["distinct_2"], agg[beta]["distinct_2"]],
            **({"perplexity": [agg[0.0]["perplexity"], agg[beta]["perplexity"]]} if fluency else {}),
            "mean_holds": holds(agg[0.0], agg[beta]),
            "seeds_hold": {str(s): holds(r[0.0], r[beta]) for s, r in by_seed.items()}}


def criteria_line(c: dict) -> str:
    seeds = list(c["seeds_hold"].values())
    fluency = "perplexity" in c
    return (f"main criteria at β = {c['beta']:g} (toxic ≤ ½ π_β's, distinct-2 ≥ 0.8 π_β's"
            + (f", perplexity ≤ {FLUENCY_RATIO:g} π_β's" if fluency else "") + "): toxic "
            f"{c['toxic_rate'][0]:.3f} → {c['toxic_rate'][1]:.3f}, distinct-2 {c['distinct_2'][0]:.3f} → "
            f"{c['distinct_2'][1]:.3f}"
            + (f", perplexity {c['perplexity'][0]:.1f} → {c['perplexity'][1]:.1f}" if fluency else "")
            + f"; {'hold' if c['mean_holds'] else 'FAIL'} for the mean, {sum(seeds)} of {len(seeds)} seeds hold")


COLUMNS: tuple[results.Column, ...] = (
    ("β", lambda r: f"{r['beta']:g}"),
    ("mean reward ± s.e.", lambda r: aggregate_lib.mean_se(r, "mean_reward")),
    ("toxic rate", lambda r: aggregate_lib.mean_se(r, "toxic_rate")),
    ("KL from π_β", lambda r: aggregate_lib.mean_se(r, "kl", ".2f")),
    ("distinct-2", lambda r: aggregate_lib.mean_se(r, "distinct_2")),
    ("distinct-1", lambda r: aggregate_lib.mean_se(r, "distinct_1")),
    ("mean length", lambda r: aggregate_lib.mean_se(r, "mean_length", ".1f")),
    ("toxic per seed", lambda r: aggregate_lib.per_seed(r, "toxic_rate")),
    ("distinct-2 per seed", lambda r: aggregate_lib.per_seed(r, "distinct_2")),
)
FLUENCY_COLUMNS: tuple[results.Column, ...] = (
    ("perplexity", lambda r: aggregate_lib.mean_se(r, "perplexity", ".1f")),
    ("perplexity per seed", lambda r: aggregate_lib.per_seed(r, "perplexity", ".1f")),
)


def write_generations(workdir: epath.Path, parents: Sequence[str], generations: dict) -> None:
    """generations.jsonl: each held-out parent with its comment at every β (process 0)."""
    if files.is_writer():
        files.write_text(workdir / "generations.jsonl", "".join(
            json.dumps({"parent": parent, **{f"beta={b:g}": g[i] for b, g in generations.items()}}) + "\n"
            for i, parent in enumerate(parents)))


def write_results(workdir: epath.Path, cfg: RedditConfig, table: list[dict], rows: list[dict], criteria: dict | None,
                  parents: Sequence[str], examples: dict, minutes: Sequence[float], skipped: dict[str, int]) -> None:
    """results.json (every seed's rows and the aggregate), results.md and reward_vs_kl.png (process 0)."""
    if not files.is_writer():
        return
    spread = ("mean ± s.e. across seeds" if cfg.seeds > 1
              else "one seed: ± is the s.e. over comments (reward only); pass --seeds 3 for the spread across seeds")
    data = cfg.data if cfg.data != "default" else f"default ({cfg.corpus} corpus)"
    footer = [f"{cfg.seeds} seed(s) ({spread}); data {data!r}, reward {cfg.reward!r}, model {cfg.model!r}; "
              f"{len(parents)} held-out parents per β; {sum(minutes):.1f} min in all (setup {minutes[0]:.1f}, "
              "then per seed " + " / ".join(f"{m:.1f}" for m in minutes[1:]) + ").",
              "Skipped as longer than max_len: " + ", ".join(f"{n} {name}" for name, n in skipped.items()) + "."]
    fluency = "perplexity" in table[0]
    if fluency:
        name = cfg.model if cfg.fluency_model == "auto" else cfg.fluency_model
        footer += [f"Perplexity: of the sampled comments, as replies to their parents, under {name!r} untouched."]
    if criteria:
        footer += ["", criteria_line(criteria) + "."]
    footer += ["", f"## Examples (seed {cfg.seed}, the first three held-out parents)", ""]
    for i in range(min(3, len(parents))):
        footer += [f"- **parent:** {parents[i]}"] + [f"  - β={b:g}: {g[i]}" for b, g in examples.items()]
    results.write_table(workdir, table, COLUMNS + (FLUENCY_COLUMNS if fluency else ()), "\n".join(footer),
                        seed_rows=rows, criteria=criteria)
    plot_reward_vs_kl(workdir / "reward_vs_kl.png", table)


def plot_reward_vs_kl(path: str | epath.PathLike, table: list[dict]) -> None:
    """Mean reward against KL per β, ±2 s.e. across seeds (over comments for one seed), each seed a dot."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    several = table[0]["n_seeds"] > 1
    yerr = [2 * (r["mean_reward_se_seeds"] if several else r["mean_reward_se_episodes"]) for r in table]
    xerr = [2 * r["kl_se_seeds"] for r in table] if several else None
    ax.errorbar([r["kl"] for r in table], [r["mean_reward"] for r in table], xerr=xerr, yerr=yerr, marker="o",
                capsize=3)
    for r in table:
        if several:
            ax.scatter(r["kl_seeds"], r["mean_reward_seeds"], color="black", s=6, zorder=3)
        ax.annotate(f"β={r['beta']:g}", (r["kl"], r["mean_reward"]), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("KL from π_β (nats per comment)")
    ax.set_ylabel("mean reward (±2 s.e.)" + ("; dots: seeds" if several else ""))
    ax.set_title("Reddit toxicity: reward vs KL")
    fig.tight_layout()
    plots.save_figure(path, fig)
