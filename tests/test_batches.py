"""Seeded, resumable batch iteration and %BC selection."""

import itertools

import numpy as np
import pytest

from ilql_jax.data.batch import DTYPES, Batch
from ilql_jax.data.batches import (
    BatchIterator,
    batches,
    epoch_permutation,
    top_fraction,
    top_fraction_indices,
)
from ilql_jax.data.episodes import Episode, agent, env

N, T = 23, 7


def make_arrays(n=N, t=T):
    ids = np.arange(n)
    return {
        "tokens": (ids[:, None] * 100 + np.arange(t)[None, :]).astype(np.int32),
        "action_mask": np.ones((n, t), np.float32),
        "example_id": ids.astype(np.int64),
    }


def take(it, k):
    return list(itertools.islice(it, k))


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_static_shapes_and_dtypes_forever():
    arrays = make_arrays()
    for batch in take(batches(arrays, 5, seed=0), 30):  # several epochs
        assert batch["tokens"].shape == (5, T) and batch["tokens"].dtype == np.int32
        assert batch["action_mask"].shape == (5, T) and batch["action_mask"].dtype == np.float32
        assert batch["example_id"].shape == (5,)
        # Rows stay aligned across keys.
        np.testing.assert_array_equal(batch["tokens"][:, 0], batch["example_id"] * 100)


def test_same_seed_same_batches_different_seed_different():
    arrays = make_arrays()
    a = take(batches(arrays, 4, seed=3), 12)
    b = take(batches(arrays, 4, seed=3), 12)
    c = take(batches(arrays, 4, seed=4), 12)
    assert_same(a, b)
    ids_a = np.stack([x["example_id"] for x in a])
    ids_c = np.stack([x["example_id"] for x in c])
    assert not np.array_equal(ids_a, ids_c)


@pytest.mark.parametrize("k", [0, 1, 4, 5, 6, 17])
def test_resume_from_step_k_equals_straight_run(k):
    arrays = make_arrays()
    straight = take(batches(arrays, 4, seed=11), k + 10)
    resumed = take(batches(arrays, 4, seed=11, start_step=k), 10)
    assert_same(straight[k:], resumed)
    # Through state()/restore as a checkpoint would.
    it = BatchIterator(arrays, 4, seed=11)
    take(it, k)
    saved = it.state()
    assert saved == {"step": k, "seed": 11}
    fresh = BatchIterator(arrays, 4, seed=11)
    fresh.restore(saved)
    assert_same(straight[k:], take(fresh, 10))


def test_every_example_once_per_epoch():
    arrays = make_arrays()
    it = BatchIterator(arrays, 4, seed=5)
    spe = it.steps_per_epoch
    assert spe == N // 4
    epochs = []
    for _ in range(3):
        ids = np.concatenate([b["example_id"] for b in take(it, spe)])
        # drop_remainder: N % B examples sit out each epoch, none repeats.
        assert len(ids) == spe * 4 == len(set(ids.tolist()))
        epochs.append(ids)
    # Each epoch is a fresh permutation.
    assert not np.array_equal(epochs[0], epochs[1])
    # With B dividing N, an epoch covers every example exactly once.
    arrays = make_arrays(n=24)
    it = BatchIterator(arrays, 6, seed=5)
    for _ in range(2):
        ids = np.concatenate([b["example_id"] for b in take(it, it.steps_per_epoch)])
        assert sorted(ids.tolist()) == list(range(24))


def test_batch_at_is_pure_in_seed_and_step():
    arrays = make_arrays()
    it = BatchIterator(arrays, 4, seed=2)
    later = it.batch_at(13)
    take(it, 3)
    assert_same([later], [it.batch_at(13)])
    assert_same([later], [BatchIterator(arrays, 4, seed=2).batch_at(13)])
    perm = epoch_permutation(N, 2, 13 // it.steps_per_epoch)
    i = 13 % it.steps_per_epoch
    np.testing.assert_array_equal(later["example_id"], perm[i * 4 : (i + 1) * 4])


def test_process_slices_tile_the_global_batch():
    arrays = make_arrays()
    global_it = BatchIterator(arrays, 6, seed=9)
    locals_ = [BatchIterator(arrays, 6, seed=9, process_index=p, process_count=3) for p in range(3)]
    for step in range(8):
        parts = [it.batch_at(step)["example_id"] for it in locals_]
        assert all(len(p) == 2 for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), global_it.batch_at(step)["example_id"])


def test_batch_validation():
    arrays = make_arrays()
    with pytest.raises(ValueError, match="exceeds the number of examples"):
        BatchIterator(arrays, N + 1, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(arrays, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        BatchIterator(arrays, 2, seed=-1)
    with pytest.raises(ValueError, match="start_step"):
        BatchIterator(arrays, 2, seed=0, start_step=-1)
    with pytest.raises(ValueError, match="leading"):
        BatchIterator({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, 2, seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        BatchIterator({}, 2, seed=0)
    with pytest.raises(ValueError, match="divisible"):
        BatchIterator(arrays, 5, seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        BatchIterator(arrays, 4, seed=0, process_index=2, process_count=2)
    it = BatchIterator(arrays, 4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        it.restore({"step": 3, "seed": 1})


# ---------------------------------------------------------------------------
# %BC selection
# ---------------------------------------------------------------------------


def ep(ret):
    return Episode((env("p"), agent("x", ret)))


def test_top_fraction_selects_highest_returns_in_data_order():
    eps = [ep(r) for r in [-3.0, 0.0, -1.0, -6.0, -2.0]]
    assert top_fraction(eps, 0.4) == [eps[1], eps[2]]
    assert top_fraction(eps, 1.0) == eps
    # ceil(0.1 * 5) = 1: always at least one episode.
    assert top_fraction(eps, 0.1) == [eps[1]]
    # Multi-utterance returns are summed.
    two = Episode((agent("a", -1.0), env("b"), agent("c", 0.5)))
    assert top_fraction([ep(-1.0), two], 0.5) == [two]


def test_top_fraction_ties_are_deterministic():
    returns = [-1.0, 0.0, -1.0, 0.0, -1.0, 0.0]
    # Three zeros tie for the top half; among -1s, earlier ones win a cut.
    assert top_fraction_indices(returns, 0.5).tolist() == [1, 3, 5]
    assert top_fraction_indices(returns, 4 / 6).tolist() == [0, 1, 3, 5]
    # Float slack: 0.3 * 10 is 3.0000000000000004, still 3 episodes.
    assert len(top_fraction_indices(np.arange(10.0), 0.3)) == 3


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), "0.5", True])
def test_top_fraction_validation(bad):
    with pytest.raises(ValueError, match="fraction"):
        top_fraction([ep(0.0)], bad)


def test_top_fraction_empty():
    with pytest.raises(ValueError, match="no episodes"):
        top_fraction([], 0.5)


def test_a_batch_iterates_as_batches_of_the_rows_its_dict_gives():
    arrays = {name: (np.arange(N * T).reshape(N, T) % 5).astype(dtype) for name, dtype in DTYPES._asdict().items()}
    as_dict, as_batch = (BatchIterator(a, 4, seed=2).batch_at(9) for a in (arrays, Batch(**arrays)))
    assert isinstance(as_dict, dict) and isinstance(as_batch, Batch)
    assert_same([as_dict], [as_batch._asdict()])
    assert Batch.of(as_batch) is as_batch
    assert all(a is as_dict[name] for name, a in zip(Batch._fields, Batch.of({**as_dict, "other": 0})))
    with pytest.raises(KeyError, match="no field 'dones'"):
        Batch.of({k: v for k, v in arrays.items() if k != "dones"})
