"""Index construction of the token-level MDP (docs/algorithm.md §1, §8)."""

import math
import re

import numpy as np
import pytest

from ilql_jax.data.episodes import (
    ARRAY_DTYPES,
    Episode,
    Segment,
    agent,
    env,
    episode_return,
    episode_to_arrays,
    episode_tokens,
    episodes_to_arrays,
    prompt_tokens,
)

MARKUP = ["<s>", "</s>", "<a>", "</a>", "</eod>", "<pad>"]


class WordleTokenizer:
    """The 35-token Wordle vocabulary: letters, <g> <y> <b>, markup and pad."""

    def __init__(self):
        vocab = list("abcdefghijklmnopqrstuvwxyz") + ["<g>", "<y>", "<b>"] + MARKUP
        assert len(vocab) == 35
        self.vocab = vocab
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.s_id = self.ids["<s>"]
        self.end_s_id = self.ids["</s>"]
        self.a_id = self.ids["<a>"]
        self.end_a_id = self.ids["</a>"]
        self.eod_id = self.ids["</eod>"]
        self.pad_id = self.ids["<pad>"]

    def encode(self, text):
        # Markup strings are special tokens, as with GPT-2's added tokens.
        return [self.ids[tok] for tok in re.findall(r"</?[a-z]+>|.", text)]

    def decode(self, ids):
        return [self.vocab[i] for i in ids]


class CharTokenizer:
    """One id per character (ord + 10); ids 0..5 are markup/pad. No special parsing."""

    s_id, end_s_id, a_id, end_a_id, eod_id, pad_id = range(6)

    def encode(self, text):
        return [ord(c) + 10 for c in text]


@pytest.fixture
def wtok():
    return WordleTokenizer()


def wordle_episode(terminal=True, slate_reward=0.0):
    return Episode(
        (
            agent("crane", -1.0),
            env("<b><y><b><b><g>"),
            agent("slate", slate_reward),
            env("<g><g><g><g><g>"),
        ),
        terminal=terminal,
    )


def action_states(arrays):
    return np.flatnonzero(arrays["action_mask"]).tolist()


def check_invariants(arrays, max_len):
    """Properties every row must satisfy, cut or not."""
    for key, dtype in ARRAY_DTYPES.items():
        assert arrays[key].dtype == dtype, key
        assert arrays[key].shape == (max_len,), key
    n_kept = int(arrays["attention_mask"].sum())
    assert np.all(arrays["attention_mask"][:n_kept] == 1)
    mask = arrays["action_mask"]
    # Never an action on padding, nor at the last kept state (its action is cut/absent).
    assert np.all(mask[n_kept - 1 :] == 0)
    assert np.all(arrays["rewards"][mask == 0] == 0)
    assert np.all(arrays["dones"][n_kept:] == 0)
    nxt = arrays["next_idx"]
    assert np.all((0 <= nxt) & (nxt < max_len))
    acts = np.flatnonzero(mask)
    # Bootstrap targets are kept, strictly later positions.
    assert np.all(nxt[acts] > acts)
    assert np.all(nxt[acts] <= n_kept - 1)


# ---------------------------------------------------------------------------
# The worked Wordle example of docs/algorithm.md §1
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_len", [26, 32])
def test_wordle_worked_example(wtok, max_len):
    arrays = episode_to_arrays(wordle_episode(), wtok, max_len)
    check_invariants(arrays, max_len)

    expected = (
        ["<a>", "c", "r", "a", "n", "e", "</a>"]
        + ["<b>", "<y>", "<b>", "<b>", "<g>", "</s>"]
        + ["s", "l", "a", "t", "e", "</a>"]
        + ["<g>"] * 5
        + ["</s>", "</eod>"]
    )
    assert len(expected) == 26
    assert wtok.decode(arrays["tokens"][:26]) == expected
    assert np.all(arrays["tokens"][26:] == wtok.pad_id)
    assert arrays["attention_mask"].tolist() == [1] * 26 + [0] * (max_len - 26)

    assert action_states(arrays) == list(range(0, 6)) + list(range(12, 18))

    want_rewards = np.zeros(max_len, np.float32)
    want_rewards[5] = -1.0
    want_rewards[17] = 0.0
    np.testing.assert_array_equal(arrays["rewards"], want_rewards)

    nxt = arrays["next_idx"]
    assert nxt[5] == 12 and nxt[17] == 25
    for t in list(range(0, 5)) + list(range(12, 17)):
        assert nxt[t] == t + 1

    assert np.flatnonzero(arrays["dones"]).tolist() == [25]
    # done_next as the loss reads it: only the winning guess ends the game.
    done_next = arrays["dones"][nxt] * arrays["action_mask"]
    assert np.flatnonzero(done_next).tolist() == [17]
    # Padding never unmasked.
    assert np.all(arrays["action_mask"][25:] == 0)


