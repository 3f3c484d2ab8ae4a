"""Data of the Reddit task: loaders, seeded splits, and episodes (docs/algorithm.md §7).

Every loader returns a list of records, plain dicts::

    {"parent": str, "comment": str, "score": int (optional), "toxicity": int | float (optional)}

(``score`` = upvotes, for the ``upvotes`` reward; ``toxicity`` = the data's
own label, for the ``label`` reward: an int is a level 0/1/2, a float a
[0, 1] score, see ``rewards.py``). Bad input raises ``ValueError`` naming the
file, the row or line, and the field: an empty file, a missing column or
field, a line that is not UTF-8. Rows too long for ``max_len`` are skipped
and counted (``fit_to_length``); the job reports how many.

Sources (``load_records``):

* ``"default"``: the generated, synthetic corpus of ``corpus.py``, or with
  ``corpus="chatterbot"`` the real English conversations of ``chatterbot.py``;
* a directory: the paper's CSV layout, ``comments_positive.csv`` and
  ``comments_negative.csv``, each with one header row (skipped, as the
  authors' code does) and then one comment per row. Columns are 0-based
  indices into each row: 4 = comment, 5 = score (an integer), 10 = parent;
  other columns are ignored. Blank rows are skipped;
* a ``.jsonl`` file: one JSON object per line with ``parent``, ``comment``
  and optionally ``score``, ``toxicity`` (other fields are kept as they are);
* ``"tfds:civil_comments"`` (any TFDS name after ``tfds:``): TFDS
  ``civil_comments`` read as an array_record data source, without
  TensorFlow (``tfds.data_source``; prepare it with
  ``tfds build civil_comments --file_format=array_record`` where it is not
  already). Needs the optional extra: ``pip install -e ".[tfds]"``. Records
  get ``comment`` = ``text``, ``toxicity`` = its [0, 1] score (fraction of
  annotators), ``parent`` = ``parent_text`` ("" where the comment has no
  parent in the data set), and no ``score``.

``split_records`` shuffles by seed into train/eval/test (90/5/5 by default);
``make_splits`` also saves them as ``<workdir>/data/{train,eval,test}.jsonl``.
``to_episodes`` turns records and rewards into one-step terminal episodes
``<s>parent</s>comment</a></eod>``.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from ilql_jax import files
from ilql_jax.data.episodes import Episode, agent, env, episode_tokens
from ilql_jax.data.records import DataError, check_text

from .corpus import DEFAULT_PAIRS, generate_corpus

__all__ = [
    "CORPORA",
    "CSV_COLUMNS",
    "CSV_FILES",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "check_data_spec",
    "fit_to_length",
    "fits_in_length",
    "load_civil_comments",
    "load_jsonl",
    "load_paper_csv",
    "load_records",
    "locate",
    "make_splits",
    "read_split",
    "split_path",
    "split_records",
    "to_episodes",
    "write_jsonl",
]

CSV_FILES = ("comments_positive.csv", "comments_negative.csv")
CSV_COLUMNS = {"comment": 4, "score": 5, "parent": 10}  # 0-based indices into each row
SPLITS = ("train", "eval", "test")
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def _parse_int(text: str) -> int:
    """An integer from text such as "12", "-3" or "4.0"; ValueError otherwise."""
    try:
        return int(text)
    except ValueError:
        value = float(text)  # raises on non-numbers
        if not value.is_integer():
            raise ValueError(f"{text!r} is not an integer") from None
        return int(value)


def _read_utf8(path: str | os.PathLike) -> str:
    """The text of ``path`` (local or ``gs://``); a ValueError naming the file and line if it is not
    UTF-8 or is empty."""
    raw = epath.Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = raw.count(b"\n", 0, e.start) + 1
        raise DataError(path, f"line {line_no}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataError(path, "empty file (no records)")
    return text


def load_paper_csv(directory: str | os.PathLike) -> list[dict]:
    """Records from the paper's ``comments_positive.csv`` + ``comments_negative.csv``."""
    need = max(CSV_COLUMNS.values()) + 1
    records = []
    for name in CSV_FILES:
        path = epath.Path(directory) / name
        if not path.is_file():
            raise DataError(path, f"missing; the paper's layout needs both {' and '.join(CSV_FILES)}")
        with io.StringIO(_read_utf8(path), newline="") as f:
            reader = csv.reader(f)
            for row_no, row in enumerate(reader, start=1):
                if row_no == 1 or not row:
                    continue  # the header row, or a blank line
                where = f"{path}: row {row_no} (line {reader.line_num})"
                if len(row) < need:
                    raise DataError(
                        where, f"has {len(row)} columns, needs at least {need} "
                        f"(0-based: comment={CSV_COLUMNS['comment']}, "
                        f"score={CSV_COLUMNS['score']}, parent={CSV_COLUMNS['parent']})"
                    )
                try:
                    score = _parse_int(row[CSV_COLUMNS["score"]])
                except ValueError:
                    raise DataError(
                        where, f"field 'score' (column {CSV_COLUMNS['score']}) must be an "
                        f"integer, got {row[CSV_COLUMNS['score']]!r}"
                    ) from None
                records.append({
                    "parent": check_text(row[CSV_COLUMNS["parent"]], where, None, "parent"),
                    "comment": check_text(row[CSV_COLUMNS["comment"]], where, None, "comment"),
                    "score": score,
                })
    if not records:
        raise DataError(directory, f"{' and '.join(CSV_FILES)} hold no rows after their headers")
    return records


def _check_record(obj, where: str) -> dict:
    """A JSONL object as a record, or a ValueError naming ``where`` and the field."""
    if not isinstance(obj, dict):
        raise DataError(where, f"expected a JSON object, got {type(obj).__name__}")
    for field in ("parent", "comment"):
        if field not in obj:
            raise DataError(where, f"missing field {field!r}")
        if not isinstance(obj[field], str):
            raise DataError(where, f"field {field!r} must be a string, got {obj[field]!r}")
        check_text(obj[field], where, None, field)  # markup inside text is refused here, not mid-run
    for field in ("score", "toxicity"):
        value = obj.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise DataError(where, f"field {field!r} must be a number, got {value!r}")
    return dict(obj)


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records from a JSONL file; blank lines are skipped."""
    if not epath.Path(path).is_file():
        raise DataError(path, "no such file")
    records = []
    # split("\n"), not splitlines(): U+2028 and the like may stand unescaped in JSON strings.
    for line_no, line in enumerate(_read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(where, f"invalid JSON ({e.msg})") from None
        records.append(_check_record(obj, where))
    return records


def _as_str(value) -> str:
    """TFDS text features decode to bytes (or numpy strings) without TensorFlow."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def load_civil_comments(
    split: str = "train",
    data_dir: str | None = None,
    name: str = "civil_comments",
    max_examples: int | None = None,
) -> list[dict]:
    """Records from TFDS ``civil_comments`` (see the module docstring)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            f"loading TFDS {name!r} needs tensorflow-datasets; install the optional extra: "
            'pip install -e ".[tfds]"'
        ) from e
    if name.split("/")[0] == "civil_comments":
        # Without TensorFlow, tfds cannot import its dataset modules by name on
        # demand; importing the builder's module registers it.
        import tensorflow_datasets.text.civil_comments  # noqa: F401
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    records = []
    for i in range(n):
        example = source[i]
        for field in ("text", "toxicity"):
            if field not in example:
                raise DataError(f"TFDS {name}[{split}] example {i}", f"missing field {field!r}")
        where = f"TFDS {name}[{split}] example {i}"
        records.append({
            "parent": check_text(_as_str(example.get("parent_text", b"")), where, None, "parent_text"),
            "comment": check_text(_as_str(example["text"]), where, None, "text"),
            "toxicity": float(example["toxicity"]),
        })
    return records


CORPORA = ("synthetic", "chatterbot")


def load_records(
    data: str,
    *,
    seed: int = 0,
    n_pairs: int = DEFAULT_PAIRS,
    corpus: str = "synthetic",
    split: str = "train",
    data_dir: str | None = None,
    max_examples: int | None = None,
) -> list[dict]:
    """Records from ``data``: "default" (the ``corpus`` named), "tfds:<name>", a CSV directory or a .jsonl file.

    ``corpus`` is "synthetic" (``corpus.py``; ``seed`` and ``n_pairs`` apply) or "chatterbot" (real English
    conversations, ``chatterbot.py``); ``split``, ``data_dir`` and ``max_examples`` apply to TFDS.
    """
    check_data_spec(data)
    if data == "default":
        if corpus == "chatterbot":
            from .chatterbot import load_chatterbot
            return load_chatterbot()
        return generate_corpus(n_pairs=n_pairs, seed=seed)
    if data.startswith("tfds:"):
        return load_civil_comments(
            split=split, data_dir=data_dir, name=data[len("tfds:"):], max_examples=max_examples
        )
    if epath.Path(data).is_dir():
        return load_paper_csv(data)
    return load_jsonl(data)


def check_data_spec(data: str) -> None:
    """A ValueError unless ``data`` names a source ``load_records`` knows (files are read later)."""
    if data == "default" or (data.startswith("tfds:") and len(data) > 5) or data.endswith(".jsonl") \
            or epath.Path(data).is_dir():
        return
    raise ValueError(
        f"unknown data {data!r}: use 'default', 'tfds:civil_comments', a directory with "
        f"{' and '.join(CSV_FILES)}, or a .jsonl file"
    )


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


def split_records(
    records: Sequence[Mapping], seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS
) -> dict[str, list[dict]]:
    """Shuffle by ``seed`` and cut into train/eval/test by ``fractions``.

    Eval and test get at least one record each (when their fraction is > 0),
    train gets the rest; an empty train split is an error.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(records)
    sizes = [max(1, round(f * n)) if f > 0 else 0 for f in fractions[1:]]
    n_train = n - sum(sizes)
    if n_train < 1:
        raise ValueError(f"{n} records are too few to split by {tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([n_train, *sizes])
    parts = np.split(order, bounds[:-1])
    return {name: [dict(records[i]) for i in part] for name, part in zip(SPLITS, parts)}


def split_path(workdir: str | os.PathLike, name: str) -> epath.Path:
    """Where split ``name`` is saved: ``<workdir>/data/<name>.jsonl``."""
    return epath.Path(workdir) / "data" / f"{name}.jsonl"


def write_jsonl(records: Sequence[Mapping], path: str | os.PathLike) -> None:
    """One JSON object per line, written whole (``files.write_text``); a shared file: process 0 writes it."""
    files.write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def make_splits(
    records: Sequence[Mapping],
    workdir: str | os.PathLike,
    seed: int = 0,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
) -> dict[str, list[dict]]:
    """``split_records``, saved to ``split_path(workdir, name)`` for each split."""
    splits = split_records(records, seed=seed, fractions=fractions)
    for name, part in splits.items():
        write_jsonl(part, split_path(workdir, name))
    return splits


def read_split(workdir: str | os.PathLike, name: str) -> list[dict]:
    """A split saved by ``make_splits``."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
    return load_jsonl(split_path(workdir, name))


# ---------------------------------------------------------------------------
# Episodes
# ---------------------------------------------------------------------------


def fit_to_length(
    episodes: Sequence[Episode], tokenizer, max_len: int
) -> tuple[list[Episode], int]:
    """The episodes whose tokens fit in ``max_len``, and how many were skipped.

    A one-step episode cut at ``max_len`` would lose its ``</a>`` and with it
    the comment's reward (docs/algorithm.md §1: a cut utterance gets none), so a row
    that does not fit is skipped and counted rather than cut.
    """
    kept = [e for e in episodes if len(episode_tokens(e, tokenizer)) <= max_len]
    return kept, len(episodes) - len(kept)


def fits_in_length(records: Sequence[Mapping], tokenizer, max_len: int) -> list[bool]:
    """Whether each record's episode fits in ``max_len`` tokens (no reward needed: the layout is the same)."""
    return [len(episode_tokens(e, tokenizer)) <= max_len for e in to_episodes(records, [0.0] * len(records))]


def locate(data: str, record: Mapping) -> str:
    """Where ``record`` came from: ``FILE: line N`` of a .jsonl source, ``FILE: row N`` of the paper's CSVs,
    else ``data`` itself. Only for error messages: it reads the source again."""
    key = (record.get("parent"), record.get("comment"))
    if data.endswith(".jsonl") and epath.Path(data).is_file():
        for line_no, line in enumerate(_read_utf8(data).split("\n"), start=1):
            try:
                obj = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and (obj.get("parent"), obj.get("comment")) == key:
                return f"{data}: line {line_no}"
    elif epath.Path(data).is_dir():
        for name in CSV_FILES:
            path = epath.Path(data) / name
            with io.StringIO(_read_utf8(path), newline="") as f:
                for row_no, row in enumerate(csv.reader(f), start=1):
                    if row_no > 1 and len(row) > max(CSV_COLUMNS.values()) and \
                            (row[CSV_COLUMNS["parent"]], row[CSV_COLUMNS["comment"]]) == key:
                        return f"{path}: row {row_no}"
    return data


def to_episodes(records: Sequence[Mapping], rewards: Sequence[float]) -> list[Episode]:
    """One terminal episode per record: ``<s>parent</s>comment</a></eod>`` (docs/algorithm.md §7)."""
    if len(records) != len(rewards):
        raise ValueError(f"{len(records)} records but {len(rewards)} rewards")
    return [
        Episode((env(record["parent"]), agent(record["comment"], float(reward))), terminal=True)
        for record, reward in zip(records, rewards)
    ]
