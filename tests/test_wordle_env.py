"""Wordle game rules, scripted policies and offline data (docs/algorithm.md §1, §7)."""

import collections
import json

import numpy as np
import pytest

from experiments.wordle.datasets import (
    DEFAULT_CONTINUATIONS,
    DEFAULT_MIXTURES,
    HABIT_MIXTURES,
    OPENER_CONTINUATIONS,
    OPENER_MIXTURES,
    REPEAT_MIXTURES,
    evaluate_policy,
    game_stats,
    games_to_episodes,
    generate_games,
    load_games,
    save_games,
)
from experiments.wordle.env import (
    MAX_GUESSES,
    Turn,
    WordleGame,
    feedback,
    prompt_ids,
    turns_to_episode,
)
from experiments.wordle.policies import (
    ExpertPolicy,
    FeedbackTable,
    HabitPolicy,
    RandomConsistentPolicy,
    RepeatPolicy,
    make_policies,
    poorest_opener,
)
from experiments.wordle.words import default_words, load_vocab, save_vocab
from ilql_jax.data.batches import top_fraction_indices
from ilql_jax.data.episodes import episode_to_arrays, episode_tokens, episodes_to_arrays
from ilql_jax.tokenizers import wordle_tokenizer

WORDS = ["crane", "slate", "route", "there", "hello", "llama", "abide", "speed", "eerie", "madam"]


@pytest.fixture(scope="module")
def default_vocab():
    return default_words()


# ---------------------------------------------------------------------------
# Feedback rules (worked out by hand: greens first, then yellows limited by
# the answer's letters not already used)


@pytest.mark.parametrize(
    "guess, answer, expected",
    [
        ("crane", "crane", "ggggg"),
        ("crane", "slate", "bbgbg"),
        ("crane", "route", "bybbg"),
        # e at 2 is yellow (abide has one e), e at 3 black; d is elsewhere: yellow.
        ("speed", "abide", "bbyby"),
        # final e green; there has one more e (pos 2): the first guess e takes it.
        ("eerie", "there", "ybybg"),
        ("there", "eerie", "bbyyg"),
        # hello has two l: both l of llama are yellow; no a, m in hello.
        ("llama", "hello", "yybbb"),
        ("hello", "llama", "bbyyb"),
        # the greens at 2 and 3 use up both l of hello: the l at 0 is black.
        ("lolly", "hello", "byggb"),
        # e at 1 and 4 green; the answer's remaining e (pos 0) makes e at 2 yellow.
        ("geese", "eerie", "bgybg"),
        # m at 0 green; madam's other m (pos 4) yellows the first free m only.
        ("mamma", "madam", "ggyby"),
    ],
)
def test_feedback(guess, answer, expected):
    assert feedback(guess, answer) == expected


def test_feedback_rejects_non_words():
    with pytest.raises(ValueError):
        feedback("cran", "crane")
    with pytest.raises(ValueError):
        feedback("CRANE", "crane")


# ---------------------------------------------------------------------------
# Rewards and the end of a game


def test_win_gets_zero_and_ends_the_game():
    game = WordleGame("slate", WORDS)
    assert game.step("crane").reward == -1.0
    assert not game.done
    turn = game.step("slate")
    assert (turn.feedback, turn.reward) == ("ggggg", 0.0)
    assert game.done and game.won and game.total_return == -1.0
    assert game.episode().terminal
    with pytest.raises(ValueError, match="over"):
        game.step("crane")


def test_six_misses_end_with_minus_six():
    game = WordleGame("slate", WORDS)
    for i in range(MAX_GUESSES):
        assert not game.done
        game.step(["crane", "route"][i % 2])
    assert game.done and not game.won
    assert game.total_return == -6.0
    assert game.episode().terminal


def test_game_stats_counts_repeated_and_invalid_guesses():
    a = WordleGame("slate", WORDS)
    for guess in ["crane", "crane", "zzzzz", "zzzzz", "slate"]:  # an invalid guess repeated counts as both
        a.step(guess)
    b = WordleGame("route", WORDS)
    for guess in ["crane", "slate", "route"]:
        b.step(guess)
    stats = game_stats([a, b])
    assert stats["mean_return"] == -3.0 and stats["win_rate"] == 1.0 and stats["mean_guesses"] == 4.0
    assert stats["repeat_rate"] == pytest.approx(2 / 8)
    assert stats["invalid_rate"] == pytest.approx(2 / 8)


