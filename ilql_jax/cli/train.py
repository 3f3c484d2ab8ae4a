"""`ilql-jax train`: records → checks → tokenizer → BC π_β → ILQL from π_β, in one resumable workdir.

In execution order: read and check every record (`data.records`), check the
workdir agrees with the options (a rerun resumes; a different model or data
is refused), split off the held-out records by seed, write `options.json`,
build or reload the tokenizer (`tokenizer/`), check every record's token
length, then train BC (`bc/`) and ILQL starting from it (`ilql/`) with
`train_and_evaluate`, which resumes each from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from ilql_jax import files, tokenizers
from ilql_jax.cli.options import TrainOptions
from ilql_jax.config import ConfigError, TrainConfig, config_to_dict
from ilql_jax.data import records as records_lib
from ilql_jax.data.episodes import episodes_to_arrays

__all__ = ["OPTIONS_FILE", "train", "train_configs"]

OPTIONS_FILE = "options.json"
# Options that decide what the tokenizer and the checkpoints hold: a rerun in the same workdir must keep them.
_TOKENIZER_FIELDS = ("model", "tokenizer", "bpe_vocab_size", "seed", "eval_fraction")
# Rewards baked into the checkpoints' values.
_VALUE_FIELDS = ("reward_norm",)
_SHAPE_FIELDS = ("model", "n_layer", "n_embd", "n_head", "max_len")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _has_checkpoints(workdir: str) -> bool:
    return any(os.path.isdir(os.path.join(workdir, run, "checkpoints")) for run in ("bc", "ilql"))


def _check_workdir(opts: TrainOptions, data_sha256: str) -> None:
    """ConfigError if the workdir holds a tokenizer or checkpoints made from other data or another model."""
    path = os.path.join(opts.workdir, OPTIONS_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    current = {**config_to_dict(opts), "data_sha256": data_sha256}
    fields = []
    if os.path.isfile(os.path.join(opts.workdir, "tokenizer", tokenizers.CONFIG_FILE)):
        fields += ["data_sha256", *_TOKENIZER_FIELDS]
    if _has_checkpoints(opts.workdir):
        fields += ["data_sha256", *_SHAPE_FIELDS, *_VALUE_FIELDS]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    for field in dict.fromkeys(fields):
        if saved.get(field, defaults.get(field)) != current[field]:
            what = "the data file's contents" if field == "data_sha256" else f"--{field} {saved.get(field)}"
            raise ConfigError(f"{opts.workdir} was trained with {what} (see {path}); this run has "
                              f"{'other contents' if field == 'data_sha256' else current[field]}: use the same, "
                              "or a new --workdir")


def _split(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    if not eval_fraction:
        return records, []
    order = np.random.default_rng(seed).permutation(len(records))
    n_eval = int(round(eval_fraction * len(records)))
    held = set(order[:n_eval].tolist())
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def _scratch_tokenizer(opts: TrainOptions, train_records: list, eval_records: list):
    """`--tokenizer`: a BPE fitted to the training records, one id per symbol or character of all records, or a
    saved tokenizer; a symbol tokenizer must encode every record (else one line naming it)."""
    if opts.tokenizer == "bpe":
        return tokenizers.train_bpe_tokenizer([seg.text for r in train_records for seg in r.episode.segments],
                                              opts.bpe_vocab_size)
    records = train_records + eval_records
    if opts.tokenizer in ("symbols", "chars"):
        texts = [seg.text for r in records for seg in r.episode.segments]
        units = {u for t in texts for u in (t.split() if opts.tokenizer == "symbols" else "".join(t.split()))}
        return tokenizers.symbol_tokenizer(sorted(units), " " if opts.tokenizer == "symbols" else "")
    if not os.path.isfile(os.path.join(opts.tokenizer, tokenizers.CONFIG_FILE)):
        raise ConfigError(f"--tokenizer {opts.tokenizer}: not 'bpe', 'symbols' or 'chars', and no saved tokenizer "
                          f"there ({tokenizers.CONFIG_FILE} missing)")
    tok = tokenizers.load_tokenizer(opts.tokenizer)
    for r in records:
        for seg in r.episode.segments:
            try:
                tok.encode(seg.text)
            except ValueError as e:
                raise records_lib.DataError(opts.data, f"--tokenizer {opts.tokenizer}: {e}", r.line) from None
    return tok


def _tokenizer_and_trunk(opts: TrainOptions, train_records: list, eval_records: list):
    """The run's tokenizer (reloaded when saved) and trunk config (GPT-2 from scratch, or the checkpoint's)."""
    from ilql_jax.models import gpt2, hf_import, llama

    tok_dir = os.path.join(opts.workdir, "tokenizer")
    saved = os.path.isfile(os.path.join(tok_dir, tokenizers.CONFIG_FILE))  # written last: the rest is there
    if opts.model == "scratch":
        tok = tokenizers.load_tokenizer(tok_dir) if saved else _scratch_tokenizer(opts, train_records, eval_records)
        trunk = gpt2.GPT2Config(vocab_size=tok.vocab_size, n_positions=opts.max_len, n_embd=opts.n_embd,
                                n_layer=opts.n_layer, n_head=opts.n_head, dropout=0.0, dtype=opts.dtype)
    else:
        tok = tokenizers.load_tokenizer(tok_dir) if saved else tokenizers.gpt2_tokenizer(
            None if opts.model == "gpt2" else opts.model)
        directory = hf_import.resolve(opts.model)
        with open(os.path.join(directory, hf_import.CONFIG_NAME), encoding="utf-8") as f:
            trunk = hf_import.config_from_hf(json.load(f), dropout=0.0, dtype=opts.dtype)
        if isinstance(trunk, llama.LlamaConfig):
            # Markup ids the checkpoint lacks become new embedding rows (hf_import: the mean row).
            trunk = dataclasses.replace(trunk, vocab_size=hf_import.import_vocab_size(trunk, tok.vocab_size))
        if tok.vocab_size > trunk.padded_vocab_size:
            raise ConfigError(f"--model {opts.model}: the tokenizer has {tok.vocab_size} ids, the model's "
                              f"embedding {trunk.padded_vocab_size}")
        if isinstance(trunk, gpt2.GPT2Config):
            trunk = dataclasses.replace(trunk, vocab_size=tok.vocab_size)
        if opts.max_len > trunk.n_positions:
            raise ConfigError(f"--max_len {opts.max_len} exceeds the model's n_positions={trunk.n_positions}")
    if not saved:
        tok.save(tok_dir)
    return tok, trunk


def train_configs(opts: TrainOptions, trunk, n_eval: int, end_a_id: int | None = None) -> tuple[TrainConfig, TrainConfig]:
    """Loop configs of the BC run and of the ILQL run that starts from it (per-utterance ILQL with
    `opts.per_utterance`, which needs the tokenizer's `</a>` id `end_a_id`)."""
    from ilql_jax import losses, train
    from ilql_jax.checkpoint import CheckpointConfig
    from ilql_jax.models import ilql
    from ilql_jax.state import OptimConfig

    def run(steps: int) -> dict:
        return dict(batch_size=opts.batch_size, max_len=opts.max_len, num_steps=steps,
                    log_every=min(opts.log_every, steps), eval_every=max(1, steps // 4),
                    eval_batches=max(1, min(8, n_eval // opts.batch_size)), seed=opts.seed,
                    progress=opts.progress, mesh=opts.mesh,
                    checkpoint=CheckpointConfig(every_steps=opts.checkpoint_every))

    bc = TrainConfig(step=train.StepConfig(mode="bc", model=ilql.ModelConfig(trunk=trunk),
                                           optim=OptimConfig(learning_rate=opts.bc_learning_rate)),
                     init="scratch" if opts.model == "scratch" else opts.model, **run(opts.bc_steps))
    rl = TrainConfig(
        step=train.StepConfig(mode="ilql_utt" if opts.per_utterance else "ilql",
                              end_a_id=end_a_id if opts.per_utterance else None,
                              model=ilql.ModelConfig(trunk=trunk, frozen_policy=opts.freeze_policy),
                              loss=losses.LossConfig(gamma=opts.gamma, tau=opts.tau, alpha_cql=opts.alpha_cql),
                              optim=OptimConfig(learning_rate=opts.learning_rate), polyak_alpha=opts.polyak_alpha),
        init="bc:" + os.path.abspath(os.path.join(opts.workdir, "bc")), **run(opts.ilql_steps))
    return bc, rl


def train(opts: TrainOptions):
    """Runs `ilql-jax train`; returns the final ILQL state."""
    records = records_lib.load_records(opts.data)  # every line checked before anything else happens
    data_sha256 = _sha256(opts.data)
    _check_workdir(opts, data_sha256)
    train_records, eval_records = _split(records, opts.eval_fraction, opts.seed)
    if eval_records and len(eval_records) < opts.batch_size:
        raise ConfigError(f"--eval_fraction {opts.eval_fraction} holds out {len(eval_records)} of {len(records)} "
                          f"records, fewer than --batch_size {opts.batch_size} (evaluation uses full batches); "
                          "raise it, or pass --eval_fraction 0")
    os.makedirs(opts.workdir, exist_ok=True)
    files.atomic_write_text(os.path.join(opts.workdir, OPTIONS_FILE),
                            json.dumps({**config_to_dict(opts), "data_sha256": data_sha256}, indent=2) + "\n")

    tok, trunk = _tokenizer_and_trunk(opts, train_records, eval_records)
    train_records, n_long = records_lib.check_lengths(train_records, tok, opts.max_len, opts.data, opts.too_long)
    eval_records, n_long_eval = records_lib.check_lengths(eval_records, tok, opts.max_len, opts.data, opts.too_long)
    if len(train_records) < opts.batch_size:
        raise ConfigError(f"{opts.data}: {len(train_records)} training records"
                          + (f" ({n_long + n_long_eval} longer than --max_len skipped)" if n_long else "")
                          + f", fewer than --batch_size {opts.batch_size}; lower it or add records")
    print(f"data: {len(records)} records in {opts.data}: {len(train_records)} train, {len(eval_records)} held out"
          + (f", {n_long + n_long_eval} skipped as longer than max_len={opts.max_len}" if n_long + n_long_eval else "")
          + f"; vocabulary {tok.vocab_size}")

    from ilql_jax.data.rewards import fit_reward_norm
    from ilql_jax.loop import train_and_evaluate

    try:
        norm = fit_reward_norm([r.episode for r in train_records], opts.reward_norm)
    except ValueError as e:  # e.g. constant rewards have no scale
        raise records_lib.DataError(opts.data, f"--reward_norm {opts.reward_norm}: {e}") from e
    if opts.reward_norm != "none":
        print(f"rewards: r ↦ (r − {norm.shift:.4g}) / {norm.scale:.4g} ({opts.reward_norm}, fitted on the train records)")
    options = {**config_to_dict(opts), "data_sha256": data_sha256, "reward_norm_fitted": dataclasses.asdict(norm)}
    files.atomic_write_text(os.path.join(opts.workdir, OPTIONS_FILE), json.dumps(options, indent=2) + "\n")
    arrays = episodes_to_arrays(norm.apply(r.episode for r in train_records), tok, opts.max_len)
    eval_arrays = (episodes_to_arrays(norm.apply(r.episode for r in eval_records), tok, opts.max_len)
                   if eval_records else None)
    bc_cfg, rl_cfg = train_configs(opts, trunk, len(eval_records), tok.end_a_id)
    print("1/2: behaviour cloning of π_β")
    train_and_evaluate(bc_cfg, os.path.join(opts.workdir, "bc"), arrays, eval_arrays)
    print("2/2: ILQL, starting from π_β")
    state = train_and_evaluate(rl_cfg, os.path.join(opts.workdir, "ilql"), arrays, eval_arrays)
    print(f"done: {opts.workdir}. Next: ilql-jax generate --workdir {opts.workdir} --beta 4 --prompt TEXT; "
          f"ilql-jax export --workdir {opts.workdir} --out DIR")
    return state
