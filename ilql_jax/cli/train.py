"""`ilql-jax train`: records → checks → tokenizer → BC π_β → ILQL from π_β, in one resumable workdir.

In execution order: check that a hub model can be fetched (a typo in --model
never gets this far: `options.check_model`), read and check every record
(`data.records`), claim the workdir (`workdir.claim`: one process at a time;
a run refused before training leaves nothing behind), check the workdir
agrees with the options (`check_workdir`), split off the held-out records by
seed, write `options.json`, build or reload the tokenizer (`tokenizer/`), check
every record's token length, then train BC (`bc/`) and ILQL starting from it
(`ilql/`) with `train_and_evaluate`, which resumes each from its newest
checkpoint, and report the advantage's scale with a β range to sweep
(`advantage.json`, `diagnostics.suggest_betas`).

One rule for a used workdir (one holding checkpoints), by option:

* `FIXED_FIELDS` and the data's contents: never change (refused, whatever the flags);
* `FREE_FIELDS`: where things are and how they are shown or saved: change freely;
* `bc_steps`, `ilql_steps`: raise them to train longer (refused below a checkpoint,
  and `bc_steps` once ILQL has started from BC's result);
* the rest (`stage_fields`): refused unless --force_new_stage, which continues
  from the newest checkpoints with the new values and records the stage in
  options.json; a stage that would train nothing is refused too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from ilql_jax import files, hub, recipe, tokenizers
from ilql_jax.cli import workdir as workdir_lib
from ilql_jax.cli.options import (PRETRAINED_LEARNING_RATES, SCRATCH_LEARNING_RATES, TrainOptions, is_hub_shaped,
                                  learning_rates)
from ilql_jax.config import ConfigError, TrainConfig, config_to_dict
from ilql_jax.configs import CheckpointConfig, LossConfig, ModelConfig, OptimConfig
from ilql_jax.data import records as records_lib
from ilql_jax.data.episodes import episodes_to_arrays

__all__ = ["ADVANTAGE_FILE", "FIXED_FIELDS", "FREE_FIELDS", "OPTIONS_FILE", "check_workdir", "stage_fields",
           "train", "train_configs"]

OPTIONS_FILE = "options.json"
ADVANTAGE_FILE = "advantage.json"
# Options that decide what the tokenizer holds: a rerun must keep them once the tokenizer is saved.
_TOKENIZER_FIELDS = ("model", "layout", "tokenizer", "bpe_vocab_size", "seed", "eval_fraction")
# Options a used workdir never changes: the tokenizer's, the state's shapes and tree (freeze_policy drops π_β's
# optimizer state), which records train and in what order (max_len and too_long decide which are kept), and the
# rewards baked into the values (reward_norm).
FIXED_FIELDS = (*_TOKENIZER_FIELDS, "n_layer", "n_embd", "n_head", "max_len", "too_long", "reward_norm",
                "freeze_policy", "num_layers_unfrozen", "lora_rank", "lora_alpha", "per_utterance")
# Options that change nothing trained: paths (the data is compared by its SHA-256), display, checkpoint and log
# cadence, and the mesh (a checkpoint restores on another one).
FREE_FIELDS = ("data", "workdir", "progress", "log_every", "checkpoint_every", "mesh", "force_new_stage")
_LENGTH_FIELDS = ("bc_steps", "ilql_steps")
# The phase each stage option acts on (the others act on both).
_BC_FIELDS = ("bc_learning_rate",)
_ILQL_FIELDS = ("learning_rate", "tau", "gamma", "alpha_cql", "polyak_alpha")
_ADVANTAGE_ROWS = 256  # episodes the advantage diagnostic reads


def stage_fields() -> tuple[str, ...]:
    """The options a used workdir changes only as a new stage (--force_new_stage): all but the fixed, free
    and length ones, so an option added later is refused until someone classifies it."""
    return tuple(f.name for f in dataclasses.fields(TrainOptions)
                 if f.name not in (*FIXED_FIELDS, *FREE_FIELDS, *_LENGTH_FIELDS))


def _show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _flag(name: str, value) -> str:
    return "the data file's contents" if name == "data_sha256" else f"--{name} {_show(value)}"


def _with_default_rates(options: dict, model: str) -> dict:
    """`options` with a learning rate left to the model (none) replaced by the model's default, so that a rerun
    compares the rates that train, whether given or defaulted (`options.learning_rates`)."""
    defaults = PRETRAINED_LEARNING_RATES if model != "scratch" else SCRATCH_LEARNING_RATES
    out = dict(options)
    for name, default in zip(("bc_learning_rate", "learning_rate"), defaults):
        if out.get(name, None) is None:
            out[name] = default
    return out


def check_workdir(opts: TrainOptions, data_sha256: str) -> tuple[list[dict], bool]:
    """The stages recorded in the workdir's options.json, plus a new one if --force_new_stage starts one (and
    whether it did); ConfigError (one line naming the options) for a rerun the workdir's rule refuses (module
    docstring)."""
    path = os.path.join(opts.workdir, OPTIONS_FILE)
    if not os.path.isfile(path):
        return [], False
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    stages = list(saved.get("stages", []))
    current = _with_default_rates({**config_to_dict(opts), "data_sha256": data_sha256}, opts.model)
    saved = _with_default_rates(saved, saved.get("model", opts.model))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    was = lambda name: saved.get(name, defaults.get(name))  # noqa: E731 - options.json may predate a field
    differs = lambda names: [n for n in dict.fromkeys(names) if was(n) != current[n]]  # noqa: E731
    bc_step, ilql_step = (workdir_lib.latest_step(opts.workdir, run) for run in ("bc", "ilql"))
    trained = bc_step is not None or ilql_step is not None
    has_tokenizer = os.path.isfile(os.path.join(opts.workdir, "tokenizer", tokenizers.CONFIG_FILE))
    fixed = differs(["data_sha256", *(FIXED_FIELDS if trained else _TOKENIZER_FIELDS if has_tokenizer else ())])
    if fixed:
        raise ConfigError(f"{opts.workdir} was trained with {', '.join(_flag(n, was(n)) for n in fixed)} (see "
                          f"{path}); this run has {', '.join('other contents' if n == 'data_sha256' else _show(current[n]) for n in fixed)}"
                          ", which can never change in a workdir: use the same, or a new --workdir")
    if not trained:
        return stages, False
    # Longer runs continue the same stage; shorter ones would have to undo checkpoints.
    if was("bc_steps") != opts.bc_steps and ilql_step is not None:
        raise ConfigError(f"--bc_steps {opts.bc_steps}: {opts.workdir} was trained with --bc_steps "
                          f"{was('bc_steps')} and ILQL has started from that π_β, so BC can no longer change; "
                          "keep it, or use a new --workdir")
    for name, step in (("bc_steps", bc_step), ("ilql_steps", ilql_step)):
        if step is not None and getattr(opts, name) < step:
            raise ConfigError(f"--{name} {getattr(opts, name)}: {opts.workdir} already holds a checkpoint at "
                              f"step {step} of {name.split('_')[0]}/; use at least that, or a new --workdir")
    staged = differs(stage_fields())
    if not staged:
        return stages, False
    listed = ", ".join(f"{_flag(n, was(n))} (this run: {_show(current[n])})" for n in staged)
    if not opts.force_new_stage:
        raise ConfigError(f"{opts.workdir} was trained with {listed}: rerun with its options to resume, add "
                          "--force_new_stage true to continue from its checkpoints with the new values "
                          "(docs/cli.md), or use a new --workdir")
    bc_left = bc_step is None or bc_step < opts.bc_steps
    ilql_left = (ilql_step or 0) < opts.ilql_steps
    for name in staged:
        left = bc_left if name in _BC_FIELDS else ilql_left if name in _ILQL_FIELDS else bc_left or ilql_left
        if not left:
            phase = "behaviour cloning" if name in _BC_FIELDS else "ILQL"
            step = bc_step if name in _BC_FIELDS else ilql_step
            more = ("it started ILQL, so it can no longer change anything" if name in _BC_FIELDS else
                    f"raise --ilql_steps above {step} to give the new stage steps")
            raise ConfigError(f"--force_new_stage with --{name} {_show(current[name])}: {phase} in "
                              f"{opts.workdir} is finished (step {step}); {more}")
    return [*stages, {"bc_step": bc_step, "ilql_step": ilql_step,
                      "changed": {n: [was(n), current[n]] for n in staged}}], True


def _check_hub(model: str) -> None:
    """ConfigError at once when --model names a hub model (not a local path) that cannot be fetched."""
    if os.path.exists(os.path.expanduser(model)) or not (model == "gpt2" or is_hub_shaped(model)):
        return
    reason = hub.unreachable(model)
    if reason:
        raise ConfigError(f"--model {model}: no such local path, and as a Hugging Face hub id it cannot be fetched: "
                          f"{reason}; pass a local model directory, or run where the hub is reachable")


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
    """The run's tokenizer (reloaded when saved) and trunk config (GPT-2 from scratch, or the pretrained model's:
    `pretrained.tokenizer_and_trunk`)."""
    from ilql_jax.models import gguf_import, gpt2

    tok_dir = os.path.join(opts.workdir, "tokenizer")
    saved = os.path.isfile(os.path.join(tok_dir, tokenizers.CONFIG_FILE))  # written last: the rest is there
    if opts.model == "scratch":
        tok = tokenizers.load_tokenizer(tok_dir) if saved else _scratch_tokenizer(opts, train_records, eval_records)
        trunk = gpt2.GPT2Config(vocab_size=tok.vocab_size, n_positions=opts.max_len, n_embd=opts.n_embd,
                                n_layer=opts.n_layer, n_head=opts.n_head, dropout=0.0, dtype=opts.dtype)
    else:
        from ilql_jax import pretrained

        try:
            tok, trunk = pretrained.tokenizer_and_trunk(opts.model, layout=opts.layout,
                                                        saved_tokenizer=tok_dir if saved else None,
                                                        dropout=0.0, dtype=opts.dtype)
        except gguf_import.GGUFError as e:
            raise ConfigError(str(e)) from None
        except ValueError as e:
            if isinstance(e, (ConfigError, records_lib.DataError)):
                raise
            raise ConfigError(f"--model {opts.model}: {e}") from None
        if opts.max_len > trunk.n_positions:
            raise ConfigError(f"--max_len {opts.max_len} exceeds the model's n_positions={trunk.n_positions}")
    records_lib.check_reserved(train_records + eval_records, getattr(tok, "reserved", ()), opts.data)
    if not saved:
        tok.save(tok_dir)
    return tok, trunk


def train_configs(opts: TrainOptions, trunk, n_eval: int, end_a_id: int | None = None) -> tuple[TrainConfig, TrainConfig]:
    """Loop configs of the BC run and of the ILQL run that starts from it (`recipe.BCThenILQL`; per-utterance
    ILQL with `opts.per_utterance`, which needs the tokenizer's `</a>` id `end_a_id`)."""
    rates = learning_rates(opts)  # the options', or the model's defaults (pretrained: small, with warm-up)
    model = ModelConfig(trunk=trunk, frozen_policy=opts.freeze_policy, num_layers_unfrozen=opts.num_layers_unfrozen,
                        lora_rank=opts.lora_rank, lora_alpha=opts.lora_alpha)
    runs = recipe.BCThenILQL(
        model, LossConfig(gamma=opts.gamma, tau=opts.tau, alpha_cql=opts.alpha_cql),
        bc_steps=opts.bc_steps, ilql_steps=opts.ilql_steps,
        bc_optim=OptimConfig(learning_rate=rates["bc"][0], warmup_steps=rates["bc"][1]),
        ilql_optim=OptimConfig(learning_rate=rates["ilql"][0], warmup_steps=rates["ilql"][1]),
        polyak_alpha=opts.polyak_alpha, mode="ilql_utt" if opts.per_utterance else "ilql",
        end_a_id=end_a_id if opts.per_utterance else None, init="scratch" if opts.model == "scratch" else opts.model,
        cadence=lambda steps: dict(log_every=min(opts.log_every, steps), eval_every=max(1, steps // 4)),
        loop=dict(batch_size=opts.batch_size, max_len=opts.max_len, eval_batches=max(1, min(8, n_eval // opts.batch_size)),
                  seed=opts.seed, progress=opts.progress, mesh=opts.mesh,
                  checkpoint=CheckpointConfig(every_steps=opts.checkpoint_every)))
    return runs.bc(), runs.ilql(os.path.abspath(os.path.join(opts.workdir, "bc")))


def _advantage_report(opts: TrainOptions, rl_cfg: TrainConfig, state, arrays: dict) -> dict:
    """The advantage's scale at the agent positions of up to `_ADVANTAGE_ROWS` episodes, and the β range it
    suggests (`diagnostics.suggest_betas`), as written to advantage.json."""
    from ilql_jax import diagnostics

    n = min(len(arrays["tokens"]), _ADVANTAGE_ROWS)
    rows = opts.batch_size
    ks, sigmas = [], []
    for start in range(0, n, rows):  # batches of one shape (the last one padded, its padding not read): one compile
        take = np.arange(start, start + rows) % n
        positions = arrays["action_mask"][take] > 0
        positions[np.arange(start, start + rows) >= n] = False
        scale = diagnostics.advantage_scale(rl_cfg.step.model, state.params, state.target_params,
                                            arrays["tokens"][take], arrays["attention_mask"][take], positions)
        ks.append(scale.k)
        sigmas.append(scale.sigma)
    scale = diagnostics.AdvantageScale(np.concatenate(ks), np.concatenate(sigmas))
    hint = diagnostics.suggest_betas(scale)
    finite = lambda x: x if np.isfinite(x) else None  # noqa: E731 - JSON has no inf
    return {"step": int(state.step), "episodes": n, "positions": len(scale.k), "k": hint.k, "sigma": hint.sigma,
            "sigma_quantile": diagnostics.SIGMA_QUANTILE, "beta_values": finite(hint.beta_values),
            "beta_sharpen": finite(hint.beta_sharpen), "suggested_betas": list(hint.grid)}


def _advantage_lines(report: dict) -> list[str]:
    grid = ",".join(f"{b:g}" for b in report["suggested_betas"])
    lines = [f"advantage scale (step {report['step']}, {report['positions']} agent positions of {report['episodes']} "
             f"episodes): A ≈ k·log π_β + the values' own preferences, k = {report['k']:.3g}; those preferences "
             f"spread σ = {report['sigma']:.3g} where π_β hesitates ({report['sigma_quantile']}th percentile)"]
    if report["beta_values"] is None:
        lines.append("suggested β: none (the values prefer no token over another: train longer, or check the rewards)")
        return lines
    lines.append(f"suggested β: around 1/σ ≈ {report['beta_values']:.3g}, where the values start to reorder π_β's "
                 f"likely tokens; sweep {grid}")
    if report["beta_sharpen"] is not None:
        lines.append(f"  from β ≈ 1/k ≈ {report['beta_sharpen']:.3g} on, decoding also halves π_β's temperature "
                     "(less diverse replies whatever the reward): watch distinct-2")
    return lines


def train(opts: TrainOptions):
    """Runs `ilql-jax train`; returns the final ILQL state."""
    _check_hub(opts.model)
    records = records_lib.load_records(opts.data)  # every line checked before anything else happens
    with open(opts.data, "rb") as f:
        data_sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    with workdir_lib.claim(opts.workdir):
        return _train(opts, records, data_sha256)


def _train(opts: TrainOptions, records: list, data_sha256: str):
    stages, new_stage = check_workdir(opts, data_sha256)
    train_records, eval_records = _split(records, opts.eval_fraction, opts.seed)
    if eval_records and len(eval_records) < opts.batch_size:
        raise ConfigError(f"--eval_fraction {opts.eval_fraction} holds out {len(eval_records)} of {len(records)} "
                          f"records, fewer than --batch_size {opts.batch_size} (evaluation uses full batches); "
                          "raise it, or pass --eval_fraction 0")
    stage_info = {"stages": stages} if stages else {}
    files.atomic_write_text(os.path.join(opts.workdir, OPTIONS_FILE),
                            json.dumps({**config_to_dict(opts), "data_sha256": data_sha256, **stage_info},
                                       indent=2) + "\n")

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
    if new_stage:
        changed = ", ".join(f"--{n} {_show(old)} → {_show(new)}" for n, (old, new) in stages[-1]["changed"].items())
        print(f"new stage (--force_new_stage): {changed}, from BC step {stages[-1]['bc_step']} and ILQL step "
              f"{stages[-1]['ilql_step']} on (recorded in {OPTIONS_FILE})")

    from ilql_jax.data.rewards import fit_reward_norm
    from ilql_jax.loop import train_and_evaluate

    try:
        norm = fit_reward_norm([r.episode for r in train_records], opts.reward_norm)
    except ValueError as e:  # e.g. constant rewards have no scale
        raise records_lib.DataError(opts.data, f"--reward_norm {opts.reward_norm}: {e}") from e
    if opts.reward_norm != "none":
        print(f"rewards: r ↦ (r − {norm.shift:.4g}) / {norm.scale:.4g} ({opts.reward_norm}, fitted on the train records)")
    options = {**config_to_dict(opts), "data_sha256": data_sha256, "reward_norm_fitted": dataclasses.asdict(norm),
               **stage_info}
    files.atomic_write_text(os.path.join(opts.workdir, OPTIONS_FILE), json.dumps(options, indent=2) + "\n")
    arrays = episodes_to_arrays(norm.apply(r.episode for r in train_records), tok, opts.max_len)
    eval_arrays = (episodes_to_arrays(norm.apply(r.episode for r in eval_records), tok, opts.max_len)
                   if eval_records else None)
    bc_cfg, rl_cfg = train_configs(opts, trunk, len(eval_records), tok.end_a_id)
    print("1/2: behaviour cloning of π_β")
    train_and_evaluate(bc_cfg, os.path.join(opts.workdir, "bc"), arrays, eval_arrays)
    print("2/2: ILQL, starting from π_β")
    state = train_and_evaluate(rl_cfg, os.path.join(opts.workdir, "ilql"), arrays, eval_arrays)

    path = os.path.join(opts.workdir, ADVANTAGE_FILE)
    report = None
    if os.path.isfile(path):  # a rerun of a finished run: the same state, the same report
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    if report is None or report.get("step") != int(state.step):
        report = _advantage_report(opts, rl_cfg, state, eval_arrays if eval_arrays is not None else arrays)
        files.atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    for line in _advantage_lines(report):
        print(line)
    grid = ",".join(f"{b:g}" for b in report["suggested_betas"]) if len(report["suggested_betas"]) > 1 else "0,4,16,64"
    print(f"done: {opts.workdir}. Next: ilql-jax sweep --workdir {opts.workdir} --prompts FILE --beta {grid} "
          f"--reward MODULE:FUNCTION (docs/cli.md, \"Choosing β\"); ilql-jax export --workdir {opts.workdir} --out DIR")
    return state