def test_wordle_tokens_equal_tokenising_the_joined_string(wtok):
    joined = "<a>crane</a><b><y><b><b><g></s>slate</a><g><g><g><g><g></s></eod>"
    assert episode_tokens(wordle_episode(), wtok) == wtok.encode(joined)


def test_prompt_tokens_match_training_layout(wtok):
    assert prompt_tokens([], wtok) == [wtok.a_id]
    history = [agent("crane", -1.0), env("<b><y><b><b><g>")]
    assert prompt_tokens(history, wtok) == wtok.encode("<a>crane</a><b><y><b><b><g></s>")
    # The prompt is a prefix of the finished episode: train and decode see the same ids.
    full = episode_tokens(wordle_episode(), wtok)
    assert full[: len(prompt_tokens(history, wtok))] == prompt_tokens(history, wtok)
    assert prompt_tokens([env("hi")], CharTokenizer()) == [0, *CharTokenizer().encode("hi"), 1]


# ---------------------------------------------------------------------------
# One-step Reddit-style episode: <s>parent</s>comment</a></eod>
# ---------------------------------------------------------------------------


def test_reddit_one_step_alignment():
    tok = CharTokenizer()
    ep = Episode((env("parent"), agent("comment", -5.0)), terminal=True)
    max_len = 24
    arrays = episode_to_arrays(ep, tok, max_len)
    check_invariants(arrays, max_len)
    # 0:<s> 1-6:parent 7:</s> 8-14:comment 15:</a> 16:</eod>
    want = [tok.s_id, *tok.encode("parent"), tok.end_s_id]
    want += [*tok.encode("comment"), tok.end_a_id, tok.eod_id]
    assert len(want) == 17
    assert arrays["tokens"][:17].tolist() == want
    assert np.all(arrays["tokens"][17:] == tok.pad_id)
    # States 7 (</s>, emits 'c') .. 14 (emits </a>).
    assert action_states(arrays) == list(range(7, 15))
    assert np.flatnonzero(arrays["rewards"]).tolist() == [14]
    assert arrays["rewards"][14] == -5.0
    assert arrays["next_idx"][14] == 16
    assert arrays["next_idx"][7:14].tolist() == list(range(8, 15))
    assert np.flatnonzero(arrays["dones"]).tolist() == [16]
    assert arrays["dones"][arrays["next_idx"][14]] == 1.0
    assert episode_return(ep) == -5.0 == ep.total_return


def test_empty_agent_utterance_emits_only_end_a():
    tok = CharTokenizer()
    ep = Episode((env("p"), agent("", 1.0)), terminal=True)
    arrays = episode_to_arrays(ep, tok, 8)
    # 0:<s> 1:p 2:</s> 3:</a> 4:</eod>; the only action is state 2 emitting </a>.
    assert action_states(arrays) == [2]
    assert arrays["rewards"][2] == 1.0
    assert arrays["next_idx"][2] == 4
    assert arrays["dones"][4] == 1.0