def test_unfinished_game_is_not_terminal():
    game = WordleGame("slate", WORDS)
    game.step("crane")
    assert not game.episode().terminal


@pytest.mark.parametrize("guess", ["zzzzz", "cran", "cranes", "CRANE", "cr4ne", ""])
def test_invalid_guess_costs_one_and_gets_no_feedback(guess):
    game = WordleGame("slate", WORDS)
    turn = game.step(guess)
    assert turn.feedback is None and turn.reward == -1.0
    assert len(game.turns) == 1 and not game.done  # it uses up a turn
    env_segment = game.episode().segments[1]
    assert not env_segment.is_agent and env_segment.text == ""


def test_invalid_guess_tokenizes_with_empty_reply():
    tok = wordle_tokenizer()
    game = WordleGame("slate", WORDS)
    game.step("zzzzz")
    game.step("slate")
    expected = "<a>zzzzz</a></s>slate</a><g><g><g><g><g></s></eod>"
    assert episode_tokens(game.episode(), tok) == tok.encode(expected)


def test_answer_must_be_listed():
    with pytest.raises(ValueError, match="word list"):
        WordleGame("qqqqq", WORDS)


# ---------------------------------------------------------------------------
# The worked example of docs/algorithm.md §1
#
# The spec shows crane with feedback b y b b g followed by a winning slate.
# Against the answer slate, crane honestly gets b b g b g (a is green at
# position 2, e green at 4); b y b b g is what crane gets against e.g. route.
# The positions, masks and indices are the same either way: we check the
# spec's layout with the true feedback.


def test_spec_example_feedback_discrepancy():
    assert feedback("crane", "slate") == "bbgbg"
    assert feedback("crane", "route") == "bybbg"


def test_spec_worked_example_layout():
    tok = wordle_tokenizer()
    game = WordleGame("slate", WORDS)
    game.step("crane")
    game.step("slate")
    episode = game.episode()
    layout = (
        ["<a>", *"crane", "</a>", "<b>", "<b>", "<g>", "<b>", "<g>", "</s>"]
        + [*"slate", "</a>", *["<g>"] * 5, "</s>", "</eod>"]
    )
    assert len(layout) == 26
    assert episode_tokens(episode, tok) == [tok.vocab.index(t) for t in layout]

    arrays = episode_to_arrays(episode, tok, max_len=32)
    assert np.flatnonzero(arrays["action_mask"]).tolist() == list(range(0, 6)) + list(range(12, 18))
    assert arrays["rewards"][5] == -1.0 and arrays["rewards"][17] == 0.0
    assert np.count_nonzero(arrays["rewards"]) == 1
    assert arrays["next_idx"][5] == 12 and arrays["next_idx"][17] == 25
    assert np.flatnonzero(arrays["dones"]).tolist() == [25]


def test_prompt_ids():
    tok = wordle_tokenizer()
    assert prompt_ids([], tok) == [tok.a_id]
    turns = [Turn("crane", "bbgbg", -1.0)]
    assert prompt_ids(turns, tok) == tok.encode("<a>crane</a><b><b><g><b><g></s>")
    # The prompt is the prefix of the finished episode's tokens.
    full = episode_tokens(turns_to_episode(turns + [Turn("slate", "ggggg", 0.0)]), tok)
    assert full[: len(prompt_ids(turns, tok))] == prompt_ids(turns, tok)


# ---------------------------------------------------------------------------
# Word lists


def test_default_words(default_vocab):
    assert len(default_vocab) == 200 == len(set(default_vocab))
    assert all(len(w) == 5 and w.isascii() and w.isalpha() and w.islower() for w in default_vocab)
    assert default_vocab[:3] == ["about", "their", "there"]  # most frequent first


def test_vocab_round_trip(tmp_path):
    path = str(tmp_path / "run" / "vocab.txt")
    save_vocab(path, WORDS)
    assert load_vocab(path) == WORDS


@pytest.mark.parametrize(
    "text, message",
    [
        ("crane\nslate\nCrane\n", r"vocab.txt:3: 'Crane'"),
        ("crane\ncran\n", r"vocab.txt:2: 'cran'"),
        ("crane\nslate\n\ncrane\n", r"vocab.txt:4: duplicate word 'crane' \(first on line 1\)"),
        ("\n  \n", r"vocab.txt: vocabulary file has no words"),
    ],
)
def test_load_vocab_errors(tmp_path, text, message):
    path = tmp_path / "vocab.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_vocab(str(path))


