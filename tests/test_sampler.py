"""The value-guided sampler (docs/algorithm.md §5, §8): cached decoding equals full forwards,
β = 0 reproduces π_β, the distribution is π_β·exp(βA) normalised, stops, filters, modes.

Compilation dominates: every test reuses a few static configs and the batch
shape [6, 8] of `PROMPTS`, and the reference (`ilql.apply`, the training path)
runs once per model config on prompt + generation.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ilql_jax import sampler, tokenizers
from ilql_jax.data import episodes
from ilql_jax.models import gpt2, ilql
from ilql_jax.models import trunk as trunk_lib

TOK = tokenizers.wordle_tokenizer()
CFG = gpt2.GPT2Config.tiny(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, n_positions=64)
PAD, P, M = TOK.pad_id, 8, 8
MODEL = ilql.ModelConfig(trunk=CFG)
SHARED = ilql.ModelConfig(trunk=CFG, shared_policy=True, target_on_online_trunk=True)
NO_STOP = (-5,)  # an id no token has

GREEDY = sampler.SamplerConfig(max_new_tokens=M, mode="greedy", prompt_buckets=(P,), debug=True)
FILTERED = dataclasses.replace(GREEDY, mode="sample", top_k=12, top_p=0.9)
SAMPLE = sampler.SamplerConfig(max_new_tokens=M, mode="sample", prompt_buckets=(P,))

# Six ragged prompts of real (non-pad) ids, left-padded to P.
_LENGTHS = (8, 5, 3, 8, 1, 6)
_IDS = np.asarray(jax.random.randint(jax.random.key(7), (6, P), 1, TOK.vocab_size))
MASK = np.asarray([[0] * (P - n) + [1] * n for n in _LENGTHS], np.int32)
PROMPTS = np.where(MASK == 1, _IDS, PAD).astype(np.int32)


def _fill(path, shape, rng):
    """A random value for one parameter, drawn with numpy (no XLA compile, unlike jax.random).

    Unit-scale weights (kernels 1/sqrt(fan_in), embeddings 0.25), unlike GPT-2's
    0.02 init: the blocks then matter, π_β is peaked rather than near-uniform
    and A is O(1), so every trunk and each of Q̄1, Q̄2, V shows in the logits.
    """
    name = jax.tree_util.keystr(path)
    if "['scale']" in name:
        return np.ones(shape)
    if "embedding" in name:
        return rng.normal(0, 0.25, shape)
    return rng.normal(0, 1 / np.sqrt(shape[0]) if len(shape) == 2 else 0.5, shape)


def _nets(model_config, seed=0):
    """Random networks with distinct trunks and heads (each drawn independently)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: ilql.init(model_config, jax.random.key(0)))
    return jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(_fill(p, x.shape, rng), x.dtype), shapes)


@pytest.fixture(scope="module")
def nets():
    return {MODEL: _nets(MODEL), SHARED: _nets(SHARED)}


@functools.partial(jax.jit, static_argnums=0)
def _reference_terms(model_config, online, target, tokens, mask):
    """π_β logits and A = min(Q̄1, Q̄2) − V at every position, by full forwards (the training path)."""
    out = ilql.apply(model_config, online, target, tokens, mask)
    return out.pi_logits_t, out.target_q_t - out.v_t[..., None]


def _reference(model_config, nets, generated):
    """(π_β logits, A) [6, M, V_pad] for the states that chose each generated token."""
    tokens = np.concatenate([PROMPTS, np.asarray(generated)], axis=1)
    mask = np.concatenate([MASK, np.ones((6, M), np.int32)], axis=1)
    pi, adv = _reference_terms(model_config, *nets[model_config], tokens, mask)
    # h at position P − 1 + t chooses generated token t.
    return np.asarray(pi[:, P - 1:P - 1 + M], np.float64), np.asarray(adv[:, P - 1:P - 1 + M], np.float64)