def test_consecutive_agent_segments_chain_to_next_utterance():
    tok = CharTokenizer()
    ep = Episode((agent("ab", -1.0), agent("c", 2.0)), terminal=False)
    arrays = episode_to_arrays(ep, tok, 10)
    # 0:<a> 1-2:ab 3:</a> 4:c 5:</a> (no </eod>: not terminal)
    want = [tok.a_id, *tok.encode("ab"), tok.end_a_id, *tok.encode("c"), tok.end_a_id]
    assert arrays["tokens"][:6].tolist() == want
    assert action_states(arrays) == [0, 1, 2, 3, 4]
    assert arrays["next_idx"][2] == 3  # the </a> state emits the next utterance
    assert arrays["next_idx"][4] == 5  # last transition: the final position
    assert arrays["rewards"][[2, 4]].tolist() == [-1.0, 2.0]
    assert not arrays["dones"].any()


# ---------------------------------------------------------------------------
# Truncation and non-terminal episodes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("slate_reward", [0.0, -1.0])
def test_wordle_cut_at_15(wtok, slate_reward):
    arrays = episode_to_arrays(wordle_episode(slate_reward=slate_reward), wtok, 15)
    check_invariants(arrays, 15)
    # Kept: 0:<a> 1-5 crane 6:</a> 7-11 feedback 12:</s> 13:s 14:l
    assert arrays["attention_mask"].sum() == 15
    assert not arrays["dones"].any()  # a cut episode is not terminal
    # Second guess: only the states whose action token was kept (12 -> s, 13 -> l).
    assert action_states(arrays) == list(range(0, 6)) + [12, 13]
    assert arrays["next_idx"][5] == 12
    assert arrays["next_idx"][12] == 13 and arrays["next_idx"][13] == 14
    # The cut guess gets no reward; the first keeps its -1.
    assert np.flatnonzero(arrays["rewards"]).tolist() == [5]
    assert arrays["rewards"][5] == -1.0


@pytest.mark.parametrize("max_len", [2, 3, 6, 7, 8, 12, 13, 14, 18, 19, 20, 25])
def test_wordle_every_cut(wtok, max_len):
    episode = wordle_episode(slate_reward=-2.0)  # non-zero, so a lost reward shows
    arrays = episode_to_arrays(episode, wtok, max_len)
    check_invariants(arrays, max_len)
    full = episode_to_arrays(episode, wtok, 26)
    last = max_len - 1
    assert arrays["attention_mask"].sum() == max_len
    assert not arrays["dones"].any()
    assert arrays["tokens"].tolist() == full["tokens"][:max_len].tolist()
    # Actions are the uncut ones whose token survived the cut.
    want_actions = [t for t in action_states(full) if t + 1 < max_len]
    assert action_states(arrays) == want_actions
    for t in want_actions:
        # Next states beyond the cut bootstrap from the last kept position.
        assert arrays["next_idx"][t] == min(full["next_idx"][t], last)
    # Rewards only where the </a> survived.
    want_rewards = np.zeros(max_len, np.float32)
    for t, end in [(5, 6), (17, 18)]:
        if end < max_len:
            want_rewards[t] = full["rewards"][t]
    np.testing.assert_array_equal(arrays["rewards"], want_rewards)


def test_cut_after_first_guess_bootstraps_from_last_kept(wtok):
    arrays = episode_to_arrays(wordle_episode(), wtok, 8)
    # Kept 0..7 (<a> crane </a> <b>): the reward stays, next(5) = 12 was cut -> 7.
    assert arrays["rewards"][5] == -1.0
    assert arrays["next_idx"][5] == 7
    assert not arrays["dones"].any()


def test_cut_only_eod_is_not_terminal(wtok):
    # Cutting exactly the </eod> still counts as truncation: no done anywhere.
    arrays = episode_to_arrays(wordle_episode(), wtok, 25)
    assert not arrays["dones"].any()
    assert arrays["next_idx"][17] == 24


