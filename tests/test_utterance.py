"""Per-utterance ILQL (docs/per_utterance.md): the utterance transitions read off the token arrays, the loss
against hand-computed values, the train step, and the reranking decoder (N = 1 is π_β; on a tabular dialogue
reranking by Q̄ finds the utterance with the best in-data continuation, which π_β does not prefer)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ilql_jax
from ilql_jax import losses, reranking, sampler, tokenizers, train, utterance
from ilql_jax.data import episodes
from ilql_jax.data.episodes import Episode, agent, env
from ilql_jax.models import gpt2, ilql

TOK = tokenizers.symbol_tokenizer(["a", "b", "c", "d", "e", "x"], separator=" ")
END_A = TOK.end_a_id


def _arrays(episode, max_len):
    return {k: jnp.asarray(v[None]) for k, v in episodes.episode_to_arrays(episode, TOK, max_len).items()}


# ---------------------------------------------------------------------------
# Transitions and the loss.
# ---------------------------------------------------------------------------

# 0:<a> 1:a 2:b 3:</a> 4:x 5:</s> 6:c 7:</a> 8:</eod>  (padded to 10)
TWO_TURNS = Episode((agent("a b", -1.0), env("x"), agent("c", 2.0)), terminal=True)


def test_transitions_of_two_turns():
    tr = jax.jit(utterance.transitions, static_argnums=1)(_arrays(TWO_TURNS, 10), END_A)
    close = np.flatnonzero(np.asarray(tr.c_t[0]))
    np.testing.assert_array_equal(close, [2, 6])                       # the states that emit `</a>`
    np.testing.assert_array_equal(np.asarray(tr.start_idx[0])[close], [0, 5])   # <a>, and the </s> after "x"
    np.testing.assert_array_equal(np.asarray(tr.end_idx[0])[close], [3, 7])     # the `</a>` tokens
    np.testing.assert_array_equal(np.asarray(tr.next_idx[0])[close], [5, 8])    # next utterance's state; </eod>
    np.testing.assert_array_equal(np.asarray(tr.done_next[0])[close], [0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(tr.r_t[0])[close], [-1.0, 2.0])
    assert float(jnp.sum(tr.r_t)) == 1.0                                # no reward off the closes


def test_transitions_of_consecutive_utterances_and_a_cut():
    # 0:<a> 1:a 2:</a> 3:b 4:</a>: the second utterance's state is the first's `</a>` (no reply between).
    tr = utterance.transitions(_arrays(Episode((agent("a", 1.0), agent("b", 0.0)), terminal=False), 6), END_A)
    close = np.flatnonzero(np.asarray(tr.c_t[0]))
    np.testing.assert_array_equal(close, [1, 3])
    np.testing.assert_array_equal(np.asarray(tr.start_idx[0])[close], [0, 2])
    np.testing.assert_array_equal(np.asarray(tr.next_idx[0])[close], [2, 4])
    np.testing.assert_array_equal(np.asarray(tr.done_next[0])[close], [0.0, 0.0])  # not terminal: bootstrap
    # max_len 7 cuts the second utterance before its `</a>`: one transition, bootstrapping from state 5.
    tr = utterance.transitions(_arrays(TWO_TURNS, 7), END_A)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(tr.c_t[0])), [2])
    assert int(tr.next_idx[0, 2]) == 5 and float(tr.done_next[0, 2]) == 0.0


def test_loss_against_hand_computed_values():
    """γ = 0.9, τ = 0.7 on TWO_TURNS. Every other position holds 100, which must not leak.

    y_2 = −1 + 0.9·V(5) = −1 + 0.9·1.0 = −0.1;  y_6 = 2 (done).
    L_Q = [(−0.1 − 0)² + (−0.1 + 1)² + (2 − 1)² + (2 − 2.5)²] / 2 = 2.07 / 2 = 1.035
    L_V: x_2 = −0.6 − V(0) = −1.1 (weight 0.3) → 0.363;  x_6 = 1.5 − V(5) = 0.5 (weight 0.7) → 0.175
         (0.363 + 0.175) / 2 = 0.269
    """
    tr = utterance.transitions(_arrays(TWO_TURNS, 10), END_A)
    full = lambda values: jnp.asarray([[values.get(t, 100.0) for t in range(10)]], jnp.float32)
    q1 = full({3: 0.0, 7: 1.0})
    q2 = full({3: -1.0, 7: 2.5})
    target_q = full({3: -0.6, 7: 1.5})
    v = full({0: 0.5, 5: 1.0, 8: 3.0})  # V(8) = 3 is the terminal state's: never bootstrapped
    cfg = losses.LossConfig(gamma=0.9, tau=0.7)
    for fn in (utterance.utterance_loss, jax.jit(utterance.utterance_loss, static_argnums=5)):
        loss, info = fn(q1, q2, target_q, v, tr, cfg)
        np.testing.assert_allclose(float(info["q_loss"]), 1.035, rtol=1e-6)
        np.testing.assert_allclose(float(info["v_loss"]), 0.269, rtol=1e-6)
        np.testing.assert_allclose(float(loss), 1.304, rtol=1e-6)
        assert float(info["n_utterances"]) == 2.0
    # Gradients reach the online Q heads at the `</a>` positions and V at the states, nothing else.
    grads = jax.grad(lambda q1, v: utterance.utterance_loss(q1, q2, target_q, v, tr, cfg)[0], argnums=(0, 1))(q1, v)
    assert set(np.flatnonzero(np.asarray(grads[0][0]))) == {3, 7}
    assert set(np.flatnonzero(np.asarray(grads[1][0]))) == {0, 5}  # V(5) only as the state of utterance 2


def test_step_config_needs_end_a_id():
    with pytest.raises(ValueError, match="end_a_id"):
        train.StepConfig(mode="ilql_utt")
    with pytest.raises(ValueError, match="mode"):
        train.StepConfig(mode="utterance")


# ---------------------------------------------------------------------------
# A tabular dialogue: reranking by Q̄ against π_β.
# ---------------------------------------------------------------------------

# The agent opens with "a" (80% of the data) or "b" (20%); the reply is "x"; then it closes:
#   after "a": "c", reward −0.5 (every time);
#   after "b": "d", reward +1 (30% of those episodes) or "e", reward −2 (70%).
# "b" has the best in-data continuation (+1) but the worse mean (−1.1 against −0.5), so with τ = 0.9 (V near
# the upper expectile of its continuations, 0.38) Q̄(s, b) = 0.99·0.38 > Q̄(s, a) = 0.99·(−0.5), while π_β, and a
# value of the data's mean (τ = 0.5: Q̄(s, b) = 0.99·(−1.1)), prefer "a".
CFG = gpt2.GPT2Config.tiny(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_positions=16)


def _tabular_data():
    eps = [Episode((agent("a", 0.0), env("x"), agent("c", -0.5)))] * 80
    eps += [Episode((agent("b", 0.0), env("x"), agent("d", 1.0)))] * 6
    eps += [Episode((agent("b", 0.0), env("x"), agent("e", -2.0)))] * 14
    return {k: jnp.asarray(v) for k, v in episodes.episodes_to_arrays(eps, TOK, 8).items()}


def _train(tau, steps=300):
    step_cfg = train.StepConfig(mode="ilql_utt", model=ilql.ModelConfig(trunk=CFG),
                                loss=losses.LossConfig(gamma=0.99, tau=tau),
                                optim=ilql_jax.OptimConfig(learning_rate=3e-3), polyak_alpha=0.05, end_a_id=END_A)
    state = train.init_state(step_cfg, jax.random.key(0))
    step = train.make_train_step(step_cfg)
    batch = _tabular_data()
    for _ in range(steps):
        state, metrics = step(state, batch)
    return step_cfg.model, state, metrics


@pytest.fixture(scope="module")
def trained():
    return _train(tau=0.9)


def _opening_q(model, state):
    """Q̄(<a>, u) of the openings "a" and "b"."""
    seqs = jnp.asarray([[TOK.a_id, TOK.encode(u)[0], END_A] for u in ("a", "b")], jnp.int32)
    return utterance.q_at(model, state.params, state.target_params, seqs, jnp.ones_like(seqs), jnp.asarray([2, 2]))


def test_rerank_finds_the_best_in_data_continuation(trained):
    model, state, metrics = trained
    assert np.isfinite(float(metrics["loss"]))
    q_a, q_b = np.asarray(_opening_q(model, state))
    assert q_b > q_a + 0.3, (q_a, q_b)   # 0.38 against −0.50 in the limit
    prompts = np.full((64, 1), TOK.a_id, np.int32)
    mask = np.ones_like(prompts)
    scfg = sampler.SamplerConfig(max_new_tokens=3, mode="sample", prompt_buckets=(1,))
    # Markup inside an utterance is out of the data; the dialogue driver forbids it the same way.
    kw = dict(stop_ids=(END_A,), pad_id=TOK.pad_id, sampler_config=scfg,
              forbidden_ids=sampler.inner_markup_ids(TOK))
    policy = {"policy": state.params["policy"]}
    pi = sampler.sample(model, policy, {}, prompts, mask, jax.random.key(1), beta=0.0, **kw)
    best = reranking.rerank(model, state.params, state.target_params, prompts, mask, jax.random.key(1), n=8,
                         end_a_id=END_A, **kw)
    b = TOK.encode("b")[0]
    pi_b = float(np.mean(np.asarray(pi.tokens[:, 0]) == b))
    rerank_b = float(np.mean(np.asarray(best.tokens[:, 0]) == b))
    assert pi_b < 0.4, pi_b                       # π_β clones the data: "b" about 20% of the time
    assert rerank_b > 0.6, rerank_b                # 1 − 0.8⁸ = 83% of prompts have a "b" among 8 samples
    # Where a candidate "b" was drawn, reranking kept it.
    has_b = np.any(np.asarray(best.candidate_tokens[:, :, 0]) == b, axis=1)
    assert np.all(np.asarray(best.tokens[:, 0])[has_b] == b)
    np.testing.assert_allclose(np.asarray(best.score), np.asarray(best.q), rtol=1e-6)  # w = 0


@pytest.mark.slow
def test_sarsa_values_prefer_the_data_mean():
    """τ = 0.5 learns the data's mean continuation: then "a" scores higher, so the expectile (τ > 0.5) is
    what makes reranking pick "b" above."""
    model, state, _ = _train(tau=0.5)
    q_a, q_b = np.asarray(_opening_q(model, state))
    assert q_a > q_b + 0.3, (q_a, q_b)   # −0.50 against −1.09 in the limit


def test_rerank_with_one_candidate_samples_pi_beta(trained):
    model, state, _ = trained
    prompts = np.asarray([[TOK.pad_id, TOK.a_id], [TOK.a_id, TOK.encode("a")[0]]] * 4, np.int32)
    mask = (prompts != TOK.pad_id).astype(np.int32)
    scfg = sampler.SamplerConfig(max_new_tokens=4, mode="sample", prompt_buckets=(2,))
    kw = dict(stop_ids=(END_A,), pad_id=TOK.pad_id, sampler_config=scfg, temperature=1.5)
    pi = sampler.sample(model, {"policy": state.params["policy"]}, {}, prompts, mask, jax.random.key(3),
                        beta=0.0, **kw)
    one = reranking.rerank(model, state.params, state.target_params, prompts, mask, jax.random.key(3), n=1,
                        end_a_id=END_A, logp_weight=2.0, **kw)
    np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(pi.tokens))
    np.testing.assert_array_equal(np.asarray(one.lengths), np.asarray(pi.lengths))
    np.testing.assert_allclose(np.asarray(one.logp_beta), np.asarray(pi.logp_beta).sum(-1), rtol=1e-6)


def test_rerank_by_likelihood_alone_needs_no_values(trained):
    """q_weight 0: the best of N by log π_β, from π_β's parameters alone (a BC state)."""
    model, state, _ = trained
    prompts, mask = np.full((16, 1), TOK.a_id, np.int32), np.ones((16, 1), np.int32)
    scfg = sampler.SamplerConfig(max_new_tokens=3, mode="sample", prompt_buckets=(1,))
    best = reranking.rerank(model, {"policy": state.params["policy"]}, {}, prompts, mask, jax.random.key(2), n=4,
                            q_weight=0.0, logp_weight=1.0, stop_ids=(END_A,), end_a_id=END_A, pad_id=TOK.pad_id,
                            sampler_config=scfg)
    np.testing.assert_array_equal(np.asarray(best.candidate_q), 0.0)
    np.testing.assert_array_equal(np.asarray(best.choice), np.argmax(np.asarray(best.candidate_logp_beta), axis=1))
    np.testing.assert_allclose(np.asarray(best.logp_beta), np.asarray(best.candidate_logp_beta).max(axis=1))


