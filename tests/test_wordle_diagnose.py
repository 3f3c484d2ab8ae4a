"""The Wordle value diagnostic: guess groups, returns-to-go and where Q̄ is read (experiments/wordle/diagnose.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.wordle.diagnose import (calibration, end_of_guess_q, guess_group, letter_advantages, load_run,
                                         returns_to_go)
from experiments.wordle.env import WordleGame, prompt_ids
from experiments.wordle.policies import FeedbackTable
from ilql_jax import tokenizers, train
from ilql_jax.models import gpt2, ilql

TOK = tokenizers.wordle_tokenizer()
WORDS = ["crane", "slate", "plate", "stale", "words", "other"]


def _game(answer, guesses):
    game = WordleGame(answer, WORDS)
    for g in guesses:
        game.step(g)
    return game


def test_groups_come_from_the_history_not_the_answer():
    table = FeedbackTable(WORDS)
    turns = _game("plate", ["crane", "words", "crane"]).turns
    assert guess_group([], "crane", table) == "k=6-20"  # before any guess all six words are possible
    # crane vs plate = b b g b g: a third, e fifth, no c, r, n; slate, plate and stale qualify.
    assert turns[0].feedback == "bbgbg"
    assert guess_group(turns[:1], "slate", table) == "k=3-5"
    assert guess_group(turns[:1], "plate", table) == "k=3-5"
    assert guess_group(turns[:1], "other", table) == "inconsistent"
    assert guess_group(turns[:2], "crane", table) == "repeat"
    assert guess_group(turns[:1], "xyzzy", table) == "invalid"
    # words vs plate = b b b b b rules out s: slate goes, plate is the only word left.
    assert guess_group(turns[:2], "plate", table) == "k=1"
    assert guess_group(turns[:2], "slate", table) == "inconsistent"


def test_returns_to_go_discount_each_guess_by_its_actions():
    turns = _game("plate", ["crane", "words", "plate"]).turns
    g6 = 0.9 ** 6  # five letters and </a> per guess; feedback tokens are not actions
    np.testing.assert_allclose(returns_to_go(turns, 0.9, TOK), [-1 - g6, -1.0, 0.0])
    turns = _game("plate", ["crane", "xyzzy", "other"]).turns
    np.testing.assert_allclose(returns_to_go(turns, 1.0, TOK), [-3.0, -2.0, -1.0])


@pytest.fixture(scope="module")
def state_and_config():
    trunk = gpt2.GPT2Config.tiny(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_positions=80)
    step = train.StepConfig(mode="ilql", model=ilql.ModelConfig(trunk=trunk))
    state = train.init_state(step, jax.random.key(0))
    # Random target heads are near-equal at init; perturb one so min(Q̄1, Q̄2) is a real choice.
    q2 = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), state.target_params["q2"])
    state = state.replace(target_params={**state.target_params, "q2": q2})
    return state, step.model


def test_q_bar_is_read_where_each_guess_emits_its_end_token(state_and_config):
    """Batched and padded, Q̄ equals min(Q̄1, Q̄2)[</a>] of a forward over the prefix up to that state."""
    state, model = state_and_config
    games = [_game("plate", ["crane", "words", "plate"]).turns, _game("slate", ["slate"]).turns,
             _game("other", ["xyzzy", "crane", "crane", "words"]).turns]
    got = end_of_guess_q(model, state, games, TOK, batch_size=2)
    assert [len(q) for q in got] == [3, 1, 4]
    for turns, q in zip(games, got):
        for i in range(len(turns)):
            prefix = prompt_ids(turns[:i], TOK) + TOK.encode(turns[i].guess)  # the last state emits </a>
            x = jnp.asarray([prefix])
            o = ilql.apply(model, state.params, state.target_params, x, jnp.ones_like(x))
            want = float(o.target_q_t[0, -1, TOK.end_a_id])
            np.testing.assert_allclose(q[i], want, rtol=1e-5, atol=1e-5)


def test_a_game_longer_than_the_model_is_refused_not_cut(state_and_config):
    state, model = state_and_config
    short = dataclasses.replace(model, trunk=dataclasses.replace(model.trunk, n_positions=20))
    game = _game("other", ["crane", "words"]).turns  # <a> + 2 × 12 tokens: 25 > 20
    with pytest.raises(ValueError, match="game 0 is 25 tokens, longer than the model's 20 positions"):
        end_of_guess_q(short, state, [game], TOK)


def test_letter_advantages_are_what_the_sampler_adds(state_and_config):
    """A at each letter is min(Q̄1, Q̄2)[a] − V at the state emitting it, and log π_β is π_β's own (frozen or not)."""
    state, model = state_and_config
    history = _game("plate", ["crane"]).turns
    rows = letter_advantages(model, state, history, "slate", TOK)
    assert [r["token"] for r in rows] == ["s", "l", "a", "t", "e", "</a>"]
    prompt = prompt_ids(history, TOK)
    for i, r in enumerate(rows):
        x = jnp.asarray([prompt + TOK.encode("slate")[:i]])  # the last state emits the i-th action
        o = ilql.apply(model, state.params, state.target_params, x, jnp.ones_like(x))
        a = (TOK.encode("slate") + [TOK.end_a_id])[i]
        q_bar = float(o.target_q_t[0, -1, a])
        np.testing.assert_allclose([r["q_bar"], r["v"], r["a"]], [q_bar, float(o.v_t[0, -1]), q_bar - float(o.v_t[0, -1])],
                                   rtol=1e-5, atol=1e-5)
        logp = jax.nn.log_softmax(o.pi_logits_t[0, -1, :TOK.vocab_size])
        np.testing.assert_allclose(r["log_pi_beta"], float(logp[a]), rtol=1e-5, atol=1e-5)
    frozen = dataclasses.replace(model, frozen_policy=True)  # π_β then comes from its own forward pass
    keys = ("log_pi_beta", "q_bar", "v", "a")
    np.testing.assert_allclose([[r[k] for k in keys] for r in letter_advantages(frozen, state, history, "slate", TOK)],
                               [[r[k] for k in keys] for r in rows], rtol=1e-5, atol=1e-5)


def test_calibration_counts_every_guess_once(state_and_config):
    state, model = state_and_config
    games = [_game("plate", ["crane", "words", "plate"]), _game("slate", ["slate"]),
             _game("other", ["crane", "crane", "other"])]
    rows, summary = calibration(model, state, games, WORDS, 0.99, TOK)
    assert summary["n_guesses"] == 7
    assert sum(r["n"] for r in rows if r["turn"] == "all") == 7
    assert sum(r["n"] for r in rows if r["turn"] != "all") == 7
    by = {(r["turn"], r["group"]): r for r in rows}
    assert by[(2, "repeat")]["g"] == pytest.approx(-1 + 0.0)  # the repeat, then the win
    assert by[(3, "k=1")]["g"] == 0.0 and by[(3, "k=1")]["n"] == 2  # "plate" and "other", each the last word left
    assert by[(1, "k=6-20")]["n"] == 3 and by[(1, "k=6-20")]["g"] == pytest.approx(2 * (-1 - 0.99 ** 6) / 3)


def test_a_run_without_values_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run"):
        load_run(str(tmp_path), "ilql")
    (tmp_path / "bc").mkdir()
    (tmp_path / "bc" / "config.json").write_text('{"step": {"mode": "bc"}}')
    with pytest.raises(ValueError, match="has no values"):
        load_run(str(tmp_path), "bc")
