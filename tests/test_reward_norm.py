"""Reward standardisation (`ilql_jax.data.rewards`): the fitted map, and what it leaves alone."""

import numpy as np
import pytest

from ilql_jax import Episode, agent, env, episodes_to_arrays, fit_reward_norm, wordle_tokenizer

TRAIN = [Episode([env("ab"), agent("cd", 1.0)]), Episode([env("ab"), agent("c", -3.0)]),
         Episode([agent("a", 2.0), env("<g>"), agent("b", 4.0)], terminal=False)]
HELDOUT = [Episode([env("a"), agent("b", 5.0)])]


def _rewards(episodes):
    return np.array([s.reward for ep in episodes for s in ep.segments if s.is_agent])


def test_zscore_standardises_the_training_rewards_and_maps_held_out_ones_the_same_way():
    norm = fit_reward_norm(TRAIN, "zscore")
    raw = _rewards(TRAIN)
    assert (norm.shift, norm.scale) == pytest.approx((raw.mean(), raw.std()))
    out = norm.apply(TRAIN)
    np.testing.assert_allclose([_rewards(out).mean(), _rewards(out).std()], [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(_rewards(norm.apply(HELDOUT)), (5.0 - raw.mean()) / raw.std())
    # Environment segments, texts and terminal flags are kept.
    assert [[(s.text, s.is_agent) for s in ep.segments] for ep in out] == \
        [[(s.text, s.is_agent) for s in ep.segments] for ep in TRAIN]
    assert [ep.terminal for ep in out] == [True, True, False]


def test_scale_divides_by_the_std_without_shifting():
    norm = fit_reward_norm(TRAIN, "scale")
    raw = _rewards(TRAIN)
    assert norm.shift == 0.0
    np.testing.assert_allclose(_rewards(norm.apply(TRAIN)), raw / raw.std())


def test_none_is_the_identity_and_the_arrays_carry_the_mapped_rewards():
    assert _rewards(fit_reward_norm(TRAIN, "none").apply(TRAIN)).tolist() == _rewards(TRAIN).tolist()
    tok = wordle_tokenizer()
    norm = fit_reward_norm(TRAIN, "zscore")
    arrays = episodes_to_arrays(norm.apply(TRAIN), tok, 16)
    # Each utterance's reward sits on its </a> transition (docs/algorithm.md §1): the row sums are the mapped returns.
    np.testing.assert_allclose(arrays["rewards"].sum(1), [norm.reward(1.0), norm.reward(-3.0),
                                                          norm.reward(2.0) + norm.reward(4.0)], rtol=1e-6)


def test_bad_modes_and_data_are_refused():
    with pytest.raises(ValueError, match="one of"):
        fit_reward_norm(TRAIN, "minmax")
    with pytest.raises(ValueError, match="constant"):
        fit_reward_norm([Episode([agent("a", 1.0)])] * 3, "zscore")
    with pytest.raises(ValueError, match="no agent segment"):
        fit_reward_norm([Episode([env("a")])], "scale")