@pytest.mark.parametrize("max_len", [25, 30])
def test_non_terminal_episode_that_fits(wtok, max_len):
    arrays = episode_to_arrays(wordle_episode(terminal=False), wtok, max_len)
    check_invariants(arrays, max_len)
    n = 25  # everything but </eod>
    assert arrays["attention_mask"].sum() == n
    assert wtok.eod_id not in arrays["tokens"].tolist()
    assert arrays["tokens"][24] == wtok.end_s_id
    assert not arrays["dones"].any()
    assert arrays["next_idx"][17] == 24  # bootstraps from the final state
    # Still exactly the real actions; the pad slot after the end is not unmasked.
    assert action_states(arrays) == list(range(0, 6)) + list(range(12, 18))
    assert np.all(arrays["action_mask"][24:] == 0)


def test_episodes_to_arrays_stacks(wtok):
    eps = [wordle_episode(), wordle_episode(terminal=False), Episode((agent("abc", 3),))]
    arrays = episodes_to_arrays(eps, wtok, 30)
    assert set(arrays) == set(ARRAY_DTYPES)
    for key, dtype in ARRAY_DTYPES.items():
        assert arrays[key].shape == (3, 30) and arrays[key].dtype == dtype
        np.testing.assert_array_equal(arrays[key][1], episode_to_arrays(eps[1], wtok, 30)[key])
    assert arrays["attention_mask"].sum(axis=1).tolist() == [26, 25, 6]


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def test_segment_validation():
    with pytest.raises(ValueError, match="reward None"):
        Segment("feedback", is_agent=False, reward=1.0)
    with pytest.raises(ValueError, match="real-valued reward"):
        Segment("guess", is_agent=True, reward=None)
    with pytest.raises(ValueError, match="real-valued reward"):
        agent("guess", "1.0")
    with pytest.raises(ValueError, match="real-valued reward"):
        agent("guess", True)
    for bad in (math.nan, math.inf, -math.inf, np.float32("nan")):
        with pytest.raises(ValueError, match="non-finite"):
            agent("guess", bad)
    with pytest.raises(ValueError, match="str"):
        Segment(123, is_agent=False)
    seg = agent("x", np.float32(2))
    assert type(seg.reward) is float and seg.reward == 2.0


def test_episode_validation(wtok):
    with pytest.raises(ValueError, match="empty episode"):
        Episode(())
    with pytest.raises(ValueError, match="Segment"):
        Episode(("text",))
    with pytest.raises(ValueError, match="terminal"):
        Episode((env("a"),), terminal="yes")
    # A list is accepted and frozen into a tuple.
    assert isinstance(Episode([env("a")]).segments, tuple)


def test_episode_to_arrays_validation(wtok):
    ep = wordle_episode()
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match="max_len"):
            episode_to_arrays(ep, wtok, bad)
    with pytest.raises(ValueError, match="max_len"):
        episode_to_arrays(ep, wtok, 10.0)
    # A reward smuggled past the frozen dataclass is still caught.
    seg = agent("crane", -1.0)
    object.__setattr__(seg, "reward", float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        episode_to_arrays(Episode((seg,)), wtok, 10)
    with pytest.raises(ValueError, match="Episode"):
        episode_to_arrays([agent("crane", -1.0)], wtok, 10)


def test_markup_inside_text_is_rejected(wtok):
    ep = Episode((env("hello</a>"), agent("x", 0.0)))
    with pytest.raises(ValueError, match="markup token </a>"):
        episode_to_arrays(ep, wtok, 20)


def test_tokenizer_missing_ids_is_rejected():
    class NoEod:
        s_id, end_s_id, a_id, end_a_id, pad_id = range(5)

        def encode(self, text):
            return [10]

    with pytest.raises(ValueError, match="eod_id"):
        episode_to_arrays(Episode((agent("x", 0.0),)), NoEod(), 8)


def test_episodes_to_arrays_validation(wtok):
    with pytest.raises(ValueError, match="no episodes"):
        episodes_to_arrays([], wtok, 10)
    with pytest.raises(ValueError, match="episode 1: .*markup"):
        episodes_to_arrays([wordle_episode(), Episode((env("</s>"),))], wtok, 10)
