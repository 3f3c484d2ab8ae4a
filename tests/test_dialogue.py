"""The ask-to-identify dialogue game: answerer, rewards, token alignment across turns, data, and the smoke run."""

import collections
import json

import numpy as np
import pytest

from experiments.dialogue import catalogue as catalogue_lib
from experiments.dialogue import datasets, env, policies, vocab
from experiments.dialogue.__main__ import main as dialogue_main
from ilql_jax.data import episodes


@pytest.fixture(scope="module")
def cat():
    return catalogue_lib.load_catalogue()


@pytest.fixture(scope="module")
def tok(cat):
    return vocab.word_tokenizer(cat)


def test_catalogue_size_and_distinct_items(cat):
    assert len(cat.names) == 100 and len(cat.attributes) >= 20
    assert len({tuple(row) for row in cat.table}) == 100
    assert cat.has("dog", "fur") and not cat.has("dog", "flies") and cat.has("knife", "sharp")


def test_catalogue_rejects_items_it_cannot_tell_apart(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("name,fur,flies\ndog,1,0\ncat,1,0\n")
    with pytest.raises(ValueError, match=r"c.csv:3: 'cat' has the same attributes as 'dog'"):
        catalogue_lib.load_catalogue(str(path))
    path.write_text("name,fur,flies\ndog,1,2\n")
    with pytest.raises(ValueError, match=r"c.csv:2: values of \['flies'\]"):
        catalogue_lib.load_catalogue(str(path))


# (utterance, target, expected reply): templates and paraphrases the templates never use.
HAND_CHECKED = [
    ("Is it a mammal?", "dog", "yes"),
    ("is it a MAMMAL", "dog", "yes"),
    ("Does it have fur?", "dog", "yes"),
    ("Is it hairy?", "dog", "yes"),  # paraphrase outside the templates
    ("Is it fluffy?", "goldfish", "no"),
    ("Can it fly?", "dog", "no"),
    ("Is it flying?", "eagle", "yes"),
    ("Does it eat meat?", "dog", "yes"),
    ("Is it a carnivore?", "cow", "no"),
    ("Is it a meat eater?", "shark", "yes"),
    ("Is it bigger than a person?", "dog", "no"),
    ("Is it huge?", "elephant", "yes"),
    ("Would it fit in my pocket?", "coin", "yes"),
    ("Does it live in water?", "whale", "yes"),
    ("Can it swim?", "cat", "no"),
    ("Is it made of steel?", "knife", "yes"),
    ("Is it pointy?", "knife", "yes"),
    ("Would you find it in the kitchen?", "knife", "yes"),
    ("Can you eat it?", "knife", "no"),
    ("Is it food?", "apple", "yes"),
    ("Is it alive?", "knife", "no"),
    ("Does it run on batteries?", "phone", "yes"),
    ("Is it a bug?", "ant", "yes"),
    ("Is it stripy?", "zebra", "yes"),
    ("Is it a dog?", "dog", "yes"),
    ("Are you thinking of a cat?", "dog", "no"),
    ("My guess is an owl.", "owl", "yes"),
    ("is it an owl", "eagle", "no"),
]
UNPARSEABLE = [
    "What color is it?",        # no attribute
    "Is it nice?",
    "Is it a big animal?",      # two attributes: not a yes/no question about one
    "Does it fly or swim?",
    "Is it a unicorn?",         # a guess of no catalogue item
    "",
    "asdf qwerty",
]


@pytest.mark.parametrize("text,target,reply", HAND_CHECKED)
def test_answerer_on_hand_checked_questions(cat, text, target, reply):
    assert env.answer(env.parse(text, cat), target, cat) == reply


@pytest.mark.parametrize("text", UNPARSEABLE)
def test_answerer_says_i_dont_know_when_it_cannot_parse(cat, text):
    assert env.parse(text, cat) == env.Parse("unknown")
    assert env.answer(env.parse(text, cat), "dog", cat) == "I don't know"


def test_every_template_and_decoded_utterance_parses_as_meant(cat, tok):
    rng = np.random.default_rng(0)
    for attribute, templates in policies.QUESTION_TEMPLATES.items():
        for text in templates:
            decoded = tok.decode(tok.encode(text))  # what the model's words look like to the answerer
            assert env.parse(text, cat) == env.parse(decoded, cat) == env.Parse("question", attribute), text
    for item in cat.names:
        text = policies.guess_text(item, rng)
        assert env.parse(tok.decode(tok.encode(text)), cat) == env.Parse("guess", item), text
    for text in policies.VAGUE_QUESTIONS:
        assert env.parse(text, cat).kind == "unknown", text
    assert len(tok.encode("I don't know")) == 1 and tok.vocab_size < 256


def test_decoded_ids_keep_their_length(tok):
    # The model's ids become text for the answerer and are encoded again for the next turn's prompt:
    # no id may come back as several (a "<unk>" would), or prompts could outgrow max_len.
    for i in range(tok.vocab_size):
        assert len(tok.encode(tok.decode([i], skip_markup=True))) <= 1, tok.decode([i])


def _play(cat, target, utterances):
    game = env.DialogueGame(target, cat)
    for text in utterances:
        game.step(text)
    return game


def test_alignment_across_answerer_turns(cat, tok):
    # <a> Is it a mammal ? </a> yes </s> Is it a cat ? </a> no </s> Is it a dog ? </a> yes </s> </eod>
    # 0   1  2  3 4      5 6    7   8    9  10 11 12 13 14  15 16   17 18 19 20 21 22  23  24   25
    game = _play(cat, "dog", ["Is it a mammal?", "Is it a cat?", "Is it a dog?"])
    assert game.done and game.won and [t.reply for t in game.turns] == ["yes", "no", "yes"]
    arrays = episodes.episode_to_arrays(game.episode(), tok, 32)
    tokens = arrays["tokens"]
    assert tokens[0] == tok.a_id and tokens[25] == tok.eod_id
    assert [int(i) for i in np.flatnonzero(tokens == tok.end_a_id)] == [6, 14, 22]
    assert [int(i) for i in np.flatnonzero(tokens == tok.end_s_id)] == [8, 16, 24]
    assert tok.decode(tokens[7:8]) == "yes" and tok.decode(tokens[15:16]) == "no"
    # Actions: the states emitting each utterance's words and its </a>; never the answerer's reply.
    expected_actions = list(range(0, 6)) + list(range(8, 14)) + list(range(16, 22))
    assert [int(i) for i in np.flatnonzero(arrays["action_mask"])] == expected_actions
    # The reward sits on the transition that emits </a>: −1, −1 (wrong guess), 0 (correct guess).
    assert arrays["rewards"][[5, 13, 21]].tolist() == [-1.0, -1.0, 0.0]
    assert np.count_nonzero(arrays["rewards"]) == 2
    # Bootstrap from the state after the answerer's reply: the </s> that closes it, which emits
    # the first agent token of the next utterance; the last utterance lands on </eod>.
    assert arrays["next_idx"][[5, 13, 21]].tolist() == [8, 16, 25]
    for close, nxt in ((5, 8), (13, 16)):
        assert tokens[close + 1] == tok.end_a_id and tokens[close + 2] not in (tok.end_s_id, tok.end_a_id)
        assert tokens[nxt] == tok.end_s_id and arrays["action_mask"][nxt] == 1
    assert tok.decode(tokens[9:10]) == "Is" and tok.decode(tokens[17:18]) == "Is"
    assert arrays["next_idx"][[0, 4, 8, 16]].tolist() == [1, 5, 9, 17]  # inside an utterance: t + 1
    assert arrays["dones"].tolist() == [0.0] * 25 + [1.0] + [0.0] * 6


def test_unfinished_dialogue_is_not_terminal(cat, tok):
    arrays = episodes.episode_to_arrays(_play(cat, "dog", ["Is it big?", "Is it nice?"]).episode(), tok, 32)
    assert not arrays["dones"].any()
    # "<a> Is it big ? </a> no </s> Is it nice ? </a> I don't know </s>": the last </a> bootstraps at the end.
    assert arrays["rewards"][[4, 11]].tolist() == [-1.0, -1.0] and arrays["next_idx"][[4, 11]].tolist() == [7, 14]


def test_reward_variants_on_hand_built_cases(cat):
    game = _play(cat, "dog", [
        "Is it an animal?",   # informative: −1 in every variant
        "Is it alive?",       # `animal` again: its answer is known → yn −2
        "Is it a mammal?",    # informative among animals
        "Is it a bird?",      # no mammal is a bird: follows from the answers → yn −2
        "Is it nice?",        # unparseable → conservative −2 (yn: no answer, no penalty)
        "Is it a cat?",       # wrong guess: −1
        "Is it a dog?",       # correct guess: 0
    ])
    rewards = {r: [t.rewards[r] for t in game.turns] for r in env.REWARDS}
    assert rewards["standard"] == [-1, -1, -1, -1, -1, -1, 0]
    assert rewards["yn"] == [-1, -2, -1, -2, -1, -1, 0]
    assert rewards["conservative"] == [-1, -1, -1, -1, -2, -1, 0]
    assert game.total_return("yn") == -8.0 and game.episode("yn").total_return == -8.0
    # A question asked after the candidates narrowed to items that all share the answer.
    narrowed = _play(cat, "zebra", ["Does it have stripes?", "Is it a mammal?", "Is it big?", "Does it have fur?"])
    assert [t.rewards["yn"] for t in narrowed.turns] == [-1, -1, -1, -2]  # tiger and zebra both have fur


def test_dialogue_ends_after_ten_turns(cat):
    game = _play(cat, "dog", ["Is it nice?"] * env.MAX_TURNS)
    assert game.done and not game.won and game.total_return() == -10.0
    with pytest.raises(ValueError, match="over"):
        game.step("Is it a dog?")


def test_checklist_asks_the_narrowest_questions_first_and_leads_the_habit_mix():
    small = catalogue_lib.load_catalogue(catalogue_lib.SMALL_PATH)
    checklist = policies.ChecklistPolicy(small)
    entropy = policies.split_entropy(small.table)
    assert [entropy[small.attribute_index[a]] for a in checklist.order] == sorted(entropy)
    game = env.DialogueGame("cow", small)
    rng = np.random.default_rng(0)
    while not game.done:
        game.step(checklist(tuple(game.turns), rng))
    asked = [t.parse.what for t in game.turns if t.parse.kind == "question"]
    assert asked == list(checklist.order[:len(asked)])  # in its order, whatever the answers
    assert game.turns[-1].parse.kind == "guess"
    # In the habit mix the checklist's opener is the most frequent one, and not the expert's.
    games = datasets.generate_dialogues(small, 400, seed=0, mixtures=datasets.MIXTURES["habit"])
    openers = collections.Counter(g.turns[0].parse.what for g in games)
    assert openers.most_common(1)[0][0] == checklist.order[0]
    assert policies.InfoGainPolicy(small).choose((), rng) != ("question", checklist.order[0])


def test_expert_wins_every_target_and_data_round_trip(cat, tmp_path):
    stats = datasets.evaluate_policy(policies.InfoGainPolicy(cat), cat, 100, seed=3)
    assert stats["success_rate"] == 1.0 and stats["mean_turns"] < 8
    games = datasets.generate_dialogues(cat, 40, seed=1)
    again = datasets.generate_dialogues(cat, 40, seed=1)
    assert [[t.text for t in g.turns] for g in games] == [[t.text for t in g.turns] for g in again]
    assert {t.policy for g in games for t in g.turns} == ({m.opening for m in datasets.DEFAULT_MIXTURES}
                                                          | {m.continuation for m in datasets.DEFAULT_MIXTURES})
    path = str(tmp_path / "d.jsonl")
    datasets.save_dialogues(path, games)
    loaded = datasets.load_dialogues(path, cat)
    assert [g.total_return("yn") for g in loaded] == [g.total_return("yn") for g in games]
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["replies"][0] = "no" if record["replies"][0] == "yes" else "yes"
    lines[1] = json.dumps(record)
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl:2: turn 0"):
        datasets.load_dialogues(path, cat)


@pytest.mark.slow
def test_dialogue_smoke(tmp_path):
    assert dialogue_main(["--preset", "smoke", "--workdir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["seeds"]
    assert [r["method"] for r in rows] == ["info_gain (scripted expert)", "data (behaviour mix)", "bc", "bc_rerank2",
                                           "pbc20", "ilql_beta8", "ilql_utt_rerank2_w1"]
    for r in rows:
        assert set(r) >= {"mean_return", "stderr", "success_rate", "mean_turns", "mean_return_yn", "stderr_yn",
                          "mean_return_conservative", "stderr_conservative", "unparsed_rate", "n_dialogues"}
        assert -10.0 <= r["mean_return"] <= 0.0 and 1.0 <= r["mean_turns"] <= 10.0
        assert r["mean_return_yn"] <= r["mean_return"] and r["mean_return_conservative"] <= r["mean_return"]
    assert rows[0]["success_rate"] == 1.0 and rows[0]["n_dialogues"] == 64 and rows[2]["n_dialogues"] == 64
    # BC is read off the ILQL run's π_β (bc_from_ilql); %BC has its own run on the top 20%.
    assert [r["trained_as"] for r in rows[2:]] == ["ilql", "ilql", "pbc20", "ilql", "ilql_utt"]
    assert rows[3]["rerank_n"] == 2 and rows[5]["beta"] == 8.0
    assert rows[6]["rerank_n"] == 2 and rows[6]["rerank_weight"] == 1.0
    assert not (tmp_path / "bc").exists()
    assert (tmp_path / "results.md").read_text().startswith("| method |")
    for name in ("results.png", "data/train.jsonl", "data/heldout.jsonl", "tokenizer/tokenizer.json",
                 "ilql/metrics.jsonl", "pbc20/config.json", "ilql_utt/metrics.jsonl"):
        assert (tmp_path / name).exists(), name


def test_diagnose_reads_one_seed_of_several(tmp_path, capsys):
    # A seed's directory holds its runs; the data and tokenizer the seeds share sit in the run directory above it.
    from experiments.dialogue import diagnose
    assert dialogue_main(["--preset", "smoke", "--workdir", str(tmp_path), "--seeds", "2",
                          "--methods", '["ilql", "ilql_utt"]']) == 0
    assert not (tmp_path / "seed1" / "tokenizer").exists() and (tmp_path / "tokenizer").exists()
    capsys.readouterr()
    assert diagnose.main([str(tmp_path / "seed1"), "--min_count", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| opener | n | G | log π_β | Q̄_utt | ΣA |")
    assert "token-level V(<a>)" in out and "per-utterance V(<a>)" in out