def test_rerank_text_and_guards(trained):
    model, state, _ = trained
    texts = reranking.rerank_text(TOK, model, state.params, state.target_params, [[], [env("x")]],
                               jax.random.key(0), n=4, sampler_config=sampler.SamplerConfig(max_new_tokens=3))
    assert len(texts) == 2 and texts[0] in ("a", "b")  # the data's openings
    prompts, mask = np.full((2, 1), TOK.a_id, np.int32), np.ones((2, 1), np.int32)
    kw = dict(stop_ids=(END_A,), pad_id=TOK.pad_id)
    # Token-level decoding has no advantage to add for scalar Q heads.
    with pytest.raises(ValueError, match="per-utterance"):
        sampler.sample(model, state.params, state.target_params, prompts, mask, jax.random.key(0), beta=1.0,
                       sampler_config=sampler.SamplerConfig(max_new_tokens=3), **kw)
    with pytest.raises(ValueError, match="per-utterance ILQL state"):  # Q̄ needs scalar Q heads
        reranking.rerank(model, {"policy": state.params["policy"]}, {}, prompts, mask, jax.random.key(0), n=2,
                         end_a_id=END_A, sampler_config=sampler.SamplerConfig(max_new_tokens=3), **kw)
    with pytest.raises(ValueError, match="mode must be 'sample'"):
        reranking.rerank(model, state.params, state.target_params, prompts, mask, jax.random.key(0), n=2,
                      end_a_id=END_A, sampler_config=sampler.SamplerConfig(max_new_tokens=3, mode="greedy"), **kw)
    with pytest.raises(ValueError, match="n_positions"):
        reranking.rerank(model, state.params, state.target_params, prompts, mask, jax.random.key(0), n=2,
                      end_a_id=END_A, sampler_config=sampler.SamplerConfig(max_new_tokens=15), **kw)