# ---------------------------------------------------------------------------
# Policies


def test_expert_solves_every_default_answer(default_vocab):
    expert = ExpertPolicy(default_vocab)
    for answer in default_vocab:
        game = WordleGame(answer, default_vocab)
        while not game.done:
            game.step(expert(tuple(game.turns), None))
        assert game.won, answer


def test_expert_beats_random(default_vocab):
    policies = make_policies(default_vocab)
    stats = {name: evaluate_policy(p, default_vocab, 200, seed=0) for name, p in policies.items()}
    returns = {name: s["mean_return"] for name, s in stats.items()}
    assert returns["expert"] > returns["random_consistent"] > returns["random"]
    assert returns["expert"] > returns["repeat"]
    assert stats["expert"]["win_rate"] == 1.0
    assert all(-6.0 <= r <= 0.0 for r in returns.values())


def test_random_consistent_and_repeat_policies():
    rng = np.random.default_rng(0)
    history = (Turn("crane", feedback("crane", "slate"), -1.0),)
    consistent = RandomConsistentPolicy(WORDS)
    for _ in range(20):
        guess = consistent(history, rng)
        assert feedback("crane", guess) == "bbgbg"
    repeat = RepeatPolicy(WORDS)
    assert repeat((), rng) in WORDS
    assert repeat(history, rng) == "crane"


def test_habit_policy_opens_with_the_poorest_word_then_plays_consistent_words():
    # Brute force: the mean number of words left consistent by each first guess.
    left = {g: np.mean([sum(feedback(g, b) == feedback(g, a) for b in WORDS) for a in WORDS]) for g in WORDS}
    assert poorest_opener(FeedbackTable(WORDS)) == max(WORDS, key=left.get)
    habit, rng = HabitPolicy(WORDS), np.random.default_rng(0)
    assert habit((), rng) == max(WORDS, key=left.get)
    assert HabitPolicy(WORDS, opener="crane")((), rng) == "crane"
    history = (Turn("crane", feedback("crane", "slate"), -1.0),)
    assert all(feedback("crane", habit(history, rng)) == "bbgbg" for _ in range(20))


def test_evaluate_policy_is_deterministic(default_vocab):
    random = make_policies(default_vocab)["random"]
    assert evaluate_policy(random, default_vocab, 50, seed=3) == evaluate_policy(
        random, default_vocab, 50, seed=3
    )


# ---------------------------------------------------------------------------
# Data sets


def _records(games):
    return [
        (g.answer, [(t.guess, t.feedback, t.reward, t.policy) for t in g.turns]) for g in games
    ]


def test_datasets_are_deterministic_from_the_seed(default_vocab):
    a = generate_games(default_vocab, 100, seed=1)
    b = generate_games(default_vocab, 100, seed=1)
    c = generate_games(default_vocab, 100, seed=2)
    assert _records(a) == _records(b)
    assert _records(a) != _records(c)
    assert all(g.done for g in a)


def _check_same_play_after_either_opener(games, continuations, tolerance):
    """Both openers are followed by `continuations`' players in their shares, so the expert's
    opener returns more in the data by more than 2 standard errors; the games grouped by opener."""
    by_opener = collections.defaultdict(list)
    for g in games:
        by_opener[g.turns[0].guess].append(g)
    for opener in ("known", "share"):
        second = collections.Counter(g.turns[1].policy for g in by_opener[opener] if len(g.turns) > 1)
        for policy, share in continuations.items():
            assert second[policy] / second.total() == pytest.approx(share, abs=tolerance), (opener, policy, second)
    known, share = (game_stats(by_opener[w]) for w in ("known", "share"))
    gap = share["mean_return"] - known["mean_return"]
    assert gap > 2 * np.hypot(share["stderr"], known["stderr"]), (gap, known, share)
    return by_opener


