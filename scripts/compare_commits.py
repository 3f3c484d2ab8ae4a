"""Runs two commits side by side on this machine and compares what they write, bit for bit.

    python scripts/compare_commits.py BASE HEAD [--jobs reddit,graph_walks,wordle,dialogue,cli] [--keep DIR]

Each commit is checked out with `git worktree add --detach` into a temporary directory, and every job runs
there with PYTHONPATH set to that checkout (so the installed `ilql_jax` is not the one imported):

    reddit       python -m experiments.reddit_toxicity --preset smoke
    graph_walks  python -m experiments.graph_walks --preset smoke
    wordle       python -m experiments.wordle --preset smoke
    dialogue     python -m experiments.dialogue --preset smoke
    cli          ilql-jax train on a small JSONL this script writes, then ilql-jax generate --out

Then every file the two runs wrote is compared, one line each: `identical`, or what differs and by how much.
JSON and JSONL files (results.json, metrics.jsonl, generations, config.json ...) are compared value by
value: numbers exactly (as written), with the count of differing values and the largest |Δ| and its key;
metrics.jsonl per step. Other text files are compared byte for byte (the count of differing lines).
Throughput and timing values (`--ignore`, e.g. train/tokens_per_sec; in text files, lines such as results.md's
"0.5 min in all"), TensorBoard events and checkpoints (they hold wall-clock times) are left out. Both commits
run in the same directory (moved aside after each), so files that record an absolute path match. Exit status 0
when every file is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

JOBS = ("reddit", "graph_walks", "wordle", "dialogue", "cli")
DRIVERS = {"reddit": "experiments.reddit_toxicity", "graph_walks": "experiments.graph_walks",
           "wordle": "experiments.wordle", "dialogue": "experiments.dialogue"}
# What is never compared: wall-clock values and the directories that hold them.
IGNORE_KEYS = r"tokens_per_sec|seconds|elapsed|wall|_time$|^time"
IGNORE_LINES = r"\bmin in all\b"  # the drivers' results.md: "2 seeds; 0.5 min in all."
SKIP_PARTS = {"tb", "checkpoints", ".lock"}
CLI_TRAIN = ["--bc_steps", "3", "--ilql_steps", "3", "--batch_size", "8", "--n_layer", "1", "--n_embd", "32",
             "--n_head", "2", "--max_len", "40", "--bpe_vocab_size", "300", "--progress", "false", "--log_every", "1"]


def cli_records() -> list[dict]:
    """40 single-turn support tickets, half answered well (reward 1) and half not (-1): fixed, no randomness."""
    return [{"prompt": f"ticket {i % 5}: my order is late",
             "response": "sorry, it ships today" if i % 2 == 0 else "not my problem",
             "reward": 1.0 if i % 2 == 0 else -1.0} for i in range(40)]


def run_jobs(src: Path, out: Path, jobs: list[str], log) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}

    def run(name, args):
        # From `out`, with relative paths: files that record a path (options.json, config.json) then match.
        log(f"  {src.name}: {name}: {' '.join(args)}")
        with open(out / f"{name}.log", "w") as f:
            proc = subprocess.run([sys.executable, *args], cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise SystemExit(f"{src.name}: {name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")

    where = subprocess.check_output([sys.executable, "-c", "import ilql_jax, experiments; print(ilql_jax.__file__); "
                                     "print(experiments.__file__)"], cwd=out, env=env, text=True).split()
    if not all(Path(p).resolve().is_relative_to(src.resolve()) for p in where):
        raise SystemExit(f"{src.name}: PYTHONPATH={src} does not win: the code imported is {where}")
    for job in jobs:
        if job in DRIVERS:
            run(job, ["-m", DRIVERS[job], "--preset", "smoke", "--workdir", job])
            continue
        (out / "cli_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cli_records()))
        (out / "cli_prompts.txt").write_text("ticket 1: my order is late\nticket 3: my order is late\n")
        run("cli_train", ["-m", "ilql_jax", "train", "--data", "cli_records.jsonl", "--workdir", "cli", *CLI_TRAIN])
        run("cli_generate", ["-m", "ilql_jax", "generate", "--workdir", "cli", "--prompts", "cli_prompts.txt",
                             "--beta", "0,4", "--num", "2", "--max_new_tokens", "8", "--out", "cli/generations.jsonl"])


def _leaves(value, path=""):
    """(path, leaf) of a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def _json_lines(path: Path) -> dict[str, object]:
    """A JSON file as {path: leaf}; JSONL line by line, keyed by its "step" where it has one (metrics)."""
    text = path.read_text()
    if path.suffix != ".jsonl":
        return dict(_leaves(json.loads(text)))
    out = {}
    for i, line in enumerate(text.splitlines()):
        record = json.loads(line)
        key = f"step {record['step']}" if isinstance(record, dict) and "step" in record else f"line {i + 1}"
        key = key if key not in out else f"{key} (line {i + 1})"
        out.update(_leaves(record, key))
    return out