def _np_filter(l, k, p):
    l = l.copy()
    if 0 < k < l.size:
        l[np.argsort(-l, kind="stable")[k:]] = -np.inf
    if p < 1:
        order = np.argsort(-l, kind="stable")
        probs = np.exp(l[order] - l[order[0]])
        probs /= probs.sum()
        n_keep = int(np.argmax(np.cumsum(probs) >= p)) + 1  # smallest prefix holding mass p
        l[order[n_keep:]] = -np.inf
    return l


def _np_perturbed(pi, adv, *, beta, temperature, adv_clip=np.inf, pad_id=PAD, top_k=0, top_p=1.0,
                  order="spec"):
    """l' of docs/algorithm.md §5 for one state, in float64."""
    valid = np.isfinite(pi) & (np.arange(pi.size) != pad_id)
    l = np.where(valid, pi, -np.inf)
    shift = beta * np.where(valid, np.minimum(adv, adv_clip), 0.0)
    filt = lambda x: _np_filter(x, top_k, top_p)
    return {"spec": lambda: filt(l / temperature) + shift,
            "adv_first": lambda: filt((l + shift) / temperature),
            "temperature_last": lambda: (filt(l) + shift) / temperature}[order]()


def _log_softmax(l):
    return l - np.logaddexp.reduce(l[np.isfinite(l)])


def _assert_logits_close(actual, expected):
    np.testing.assert_array_equal(np.isneginf(actual), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-5, atol=1e-5)


def _run(model_config, nets, sampler_config, *, key=0, **kw):
    kw = {"beta": 1.0, "temperature": 1.0, "adv_clip": None, "stop_ids": NO_STOP, "pad_id": PAD, **kw}
    return sampler.sample(model_config, *nets[model_config], PROMPTS, MASK, jax.random.key(key),
                          sampler_config=sampler_config, **kw)


# --- cached decoding equals full forwards ------------------------------------------


@pytest.mark.parametrize("model_config", [MODEL, SHARED], ids=["three_trunks", "shared_trunk"])
def test_greedy_cached_decoding_equals_full_forward_every_step(nets, model_config):
    # A finite adv_clip makes V matter (else it cancels in softmax), so all three trunks are checked.
    knobs = dict(beta=1.5, temperature=0.7, adv_clip=1.0)
    result = _run(model_config, nets, GREEDY, **knobs)
    pi, adv = _reference(model_config, nets, result.tokens)
    logits, tokens = np.asarray(result.logits), np.asarray(result.tokens)
    assert (np.asarray(result.lengths) == M).all()
    for b in range(6):
        for t in range(M):
            expected = _np_perturbed(pi[b, t], adv[b, t], **knobs)
            _assert_logits_close(logits[b, t], expected)
            assert tokens[b, t] == np.argmax(logits[b, t])
            assert tokens[b, t] == np.argmax(expected)


def test_beta_zero_greedy_follows_pi_beta_argmax(nets):
    result = _run(MODEL, nets, GREEDY, beta=0.0)
    pi, _ = _reference(MODEL, nets, result.tokens)
    pi[..., PAD] = -np.inf
    np.testing.assert_array_equal(np.asarray(result.tokens), np.argmax(pi, axis=-1))


# --- the sampled distribution ----------------------------------------------------