def test_the_repeats_mixture_is_mixed(default_vocab):
    games = generate_games(default_vocab, 1000, seed=0, mixtures=REPEAT_MIXTURES)
    all_expert = np.mean([all(t.policy == "expert" for t in g.turns) for g in games])
    assert all_expert < 0.25  # no behaviour plays expertly start to finish most of the time
    mixed = np.mean([len({t.policy for t in g.turns}) > 1 for g in games])
    assert mixed > 0.3
    policies = {t.policy for g in games for t in g.turns}
    assert policies == {"expert", "random_consistent", "random", "repeat"}
    expert = evaluate_policy(make_policies(default_vocab)["expert"], default_vocab, 1000, seed=0)
    assert game_stats(games)["mean_return"] < expert["mean_return"] - 0.5
    assert sum(m.weight for m in REPEAT_MIXTURES) == pytest.approx(1.0)


def test_the_default_mix_hides_the_better_opener_from_return_filtering(default_vocab):
    """What the default data set is built to show (README, Wordle): per-state values can find the
    expert's opener, return filtering cannot."""
    assert sum(m.weight for m in DEFAULT_MIXTURES) == pytest.approx(1.0)
    games = generate_games(default_vocab, 5000, seed=0)
    assert {t.policy for g in games for t in g.turns} == {"habit", "expert", "random_consistent", "random"}
    assert np.mean([all(t.policy == "expert" for t in g.turns) for g in games]) < 0.25
    # Every opener is followed by the same play, so the expert's opener is the better one in the data ...
    _check_same_play_after_either_opener(games, DEFAULT_CONTINUATIONS, tolerance=0.03)
    # ... yet the habit's word, and its first letter, stay the most common among the best games,
    # which is all that %BC sees and what its greedy decoding plays.
    returns = np.array([g.total_return for g in games])
    for fraction in (1.0, 0.3, 0.2, 0.1):
        top = top_fraction_indices(returns, fraction)
        openers = collections.Counter(games[i].turns[0].guess for i in top)
        letters = collections.Counter(games[i].turns[0].guess[0] for i in top)
        assert openers.most_common(1)[0][0] == "known", (fraction, openers.most_common(3))
        assert letters.most_common(1)[0][0] == "k", (fraction, letters.most_common(3))


def test_the_habit_opener_is_poor_and_survives_return_filtering(default_vocab):
    policies = make_policies(default_vocab)
    habit, expert = policies["habit"], policies["expert"]
    assert habit.opener == "known" and expert((), None) == "share"
    # The habit's word is a poor opener: the expert playing on after it loses ~0.4 guesses.
    after_habit = lambda h, rng: habit.opener if not h else expert(h, rng)
    assert (evaluate_policy(after_habit, default_vocab, 1000, seed=0)["mean_return"]
            < evaluate_policy(expert, default_vocab, 1000, seed=0)["mean_return"] - 0.3)
    # In the habit mix it is the most common opener, and still that of the best games (what %BC trains on).
    games = generate_games(default_vocab, 5000, seed=0, mixtures=HABIT_MIXTURES)
    returns = np.array([g.total_return for g in games])
    for fraction in (1.0, 0.3, 0.2, 0.1):
        top = top_fraction_indices(returns, fraction)
        openers = collections.Counter(games[i].turns[0].guess for i in top)
        assert openers.most_common(1)[0][0] == "known", (fraction, openers.most_common(3))


def test_the_opener_mix_follows_both_openers_with_the_same_play(default_vocab):
    games = generate_games(default_vocab, 5000, seed=0, mixtures=OPENER_MIXTURES)
    by_opener = _check_same_play_after_either_opener(games, OPENER_CONTINUATIONS, tolerance=0.04)
    assert collections.Counter({k: len(v) for k, v in by_opener.items()}).most_common(1)[0][0] == "known"


def test_episodes_tokenize(default_vocab):
    tok = wordle_tokenizer()
    games = generate_games(default_vocab, 50, seed=0)
    episodes = games_to_episodes(games)
    # <a> + 6 turns of (5 letters, </a>, 5 feedback, </s>) + </eod>
    arrays = episodes_to_arrays(episodes, tok, max_len=1 + 12 * MAX_GUESSES + 1)
    assert arrays["tokens"].shape == (50, 74)
    returns = arrays["rewards"].sum(axis=1)
    np.testing.assert_allclose(returns, [g.total_return for g in games])
    assert (arrays["dones"].sum(axis=1) == 1).all()  # every game finished, none cut


