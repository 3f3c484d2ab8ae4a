"""Packed rows: turns with their own context windows, several to a row (data/packing.py), and the trunks'
segment-aware attention that makes each block compute what it computes alone (trunk_lib.attention_layout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilql_jax import tokenizers
from ilql_jax.data import packing
from ilql_jax.data.episodes import agent, env
from ilql_jax.models import gpt2, llama
from ilql_jax.models import trunk as trunk_lib

TOK = tokenizers.symbol_tokenizer(["o1", "o2", "o3", "u", "d"], separator=" ")
S, ES, EA, EOD, PAD = TOK.s_id, TOK.end_s_id, TOK.end_a_id, TOK.eod_id, TOK.pad_id


def _id(symbol):
    return TOK.encode(symbol)[0]


def _step(obs, action, reward):
    return packing.Step((env(obs),), action, reward)


def test_worked_example_of_the_module_docstring():
    chain = packing.Chain((_step("o1", "u", -1.0), _step("o2", "d", 0.0)))
    a = packing.chains_to_arrays([chain], TOK, 12)
    assert a["tokens"].tolist() == [[S, _id("o1"), ES, _id("u"), EA, S, _id("o2"), ES, _id("d"), EA, EOD, PAD]]
    assert a["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0]]
    assert np.flatnonzero(a["action_mask"][0]).tolist() == [2, 3, 7, 8]
    assert a["rewards"][0, 3] == -1.0 and a["rewards"][0, 8] == 0.0 and a["rewards"][0].sum() == -1.0
    assert [a["next_idx"][0, t] for t in (2, 3, 7, 8)] == [3, 7, 8, 10]
    assert np.flatnonzero(a["dones"][0]).tolist() == [10]
    for key, dtype in packing.ARRAY_DTYPES.items():
        assert a[key].dtype == dtype


def test_a_chain_longer_than_a_row_continues_in_the_next_one():
    steps = [_step(o, "u", -1.0) for o in ("o1", "o2", "o3")]
    a = packing.chains_to_arrays([packing.Chain(tuple(steps))], TOK, 12)
    # Turn 2 (5 tokens) cannot follow turn 1 with room for its own successor's context (3): row 0 closes with
    # the bootstrap block <s> o2 </s>; row 1 holds turns 2 and 3 and the </eod>.
    assert a["tokens"].tolist() == [
        [S, _id("o1"), ES, _id("u"), EA, S, _id("o2"), ES, PAD, PAD, PAD, PAD],
        [S, _id("o2"), ES, _id("u"), EA, S, _id("o3"), ES, _id("u"), EA, EOD, PAD]]
    assert a["next_idx"][0, 3] == 7 and a["next_idx"][1, 3] == 7 and a["next_idx"][1, 8] == 10
    assert a["action_mask"].sum() == 6 and a["rewards"].sum() == -3.0


def test_bootstrap_block_holds_the_next_context_and_is_no_action():
    steps = [_step("o1", "u", -1.0), _step("o2", "d", -1.0), _step("o3", "u", 0.0)]
    a = packing.chains_to_arrays([packing.Chain(tuple(steps))], TOK, 10)
    # 10 slots: turn 1 (5) + bootstrap of turn 2 (3) = 8; turn 2 + bootstrap of turn 3 in row 1; turn 3 + </eod>.
    assert a["tokens"][0].tolist() == [S, _id("o1"), ES, _id("u"), EA, S, _id("o2"), ES, PAD, PAD]
    assert a["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 0, 0]
    assert a["next_idx"][0, 3] == 7 and a["action_mask"][0, 5:].sum() == 0
    assert a["tokens"][1].tolist()[:8] == [S, _id("o2"), ES, _id("d"), EA, S, _id("o3"), ES]
    assert a["tokens"][2].tolist()[:6] == [S, _id("o3"), ES, _id("u"), EA, EOD]
    assert a["dones"].sum() == 1.0 and a["dones"][2, 5] == 1.0


def test_chains_share_rows_and_a_non_terminal_chain_bootstraps_from_its_next_context():
    first = packing.Chain((_step("o1", "u", -2.0),))
    second = packing.Chain((_step("o2", "d", -1.0),), terminal=False, next_context=(env("o3"),))
    a = packing.chains_to_arrays([first, second], TOK, 16)
    assert a["tokens"].shape == (1, 16)
    assert a["tokens"][0, :14].tolist() == [S, _id("o1"), ES, _id("u"), EA, EOD,
                                            S, _id("o2"), ES, _id("d"), EA, S, _id("o3"), ES]
    assert a["attention_mask"][0, :14].tolist() == [1] * 6 + [2] * 5 + [3] * 3
    assert a["next_idx"][0, 3] == 5 and a["dones"][0, 5] == 1.0
    assert a["next_idx"][0, 9] == 13 and a["dones"][0, 13] == 0.0
    assert packing.chain_return(first) == -2.0


def test_errors_name_the_chain_and_turn():
    long = packing.Chain((_step("o1 o2 o3 o1 o2", "u", -1.0),))
    with pytest.raises(ValueError, match="chain 1, turn 0"):
        packing.chains_to_arrays([packing.Chain((_step("o1", "u", 0.0),)), long], TOK, 8)
    with pytest.raises(ValueError, match="next_context"):
        packing.Chain((_step("o1", "u", 0.0),), terminal=False)
    with pytest.raises(ValueError, match="no chains"):
        packing.chains_to_arrays([], TOK, 8)
    with pytest.raises(ValueError, match="markup"):
        packing.chains_to_arrays([packing.Chain((_step("o1", "u </a>", 0.0),))], TOK, 16)
    with pytest.raises(ValueError, match="reward"):
        _step("o1", "u", float("nan"))


def test_layout_of_zero_one_masks_is_the_plain_causal_one():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.int32)
    causal, positions = trunk_lib.attention_layout(mask)
    plain = jnp.tril(jnp.ones((5, 5), bool))[None] & mask.astype(bool)[:, None, :]
    np.testing.assert_array_equal(causal, plain)
    np.testing.assert_array_equal(positions, jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0))


@pytest.mark.parametrize("trunk", ["gpt2", "llama"])
def test_each_packed_block_computes_what_it_computes_alone(trunk):
    config = gpt2.GPT2Config.tiny(vocab_size=50) if trunk == "gpt2" else llama.LlamaConfig.tiny(vocab_size=50)
    params = trunk_lib.init(config, jax.random.key(0))
    blocks = [[5, 6, 7], [8, 9, 10, 11], [12, 13]]
    tokens = np.array([sum(blocks, []) + [0, 0]], np.int32)
    segments = np.array([[1] * 3 + [2] * 4 + [3] * 2 + [0, 0]], np.int32)
    packed, packed_logits = trunk_lib.forward(params, config, jnp.asarray(tokens), jnp.asarray(segments))
    start = 0
    for block in blocks:
        alone, alone_logits = trunk_lib.forward(params, config, jnp.asarray([block], jnp.int32))
        np.testing.assert_allclose(packed[0, start:start + len(block)], alone[0], atol=1e-5)
        np.testing.assert_allclose(packed_logits[0, start:start + len(block)], alone_logits[0], atol=1e-4)
        start += len(block)
    # Without the segment ids, the later blocks see the earlier ones.
    joined, _ = trunk_lib.forward(params, config, jnp.asarray(tokens), jnp.asarray((segments > 0).astype(np.int32)))
    assert not np.allclose(joined[0, 3:7], packed[0, 3:7], atol=1e-3)