def _first_token_chi_square(nets, beta):
    """p-value of the first sampled token's counts (4096 draws, one prompt) against
    softmax(log π_β + βA) over the valid ids, with pad = π_β's most likely token."""
    online, target = nets[MODEL]
    # The state after prompt 0 (what follows it does not matter: causal).
    pi, adv = _reference(MODEL, nets, np.zeros((6, M), np.int32))
    pi, adv = pi[0, 0], adv[0, 0]
    pad_id = int(np.argmax(pi))  # pad is never sampled, even as the likeliest token
    n = 4096
    config = sampler.SamplerConfig(max_new_tokens=1, mode="sample", prompt_buckets=(P,))
    result = sampler.sample(MODEL, online, target, np.repeat(PROMPTS[:1], n, 0), np.repeat(MASK[:1], n, 0),
                            jax.random.key(1), beta=beta, temperature=1.0, stop_ids=NO_STOP, pad_id=pad_id,
                            sampler_config=config)
    counts = np.bincount(np.asarray(result.tokens[:, 0]), minlength=CFG.padded_vocab_size)
    assert counts[pad_id] == 0 and counts[CFG.vocab_size:].sum() == 0
    expected = np.exp(_log_softmax(_np_perturbed(pi, adv, beta=beta, temperature=1.0, pad_id=pad_id))) * n
    # Pool the rare ids into one bin so every expected count is ≥ 5.
    rare = expected < 5
    f_obs = np.append(counts[~rare], counts[rare].sum())
    f_exp = np.append(expected[~rare], expected[rare].sum())
    return scipy.stats.chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue


def test_beta_zero_samples_pi_beta(nets):
    assert _first_token_chi_square(nets, beta=0.0) > 1e-3


def test_beta_positive_samples_pi_beta_times_exp_beta_a(nets):
    assert _first_token_chi_square(nets, beta=1.0) > 1e-3


