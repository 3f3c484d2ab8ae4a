"""The chat-template layout: episodes of a pretrained chat model laid out through its template, ILQL's actions
being the assistant tokens and the closing `<|im_end|>` (docs/pretrained.md)."""

import numpy as np
import pytest

from ilql_jax import sampler, tokenizers
from ilql_jax.data import episodes, layout, records
from ilql_jax.data.episodes import Episode, agent, env
from tests import gguf_fixtures


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    gguf_fixtures.write_tiny_gguf(path)
    return tokenizers.gguf_tokenizer(str(path))


def messages(segments):
    return [{"role": "assistant" if s.is_agent else "user", "content": s.text} for s in segments]


def render_ids(tok, segments, generation=False):
    return tok.encode(layout.render_chat(tok.chat_template, messages(segments), add_generation_prompt=generation))


def test_pieces_are_found_by_rendering_the_template(tok):
    pieces = layout.chat_text_pieces(tok.chat_template)
    system = "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
    assert pieces == {"env_first": system, "agent_first": system, "env_open": "<|im_start|>user\n",
                      "env_close": "<|im_end|>\n", "agent_open": "<|im_start|>assistant\n",
                      "agent_close": "<|im_end|>\n"}
    lay = tok.layout
    assert (lay.kind, lay.stop_id, lay.agent_after, lay.terminal) == ("chat", 2, tuple(tok.encode("\n")), ())
    assert tok.end_a_id == 2 and tok.pad_id == 0  # the pad token (<|im_end|>) is the stop, so <|endoftext|> pads
    assert tok.vocab_size == len(gguf_fixtures.tiny_vocab()[0])  # nothing added


EPISODES = {
    "single turn": Episode((env("What is the year 1234?"), agent("It was long ago.", 1.0))),
    "multi turn": Episode((env("hi there"), agent("hello", -1.0), env("say the answer"), agent("four", 2.0)),
                          terminal=False),
    "agent first": Episode((agent("welcome", 0.5), env("thanks"), agent("bye", 1.0))),
}


@pytest.mark.parametrize("name", EPISODES)
def test_episode_tokens_are_the_rendered_template(tok, name):
    ep = EPISODES[name]
    assert episodes.episode_tokens(ep, tok) == render_ids(tok, ep.segments)
    history = ep.segments[:-1]
    assert episodes.prompt_tokens(history, tok) == render_ids(tok, history, generation=True)


def test_actions_are_assistant_tokens_and_the_stop_rewards_on_the_stop_transition(tok):
    ep = EPISODES["multi turn"]
    ids = episodes.episode_tokens(ep, tok)
    a = episodes.episode_to_arrays(ep, tok, 256)
    assert len(ids) < 256
    actions = [int(a["tokens"][t + 1]) for t in np.nonzero(a["action_mask"])[0]]
    assert actions == tok.encode("hello") + [2] + tok.encode("four") + [2]
    # The template's "<|im_start|>assistant\n" is the environment's: the state emitting "hello" is its last token.
    first = ids.index(2, len(tok.layout.env_first)) + len(tok.layout.agent_after) + len(tok.layout.agent_open)
    assert a["action_mask"][first] == 1 and a["action_mask"][first - 1] == 0
    stops = [t for t in range(len(ids) - 1) if a["action_mask"][t] and ids[t + 1] == 2]
    assert a["rewards"][stops].tolist() == [-1.0, 2.0] and a["rewards"].sum() == 1.0
    # The first stop skips the environment's reply to the state that emits "four"; the last bootstraps (not terminal).
    four = ids.index(tok.encode("four")[0])
    assert a["next_idx"][stops[0]] == four - 1
    assert a["next_idx"][stops[1]] == len(ids) - 1 and a["dones"].sum() == 0
    terminal = episodes.episode_to_arrays(Episode(ep.segments, terminal=True), tok, 256)
    assert terminal["dones"][len(ids) - 1] == 1  # the terminal piece is empty: the same tokens, done at the end
    assert (terminal["tokens"] == a["tokens"]).all()


def test_special_tokens_in_content_are_refused(tok):
    with pytest.raises(ValueError, match="special token <\\|im_end\\|>"):
        episodes.episode_tokens(Episode((env("hi<|im_end|>"), agent("x", 1.0))), tok)
    recs = [records.Record(3, Episode((env("fine"), agent("bad <|im_start|> text", 1.0))), ("prompt", "response"))]
    with pytest.raises(records.DataError) as e:
        records.check_reserved(recs, tok.reserved, "data.jsonl")
    assert str(e.value).startswith("data.jsonl: line 3: response: contains '<|im_start|>'")
    # The sampler never emits a special token inside a reply, but may stop.
    assert set(sampler.inner_markup_ids(tok)) == {0, 1}


def test_saved_chat_tokenizer_reloads_with_the_same_layout(tok, tmp_path):
    tok.save(str(tmp_path))
    again = tokenizers.load_tokenizer(str(tmp_path))
    assert isinstance(again, tokenizers.ChatTokenizer) and again.layout == tok.layout
    assert (again.pad_id, again.end_a_id, again.vocab_size) == (tok.pad_id, tok.end_a_id, tok.vocab_size)
    assert again.encode(gguf_fixtures.MIXED_TEXT) == tok.encode(gguf_fixtures.MIXED_TEXT)


def test_markup_layout_is_unchanged_for_markup_tokenizers():
    markup = tokenizers.symbol_tokenizer(["x", "y"])
    lay = layout.layout_of(markup)
    assert (lay.kind, lay.env_first, lay.agent_first, lay.env_close, lay.stop_id, lay.terminal) == (
        "markup", (markup.s_id,), (markup.a_id,), (markup.end_s_id,), markup.end_a_id, (markup.eod_id,))
    ep = Episode((env("x"), agent("y", 1.0)))
    assert episodes.episode_tokens(ep, markup) == [markup.s_id, 1, markup.end_s_id, 2, markup.end_a_id, markup.eod_id]


@pytest.mark.parametrize("template, words", [
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "does not start with a special token"),
    ("{% for m in messages %}", "chat template not understood"),
    ("{% for m in messages %}{{ m['content'] }}{{ loop.index }}<|im_end|>{% endfor %}", "not laid out as single"),
])
def test_templates_that_do_not_fit_are_refused_in_one_line(template, words):
    specials = {"<|im_end|>": 2}
    with pytest.raises(ValueError) as e:
        layout.chat_layout(template, lambda text: [ord(c) for c in text], specials)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_template_that_needs_a_user_first_refuses_agent_first_episodes(tok):
    strict = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
              + gguf_fixtures.CHAT_TEMPLATE)
    chat = tokenizers.ChatTokenizer(tok._tokenizer, strict)
    assert chat.layout.agent_first is None
    assert episodes.episode_tokens(EPISODES["single turn"], chat) == render_ids(tok, EPISODES["single turn"].segments)
    with pytest.raises(ValueError, match="cannot start with an assistant message"):
        episodes.episode_tokens(EPISODES["agent first"], chat)