def test_jsonl_round_trip(tmp_path, default_vocab):
    games = generate_games(default_vocab, 30, seed=0)
    path = str(tmp_path / "data" / "games.jsonl")
    save_games(path, games)
    assert _records(load_games(path, default_vocab)) == _records(games)
    first = json.loads(open(path).readline())
    assert set(first) == {"answer", "guesses", "feedbacks", "rewards", "policies"}


def test_jsonl_keeps_invalid_guesses(tmp_path):
    game = WordleGame("slate", WORDS)
    game.step("zzzzz", "learned")
    game.step("slate", "learned")
    path = str(tmp_path / "games.jsonl")
    save_games(path, [game])
    (loaded,) = load_games(path, WORDS)
    assert [t.feedback for t in loaded.turns] == [None, "ggggg"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "Expecting property name"),
        ('["a list"]', "expected a JSON object"),
        ('{"answer": "slate"}', "missing keys"),
        (
            '{"answer": "qqqqq", "guesses": ["slate"], "feedbacks": ["ggggg"], '
            '"rewards": [0], "policies": ["x"]}',
            "not in the word list",
        ),
        (
            '{"answer": "slate", "guesses": ["crane"], "feedbacks": ["bybbg"], '
            '"rewards": [-1], "policies": ["x"]}',
            "the rules give 'bbgbg'",
        ),
        (
            '{"answer": "slate", "guesses": ["slate"], "feedbacks": ["ggggg"], '
            '"rewards": [-1], "policies": ["x"]}',
            "reward -1",
        ),
        (
            '{"answer": "slate", "guesses": ["slate", "crane"], "feedbacks": ["ggggg", "bbgbg"], '
            '"rewards": [0, -1], "policies": ["x", "x"]}',
            "after the game ended",
        ),
        (
            '{"answer": "slate", "guesses": ["crane"], "feedbacks": [], '
            '"rewards": [-1], "policies": ["x"]}',
            "one length",
        ),
    ],
)
def test_loader_rejects_malformed_line(tmp_path, bad, message):
    good = generate_games(WORDS, 2, seed=0)
    path = tmp_path / "games.jsonl"
    save_games(str(path), good)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "", bad, lines[1]]) + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_games(str(path), WORDS)
    assert str(info.value).startswith(f"{path}:3: ")


# ---------------------------------------------------------------------------
# LMRL-Gym's Wordle data (`python -m experiments.wordle --data lmrl`)


def test_lmrl_player_guesses_a_consistent_word_with_its_probability(default_vocab):
    from experiments.wordle.policies import SmartOrRandomPolicy

    table = FeedbackTable(default_vocab)
    history = (Turn("about", feedback("about", "their"), -1.0),)
    consistent = set(np.asarray(default_vocab)[table.consistent(history)])
    rng = np.random.default_rng(0)
    for p in (0.0, 0.32, 1.0):
        player = SmartOrRandomPolicy(default_vocab, table, prob_smart=p)
        hits = np.mean([player(history, rng) in consistent for _ in range(3000)])
        expected = p + (1 - p) * len(consistent) / len(default_vocab)
        assert hits == pytest.approx(expected, abs=0.03), p
    with pytest.raises(ValueError, match="prob_smart"):
        SmartOrRandomPolicy(default_vocab, table, prob_smart=1.5)


def test_lmrl_data_is_one_player_deterministic_and_averages_lmrl_gyms_return():
    from experiments import lmrl
    from experiments.wordle.datasets import LMRL_MIXTURES

    words = default_words(400)
    games = generate_games(words, 2000, seed=0, mixtures=LMRL_MIXTURES)
    assert {t.policy for g in games for t in g.turns} == {"smart_or_random"}
    assert _records(games[:50]) == _records(generate_games(words, 50, seed=0, mixtures=LMRL_MIXTURES))
    stats = game_stats(games)
    # The player's probability was fitted to LMRL-Gym's data average (their normalisation's 50).
    assert stats["mean_return"] == pytest.approx(lmrl.THEIRS["wordle"].average, abs=3 * stats["stderr"])


def test_data_lmrl_option_is_checked():
    from experiments.wordle.run import WordleConfig

    assert WordleConfig(data="lmrl").data == "lmrl"
    with pytest.raises(ValueError, match="data"):
        WordleConfig(data="theirs")
    with pytest.raises(ValueError, match="mixture"):
        WordleConfig(data="lmrl", mixture="habit")