def test_each_step_is_softmax_of_filtered_logits_plus_beta_a(nets):
    knobs = dict(beta=2.0, temperature=0.8)
    result = _run(MODEL, nets, FILTERED, key=3, **knobs)
    pi, adv = _reference(MODEL, nets, result.tokens)
    tokens, logits = np.asarray(result.tokens), np.asarray(result.logits)
    logp, logp_beta = np.asarray(result.logp), np.asarray(result.logp_beta)
    for b in range(6):
        for t in range(M):
            expected = _np_perturbed(pi[b, t], adv[b, t], top_k=12, top_p=0.9, **knobs)
            _assert_logits_close(logits[b, t], expected)
            a = tokens[b, t]
            assert np.isfinite(expected[a])  # sampled from the kept set
            np.testing.assert_allclose(logp[b, t], _log_softmax(expected)[a], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(logp_beta[b, t], _log_softmax(_without(pi[b, t], PAD))[a], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(result.adv[b, t], adv[b, t, a], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.kl, (logp - logp_beta).sum(-1), rtol=1e-6)
    assert (np.asarray(result.kl) > 0).all()  # β = 2 moves far from π_β


def _without(l, pad_id):
    return np.where(np.arange(l.size) == pad_id, -np.inf, l)


def test_logp_beta_and_kl_normalise_pi_beta_without_pad(nets):
    """log π_β(a_t), and so the KL estimate, is π_β's log-softmax with pad excluded, as in the official
    sampler (pad is never sampled); here pad is π_β's likeliest first token, so including it would show."""
    pi0, _ = _reference(MODEL, nets, np.zeros((6, M), np.int32))
    pad_id = int(np.argmax(pi0[0, 0]))
    result = _run(MODEL, nets, dataclasses.replace(FILTERED, top_k=0, top_p=1.0), key=5, pad_id=pad_id)
    tokens, logits = np.asarray(result.tokens), np.asarray(result.logits)
    pi, adv = _reference(MODEL, nets, tokens)
    logp_beta, gap = np.asarray(result.logp_beta), []
    assert (tokens != pad_id).all()  # what is sampled never includes pad
    for b in range(6):
        for t in range(M):
            a = tokens[b, t]
            _assert_logits_close(logits[b, t], _np_perturbed(pi[b, t], adv[b, t], beta=1.0, temperature=1.0,
                                                             pad_id=pad_id))
            want = _log_softmax(_without(pi[b, t], pad_id))[a]
            np.testing.assert_allclose(logp_beta[b, t], want, rtol=1e-5, atol=1e-5)
            gap.append(want - _log_softmax(pi[b, t])[a])  # = −log(1 − π_β(pad)) > 0
    assert max(gap) > 0.05
    np.testing.assert_allclose(result.kl, (np.asarray(result.logp) - logp_beta).sum(-1), rtol=1e-6)


def test_q_heads_as_stored_and_vocab_major_decode_the_same(nets):
    """`vocab_major_q` changes the layout the step reads Q̄ in (the compiled sampler transposes both Q̄
    output kernels once, and only when it is on), not what it samples."""
    as_stored = dataclasses.replace(FILTERED, vocab_major_q=False)
    assert FILTERED.vocab_major_q
    kernel_t = re.escape(f"tensor<{2 * CFG.n_embd}x{CFG.padded_vocab_size}xf32>) -> "
                         f"tensor<{CFG.padded_vocab_size}x{2 * CFG.n_embd}xf32>")
    knobs = sampler.make_knobs(beta=2.0, stop_ids=NO_STOP, pad_id=PAD)
    for sampler_config, transposes in ((FILTERED, 2), (as_stored, 0)):
        program = sampler._sample_jit.lower(MODEL, sampler_config, *nets[MODEL], PROMPTS, MASK, jax.random.key(3),
                                            knobs).as_text()
        assert len(re.findall(r"stablehlo\.transpose.*" + kernel_t, program)) == transposes
    stored = _run(MODEL, nets, as_stored, key=3, beta=2.0)
    vocab_major = _run(MODEL, nets, FILTERED, key=3, beta=2.0)
    np.testing.assert_array_equal(np.asarray(vocab_major.tokens), np.asarray(stored.tokens))
    _assert_logits_close(np.asarray(vocab_major.logits), np.asarray(stored.logits))
    np.testing.assert_allclose(vocab_major.adv, stored.adv, rtol=1e-6, atol=1e-6)


def test_inverse_cdf_maps_uniforms_to_the_softmax_quantiles():
    """On a stratified grid of K uniforms each id gets K·p_i of them (±1): the exact inverse CDF,
    across blocks, with zero-mass ids (a whole empty block among them) never returned."""
    rng = np.random.default_rng(0)
    v, k = 300, 4096  # not a multiple of CDF_BLOCK: padded inside; three blocks
    logits = rng.normal(size=v) * 2
    logits[[0, 5, 127]] = -np.inf
    logits[sampler.CDF_BLOCK:2 * sampler.CDF_BLOCK] = -np.inf  # an empty block
    logits[290:] = -np.inf  # the last id with mass is mid-block
    u = np.append((np.arange(k) + 0.5) / k, [0.0, np.nextafter(np.float32(1), np.float32(0))]).astype(np.float32)
    ids, logz = jax.jit(sampler.inverse_cdf)(jnp.asarray(np.tile(logits, (k + 2, 1)), jnp.float32), jnp.asarray(u))
    ids = np.asarray(ids)
    p = np.exp(_log_softmax(logits))
    counts = np.bincount(ids[:k], minlength=v)
    assert (counts[p == 0] == 0).all()
    np.testing.assert_array_less(np.abs(counts - k * p), 1.01)
    assert ids[k] == 1 and ids[k + 1] == 289  # u = 0 and the largest u < 1: first and last ids with mass
    np.testing.assert_allclose(logz, np.logaddexp.reduce(logits), rtol=1e-6)


# --- stopping, pad, filters ----------------------------------------------------


def test_rows_stop_independently_at_the_stop_id(nets):
    free = np.asarray(_run(MODEL, nets, SAMPLE).tokens)

    def first(row, s):
        hits = np.flatnonzero(row == s)
        return hits[0] + 1 if hits.size else M
    # A stop id that rows reach at different steps (or never).
    stop = max(np.unique(free), key=lambda s: len({first(row, s) for row in free}))
    want = np.asarray([first(row, stop) for row in free])
    assert len(set(want)) >= 3

    result = _run(MODEL, nets, SAMPLE, stop_ids=(stop,))  # same key: same draws until each stop
    tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    np.testing.assert_array_equal(lengths, want)
    for b in range(6):
        np.testing.assert_array_equal(tokens[b, :want[b]], free[b, :want[b]])
        assert (tokens[b, want[b]:] == PAD).all()
        assert (np.asarray(result.logp)[b, want[b]:] == 0).all()


def test_pad_is_never_sampled(nets):
    free = np.asarray(_run(MODEL, nets, SAMPLE, beta=0.0).tokens)
    pad_id = int(np.bincount(free.ravel()).argmax())  # the most frequent token becomes "pad"
    result = _run(MODEL, nets, SAMPLE, beta=0.0, pad_id=pad_id)
    assert (np.asarray(result.lengths) == M).all()
    assert not (np.asarray(result.tokens) == pad_id).any()


def test_top_k_keeps_exactly_k():
    logits = jnp.array([[1.0, 3.0, 2.0, 3.0, 0.5],
                        [2.0, 2.0, 2.0, 1.0, -jnp.inf]])
    kept = lambda k: np.isfinite(np.asarray(sampler.top_k_filter(logits, k)))
    np.testing.assert_array_equal(kept(2), [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])  # ties: lower ids
    np.testing.assert_array_equal(kept(3), [[0, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(kept(0), np.isfinite(logits))
    np.testing.assert_array_equal(sampler.top_k_filter(logits, 2)[0, 1], 3.0)  # kept values unchanged


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Probabilities 0.15, 0.5, 0.05, 0.3 (shuffled so that the filter must un-sort).
    logits = jnp.log(jnp.array([[0.15, 0.5, 0.05, 0.3]]))
    kept = lambda p: np.isfinite(np.asarray(sampler.top_p_filter(logits, p)))[0].astype(int).tolist()
    assert kept(0.3) == [0, 1, 0, 0]
    assert kept(0.7) == [0, 1, 0, 1]    # 0.5 < 0.7 ≤ 0.8
    assert kept(0.85) == [1, 1, 0, 1]   # 0.8 < 0.85 ≤ 0.95
    assert kept(0.97) == [1, 1, 1, 1]
    assert kept(1.0) == [1, 1, 1, 1]


@pytest.mark.parametrize("order", sampler.ORDERS)
def test_perturb_logits_orders(order):
    rng = np.random.default_rng(0)
    pi, adv = rng.normal(size=(2, 10)) * 3, rng.normal(size=(2, 10)) * 2
    pi[:, 8:] = -np.inf  # padded vocabulary
    adv[:, 8:] = -np.inf
    valid = np.arange(10) < 8
    valid[PAD] = False
    knobs = dict(beta=1.7, temperature=0.6, adv_clip=0.5)
    out = sampler.perturb_logits(jnp.asarray(pi, jnp.float32), jnp.asarray(adv, jnp.float32), jnp.asarray(valid),
                                 order=order, top_k=5, top_p=0.8, **knobs)
    for row in range(2):
        expected = _np_perturbed(pi[row], adv[row], order=order, top_k=5, top_p=0.8, **knobs)
        _assert_logits_close(np.asarray(out[row]), expected)


# --- compilation -----------------------------------------------------------------


def test_no_recompilation_across_beta_temperature_adv_clip_and_stop_ids(nets):
    _run(MODEL, nets, SAMPLE)
    count = sampler.trace_count()
    assert count >= 1
    for kw in [dict(beta=0.0), dict(beta=8.0, temperature=0.3), dict(adv_clip=0.0),
               dict(adv_clip=-1.5, beta=2.0), dict(stop_ids=(1, 2, 3)), dict(stop_ids=(TOK.end_a_id,))]:
        _run(MODEL, nets, SAMPLE, **kw)
    # A shorter prompt pads to the same bucket.
    sampler.sample(MODEL, *nets[MODEL], PROMPTS[:, 3:], MASK[:, 3:], jax.random.key(0), beta=0.5,
                   stop_ids=NO_STOP, pad_id=PAD, sampler_config=SAMPLE)
    assert sampler.trace_count() == count


# --- modes ------------------------------------------------------------------------


def test_beam_of_width_one_is_greedy(nets):
    knobs = dict(beta=1.5, temperature=0.7, adv_clip=1.0)
    greedy = _run(MODEL, nets, GREEDY, **knobs)
    beam = _run(MODEL, nets, dataclasses.replace(GREEDY, mode="beam", num_beams=1), **knobs)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    np.testing.assert_allclose(beam.logp, greedy.logp, rtol=1e-6)
    np.testing.assert_allclose(beam.score, greedy.logp.sum(-1), rtol=1e-5)


def test_beam_search_and_best_of_n_return_one_valid_generation_per_prompt(nets):
    stop = int(PROMPTS[0, -1])
    kw = dict(beta=1.0, stop_ids=(stop,), pad_id=PAD)
    online, target = nets[MODEL]
    beam = sampler.sample(MODEL, online, target, PROMPTS[:2], MASK[:2], jax.random.key(0),
                          sampler_config=dataclasses.replace(SAMPLE, mode="beam", num_beams=3), **kw)
    best = sampler.sample(MODEL, online, target, PROMPTS[:2], MASK[:2], jax.random.key(0),
                          sampler_config=dataclasses.replace(SAMPLE, mode="best_of_n", n=3), **kw)
    for result in (beam, best):
        assert result.tokens.shape == (2, M) and result.lengths.shape == (2,) and result.kl.shape == (2,)
        for row, length in zip(np.asarray(result.tokens), np.asarray(result.lengths)):
            assert 1 <= length <= M and (row[length:] == PAD).all() and PAD not in row[:length]
            assert length == M or row[length - 1] == stop
    np.testing.assert_allclose(beam.score, beam.logp.sum(-1), rtol=1e-5)
    # Best of n is, per prompt, the one of n samples with the largest Σ A. The
    # sampler tiles prompt b into rows 3b..3b+2, so plain sampling on the tiled
    # batch with the same key draws exactly those n samples.
    tiled = sampler.sample(
        MODEL, online, target, np.repeat(PROMPTS[:2], 3, 0), np.repeat(MASK[:2], 3, 0), jax.random.key(0),
        sampler_config=SAMPLE, **kw)
    pick = np.asarray(tiled.adv).sum(-1).reshape(2, 3).argmax(-1) + np.arange(2) * 3
    np.testing.assert_array_equal(best.tokens, np.asarray(tiled.tokens)[pick])


# --- text -------------------------------------------------------------------------


def test_generate_text_from_ids_and_histories(nets):
    histories = [[episodes.env("crane")], [], [episodes.env("slate")]]  # [] : the agent speaks first
    ids = [[TOK.a_id], [TOK.s_id, 3, 4, TOK.end_s_id], [TOK.a_id, 5, 6, 7, 8, 9]]
    texts = sampler.generate_text(TOK, MODEL, *nets[MODEL], histories + ids, jax.random.key(0),
                                  sampler_config=SAMPLE, beta=1.0)
    assert len(texts) == 6
    # The same ids through `sample` (the histories laid out as in training).
    prompts = [episodes.prompt_tokens(h, TOK) for h in histories] + ids
    tokens = np.full((6, P), PAD, np.int32)
    mask = np.zeros((6, P), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, P - len(prompt):], mask[row, P - len(prompt):] = prompt, 1
    result = sampler.sample(MODEL, *nets[MODEL], tokens, mask, jax.random.key(0), beta=1.0,
                            stop_ids=(TOK.end_a_id,), pad_id=PAD, sampler_config=SAMPLE)
    for text, row, length in zip(texts, np.asarray(result.tokens), np.asarray(result.lengths)):
        row = list(row[:length])
        cut = row[:row.index(TOK.end_a_id)] if TOK.end_a_id in row else row
        assert text == TOK.decode(cut)  # what was generated, markup included, less the stop


def test_generate_text_reports_markup_emitted_mid_reply(nets):
    # Only <s> and "d" may be emitted and </a> is forbidden: every reply runs to M tokens of them.
    texts = sampler.generate_text(TOK, MODEL, *nets[MODEL], [list(p[m == 1]) for p, m in zip(PROMPTS, MASK)],
                                  jax.random.key(0), sampler_config=SAMPLE, beta=1.0,
                                  allowed_ids=[TOK.s_id, TOK.encode("d")[0]], forbidden_ids=[TOK.end_a_id])
    assert all(TOK.encode(t) and set(TOK.encode(t)) <= {TOK.s_id, TOK.encode("d")[0]} for t in texts)
    assert all(len(TOK.encode(t)) == M for t in texts)  # nothing deleted
    assert sum("<s>" in t for t in texts) >= 3, texts


@pytest.mark.parametrize("mode", sampler.MODES)
def test_token_mask_holds_in_every_mode(nets, mode):
    scfg = sampler.SamplerConfig(max_new_tokens=M, mode=mode, prompt_buckets=(P,), num_beams=3, n=3)
    forbidden = list(range(1, TOK.vocab_size, 2))  # every odd id, the stop </a> (id 33) among them
    run = functools.partial(sampler.sample, MODEL, *nets[MODEL], PROMPTS, MASK, jax.random.key(1), beta=4.0,
                            pad_id=PAD, sampler_config=scfg)
    free = np.asarray(run(stop_ids=NO_STOP).tokens)
    assert np.isin(free, forbidden).any()  # without the mask, these ids are chosen
    masked = np.asarray(run(stop_ids=NO_STOP, forbidden_ids=forbidden).tokens)
    assert not np.isin(masked, forbidden).any()
    allowed = [3, 4, 7]
    only = run(stop_ids=(TOK.end_a_id,), allowed_ids=allowed)
    emitted = [t for row, n in zip(np.asarray(only.tokens), np.asarray(only.lengths)) for t in row[:n]]
    assert set(emitted) <= set(allowed) | {TOK.end_a_id}  # the stop id stays allowed
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run(stop_ids=NO_STOP, forbidden_ids=[TOK.vocab_size])


def test_bc_state_decodes_pi_beta_alone():
    """A BC state (only "policy") decodes greedily along π_β's argmax, whatever β is."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ilql_jax import sampler, train
    from ilql_jax.models import gpt2, ilql

    trunk = gpt2.GPT2Config.tiny(vocab_size=35, n_layer=1, n_embd=32, n_positions=32)
    cfg = train.StepConfig(mode="bc", model=ilql.ModelConfig(trunk=trunk))
    state = train.init_state(cfg, jax.random.key(3))
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    scfg = sampler.SamplerConfig(max_new_tokens=4, mode="greedy", prompt_buckets=(3,))
    out = sampler.sample(cfg.model, state.params, state.target_params, prompt, jnp.ones_like(prompt),
                         jax.random.key(0), beta=16.0, stop_ids=(-5,), pad_id=0, sampler_config=scfg)
    tokens = np.asarray(prompt)
    for t in range(4):
        _, logits = trunk_lib.forward(state.params["policy"], trunk, jnp.asarray(tokens))
        masked = np.asarray(logits[:, -1, :35]).copy()
        masked[:, 0] = -np.inf  # pad is never chosen
        np.testing.assert_array_equal(np.asarray(out.tokens[:, t]), masked.argmax(-1))
        tokens = np.concatenate([tokens, masked.argmax(-1)[:, None]], axis=1)
    # β has nothing to act on: the same tokens and log-probabilities at β = 0.
    out0 = sampler.sample(cfg.model, state.params, state.target_params, prompt, jnp.ones_like(prompt),
                          jax.random.key(0), beta=0.0, stop_ids=(-5,), pad_id=0, sampler_config=scfg)
    np.testing.assert_array_equal(np.asarray(out0.tokens), np.asarray(out.tokens))
    np.testing.assert_allclose(np.asarray(out0.logp), np.asarray(out.logp), atol=1e-6)