def test_train_step_moves_the_scalar_target_heads():
    step_cfg = train.StepConfig(mode="ilql_utt", model=ilql.ModelConfig(trunk=CFG), polyak_alpha=0.5,
                                optim=ilql_jax.OptimConfig(learning_rate=1e-2), end_a_id=END_A)
    state = train.init_state(step_cfg, jax.random.key(0))
    assert state.params["value"]["q1"]["out"]["kernel"].shape == (2 * CFG.n_embd, 1)
    before = jax.tree.map(np.asarray, state.target_params)
    new, metrics = train.make_train_step(step_cfg, donate=False)(state, _tabular_data())
    for name in ("q1", "q2", "trunk"):  # θ̄ ← α θ + (1 − α) θ̄ with α = 0.5, after the update
        gap = jax.tree.map(lambda t, o, old: np.asarray(t) - (0.5 * np.asarray(o) + 0.5 * old),
                           new.target_params[name], new.params["value"][name], before[name])
        assert max(float(np.abs(x).max()) for x in jax.tree.leaves(gap)) < 1e-6
    assert not np.allclose(np.asarray(new.target_params["q1"]["out"]["kernel"]), before["q1"]["out"]["kernel"])
    assert {"q_loss", "v_loss", "bc_nll", "n_utterances"} <= set(metrics)
    assert float(metrics["n_utterances"]) == 200.0 and float(metrics["bc_nll"]) > 0