def compare_file(a: Path, b: Path, ignore: re.Pattern, ignore_lines: re.Pattern = re.compile(IGNORE_LINES)) -> str:
    """'identical', or what differs and by how much."""
    if a.suffix in (".json", ".jsonl"):
        try:
            la, lb = _json_lines(a), _json_lines(b)
        except ValueError:
            pass
        else:
            keep = lambda k: not ignore.search(k.rsplit(".", 1)[-1])
            keys_a, keys_b = {k for k in la if keep(k)}, {k for k in lb if keep(k)}
            extra = [f"{k} only in the {'first' if k in keys_a else 'second'}" for k in sorted(keys_a ^ keys_b)]
            common = keys_a & keys_b
            diff, worst, worst_key, other, names = 0, 0.0, None, 0, set()
            for k in sorted(common):
                x, y = la[k], lb[k]
                if type(x) is type(y) and x == y or (isinstance(x, float) and isinstance(y, float)
                                                     and math.isnan(x) and math.isnan(y)):
                    continue
                diff += 1
                names.add(re.sub(r"\[\d+\]", "[]", k.split(".", 1)[-1]))
                if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
                    d = abs(float(x) - float(y))
                    if not d <= worst:
                        worst, worst_key = d, k
                else:
                    other += 1
            if not diff and not extra:
                return "identical"
            text = f"DIFFERS: {diff} of {len(common)} values" + (f" (of {', '.join(sorted(names)[:6])})" if diff else "")
            if worst_key is not None:
                text += f", max |Δ| = {worst:.3g} at {worst_key} ({la[worst_key]!r} vs {lb[worst_key]!r})"
            text += f", {other} non-numeric" if other else ""
            return text + (f"; {len(extra)} keys in one only: {', '.join(extra[:3])}" if extra else "")
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        return "identical"
    try:
        xa, xb = da.decode().splitlines(), db.decode().splitlines()
    except UnicodeDecodeError:
        return f"DIFFERS (binary, {len(da)} vs {len(db)} bytes)"
    n = sum(x != y and not (ignore_lines.search(x) and ignore_lines.search(y)) for x, y in zip(xa, xb))
    n += abs(len(xa) - len(xb))
    return f"DIFFERS: {n} of {max(len(xa), len(xb))} lines" if n else "identical (but for timing lines)"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not SKIP_PARTS & set(p.relative_to(root).parts) and not p.name.endswith(".log")}


def compare_trees(a: Path, b: Path, ignore: re.Pattern) -> list[tuple[str, str]]:
    fa, fb = _files(a), _files(b)
    rows = [(name, "only in the first" if name in fa else "only in the second") for name in sorted(fa ^ fb)]
    rows += [(name, compare_file(a / name, b / name, ignore)) for name in sorted(fa & fb)]
    return sorted(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {','.join(JOBS)}")
    parser.add_argument("--keep", help="put the checkouts and outputs here and keep them (default: a temporary "
                                       "directory, removed at the end)")
    parser.add_argument("--ignore", default=IGNORE_KEYS, help="regex of value names never compared (timings)")
    args = parser.parse_args(argv)
    jobs = args.jobs.split(",")
    if unknown := set(jobs) - set(JOBS):
        parser.error(f"unknown job(s) {sorted(unknown)}; choose from {JOBS}")
    repo = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    commits = [subprocess.check_output(["git", "-C", str(repo), "rev-parse", "--verify", f"{c}^{{commit}}"],
                                       text=True).strip() for c in (args.base, args.head)]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="compare_commits_"))
    root.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    outs, trees = [], []
    try:
        for label, commit in zip(("base", "head"), commits):
            # Both commits run in the same directory, moved aside after: a file that records an absolute path
            # (ilql-jax train's "init": "bc:/.../bc") then reads the same.
            src, run_dir, out = root / f"{label}-{commit[:9]}", root / "run", root / f"{label}-out"
            if not src.exists():
                subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(src), commit], check=True,
                               stdout=subprocess.DEVNULL)
            trees.append(src)
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            run_dir.mkdir()
            log(f"{label} {commit[:9]}:")
            run_jobs(src, run_dir, jobs, log)
            run_dir.rename(out)
            outs.append(out)
        ignore = re.compile(args.ignore)
        print(f"{commits[0][:9]} (base) vs {commits[1][:9]} (head); values named /{args.ignore}/ not compared")
        same = True
        for job in jobs:
            name = "cli" if job == "cli" else job
            for path, verdict in compare_trees(outs[0] / name, outs[1] / name, ignore):
                print(f"{name}/{path}: {verdict}")
                same &= verdict.startswith("identical")
        print("ALL IDENTICAL" if same else "SOME FILES DIFFER")
        return 0 if same else 1
    finally:
        if not args.keep:
            for src in trees:
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(src)], check=False)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
