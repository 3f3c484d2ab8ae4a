"""Your own data as episodes: JSONL records, checked whole before anything trains.

One JSON object per line (blank lines are skipped), either form:

* single-turn: ``{"prompt": str, "response": str, "reward": number}``, optionally
  ``"terminal": bool`` (default true). It becomes ``<s>prompt</s>response</a></eod>``.
* multi-turn: ``{"turns": [{"role": "env" | "agent", "text": str, "reward": number}, ...],
  "terminal": bool}``: every agent turn carries a reward, env turns none
  (absent or null); at least one agent turn; ``terminal`` defaults to true
  (false: the interaction went on past the log, and its last state bootstraps).

Other keys are ignored (e.g. an ``"id"``). Rewards are finite numbers (not booleans).

Markup rule: ILQL lays episodes out with the reserved strings ``<s> </s> <a>
</a> </eod>`` and the pad string ``<pad>`` (docs/algorithm.md §1), which every
tokenizer here encodes as single ids. A text that contains one of them would
shift the layout, so such a record is **refused**: the error names the file,
line, field and string. Rewrite it in your data (e.g. ``<s>`` as ``&lt;s>``). With a pretrained chat
model the same holds for its template's special tokens (e.g. ``<|im_end|>``),
checked by `check_reserved` once the tokenizer is known.

Every problem raises `DataError`, a ValueError whose message is one line of
the form ``FILE: line N: FIELD: what was expected, got what`` (``FILE: ...``
for the whole file). `load_records` reads and checks the whole file before
returning, so a run fails on its first bad line before it trains anything;
`check_lengths` then checks token lengths once the tokenizer exists.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ilql_jax.data.episodes import Episode, Segment, agent, env, episode_tokens
from ilql_jax.tokenizers import MARKUP, PAD

__all__ = [
    "RESERVED",
    "DataError",
    "Record",
    "check_lengths",
    "check_reserved",
    "check_text",
    "load_records",
    "prompt_histories",
    "read_jsonl",
]

# What every tokenizer here encodes as one id: a user text must not contain these.
RESERVED = MARKUP + (PAD,)
ROLES = ("env", "agent")


class DataError(ValueError):
    """Bad input data: one line naming the file, the line and the field, and what was expected."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None, field: str | None = None):
        where = f"{os.fspath(path)}: line {line}" if line is not None else os.fspath(path)
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        self.path, self.line, self.field = os.fspath(path), line, field


class Record(NamedTuple):
    """One record of a data file: where it is, the episode it describes, and the field each segment's text came
    from ("prompt", "response", "turns[i].text")."""

    line: int
    episode: Episode
    fields: tuple[str, ...] = ()


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_text(text: Any, path, line: int, field: str) -> str:
    """`text` if it is a string free of markup, else a DataError (the markup rule of the module docstring)."""
    if not isinstance(text, str):
        raise DataError(path, f"expected a string, got {_short(text)}", line, field)
    for token in RESERVED:
        if token in text:
            raise DataError(path, f"contains the reserved markup string {token!r} (ILQL's episode layout uses it); "
                            f"rewrite it in the data, e.g. as {'&lt;' + token[1:]!r}", line, field)
    return text