# ---------------------------------------------------------------------------
# The command line: `ilql-jax train --per_utterance true`, `ilql-jax generate --mode rerank`.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_trains_per_utterance_and_generates_by_reranking(tmp_path, capsys):
    import json

    from ilql_jax import cli

    records = [{"turns": [{"role": "env", "text": f"guess my number, hint {i % 4}"},
                          {"role": "agent", "text": "is it five?", "reward": -1},
                          {"role": "env", "text": "higher"},
                          {"role": "agent", "text": "seven" if i % 3 == 0 else "nine", "reward": float(i % 3 == 0)}]}
               for i in range(40)]
    data = tmp_path / "games.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    workdir = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--workdir", str(workdir), "--bc_steps", "3", "--ilql_steps", "3",
                     "--batch_size", "8", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--max_len", "48",
                     "--tokenizer", "symbols", "--progress", "false", "--per_utterance", "true"]) == 0
    config = json.loads((workdir / "ilql" / "config.json").read_text())
    tok = tokenizers.load_tokenizer(str(workdir / "tokenizer"))
    assert config["step"]["mode"] == "ilql_utt" and config["step"]["end_a_id"] == tok.end_a_id
    out = tmp_path / "out.jsonl"
    assert cli.main(["generate", "--workdir", str(workdir), "--prompt", "guess my number, hint 1", "--mode", "rerank",
                     "--n", "3", "--num", "2", "--max_new_tokens", "6", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["mode"] == "rerank" and r["n"] == 3 for r in rows)
    assert all(np.isfinite(r["q"]) and r["score"] == pytest.approx(r["q"]) for r in rows)  # w = 0
    # Token-level decoding of a per-utterance run: one line, exit 2.
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--workdir", str(workdir), "--prompt", "guess my number, hint 1", "--beta", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and "per-utterance" in err, err