def _reward(value: Any, path, line: int, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(path, f"expected a number, got {_short(value)}", line, field)
    if not math.isfinite(float(value)):
        raise DataError(path, f"expected a finite number, got {value!r}", line, field)
    return float(value)


def _terminal(obj: Mapping, path, line: int) -> bool:
    value = obj.get("terminal", True)
    if not isinstance(value, bool):
        raise DataError(path, f"expected true or false, got {_short(value)}", line, "terminal")
    return value


def _single_turn(obj: Mapping, path, line: int) -> Episode:
    for field in ("prompt", "response", "reward"):
        if field not in obj:
            raise DataError(path, "missing; a single-turn record needs \"prompt\", \"response\" and \"reward\" "
                            "(or use \"turns\")", line, field)
    prompt = check_text(obj["prompt"], path, line, "prompt")
    response = check_text(obj["response"], path, line, "response")
    reward = _reward(obj["reward"], path, line, "reward")
    return Episode((env(prompt), agent(response, reward)), terminal=_terminal(obj, path, line))


def _turn(turn: Any, path, line: int, field: str) -> Segment:
    if not isinstance(turn, Mapping):
        raise DataError(path, f"expected an object {{\"role\", \"text\", \"reward\"?}}, got {_short(turn)}", line, field)
    if "role" not in turn:
        raise DataError(path, "missing; expected \"env\" or \"agent\"", line, f"{field}.role")
    if turn["role"] not in ROLES:
        raise DataError(path, f"expected \"env\" or \"agent\", got {_short(turn['role'])}", line, f"{field}.role")
    if "text" not in turn:
        raise DataError(path, "missing; expected a string", line, f"{field}.text")
    text = check_text(turn["text"], path, line, f"{field}.text")
    if turn["role"] == "env":
        if turn.get("reward") is not None:
            raise DataError(path, "env turns carry no reward (only agent turns do)", line, f"{field}.reward")
        return env(text)
    if "reward" not in turn:
        raise DataError(path, "missing; every agent turn needs a number", line, f"{field}.reward")
    return agent(text, _reward(turn["reward"], path, line, f"{field}.reward"))


def _multi_turn(obj: Mapping, path, line: int) -> Episode:
    turns = obj["turns"]
    if not isinstance(turns, list) or not turns:
        raise DataError(path, f"expected a non-empty list of turns, got {_short(turns)}", line, "turns")
    segments = tuple(_turn(t, path, line, f"turns[{i}]") for i, t in enumerate(turns))
    if not any(s.is_agent for s in segments):
        raise DataError(path, "no agent turn: an episode needs at least one (role \"agent\", with a reward)",
                        line, "turns")
    return Episode(segments, terminal=_terminal(obj, path, line))


def _read_file(path: str | os.PathLike) -> bytes:
    """The bytes of a data file; DataError for a directory or a missing file."""
    if os.path.isdir(path):
        raise DataError(path, "is a directory, not a file; name the JSONL file inside it")
    if not os.path.isfile(path):
        raise DataError(path, "no such file")
    with open(path, "rb") as f:
        return f.read()


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """`(line number, JSON value)` of every non-blank line; DataError for a missing or empty file, a line
    that is not UTF-8 or not JSON. Lines are split at "\\n" only (U+2028 may stand raw inside JSON strings)."""
    raw = _read_file(path)
    values = []
    for line_no, data in enumerate(raw.split(b"\n"), start=1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)", line_no) from None
        if not text.strip():
            continue
        try:
            values.append((line_no, json.loads(text)))
        except json.JSONDecodeError as e:
            raise DataError(path, f"not JSON ({e.msg} at column {e.colno})", line_no) from None
    if not values:
        raise DataError(path, "empty file (no records)")
    return values


def load_records(path: str | os.PathLike) -> list[Record]:
    """Every record of a JSONL file (see the module docstring) as an episode with its line number.

    Raises:
      DataError: at the first bad line, naming the file, line and field.
    """
    records = []
    for line, obj in read_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {_short(obj)}", line)
        if "turns" in obj:
            if any(k in obj for k in ("prompt", "response", "reward")):
                raise DataError(path, "a record has either \"turns\" or \"prompt\"/\"response\"/\"reward\", "
                                "not both", line, "turns")
            episode = _multi_turn(obj, path, line)
            fields = tuple(f"turns[{i}].text" for i in range(len(episode.segments)))
        else:
            episode = _single_turn(obj, path, line)
            fields = ("prompt", "response")
        records.append(Record(line, episode, fields))
    return records


def check_reserved(records: Sequence[Record], reserved: Sequence[str], path: str | os.PathLike) -> None:
    """DataError naming the file, line and field of the first text that contains one of `reserved`: a chat
    tokenizer's special tokens (`ChatTokenizer.reserved`, e.g. `<|im_end|>`), which would shift the layout as
    markup would (the markup rule of the module docstring, for a model's chat template)."""
    for record in records:
        for i, seg in enumerate(record.episode.segments):
            token = next((t for t in reserved if t in seg.text), None)
            if token is not None:
                field = record.fields[i] if i < len(record.fields) else f"segment {i}"
                raise DataError(path, f"contains {token!r}, a special token of the model's chat template (its layout "
                                "uses it); rewrite it in the data", record.line, field)


def check_lengths(records: Sequence[Record], tokenizer, max_len: int, path: str | os.PathLike,
                  too_long: str = "error") -> tuple[list[Record], int]:
    """The records whose full token layout fits in `max_len`, and how many did not.

    A record cut at `max_len` would lose the reward of every utterance past
    the cut (docs/algorithm.md §1), so it is either refused (`too_long="error"`: a
    DataError naming its line) or skipped and counted (`"skip"`).
    """
    if too_long not in ("error", "skip"):
        raise ValueError(f"too_long must be 'error' or 'skip', got {too_long!r}")
    kept = []
    for record in records:
        n = len(episode_tokens(record.episode, tokenizer))
        if n <= max_len:
            kept.append(record)
        elif too_long == "error":
            raise DataError(path, f"record is {n} tokens with its markup, more than max_len={max_len}; raise "
                            "--max_len, shorten the record, or pass --too_long skip", record.line)
    return kept, len(records) - len(kept)


def prompt_histories(path: str | os.PathLike) -> list[tuple[int, tuple[Segment, ...]]]:
    """Prompts for generation from a file, with their line numbers.

    A `.jsonl` file holds records with "prompt" (a single-turn prompt; other
    fields are ignored) or "turns" (the history so far: the agent replies
    next); any other file holds one plain-text prompt per non-blank line.
    Markup in a prompt is refused as in training data.
    """
    path = os.fspath(path)
    if not path.endswith(".jsonl"):
        raw = _read_file(path)
        out = []
        for line_no, data in enumerate(raw.split(b"\n"), start=1):
            try:
                text = data.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)",
                                line_no) from None
            if text.strip():
                out.append((line_no, (env(check_text(text, path, line_no, "prompt")),)))
        if not out:
            raise DataError(path, "empty file (no prompts)")
        return out
    out = []
    for line, obj in read_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {_short(obj)}", line)
        if "turns" in obj:
            turns = obj["turns"]
            if not isinstance(turns, list):
                raise DataError(path, f"expected a list of turns, got {_short(turns)}", line, "turns")
            out.append((line, tuple(_turn(t, path, line, f"turns[{i}]") for i, t in enumerate(turns))))
        elif "prompt" in obj:
            out.append((line, (env(check_text(obj["prompt"], path, line, "prompt")),)))
        else:
            raise DataError(path, "missing; a prompt record needs \"prompt\" or \"turns\"", line, "prompt")
    return out
