"""Your own data: ILQL on (prompt, response, reward) records, with only the public API.

    python examples/custom_reward.py                     # built-in toy records (~3 min on a 2-core CPU)
    python examples/custom_reward.py --data mine.jsonl   # one {"prompt", "response", "reward"} per line
    python examples/custom_reward.py --tiny              # seconds: the test's size

`train_ilql` is the part to copy: records -> episodes -> token arrays, BC π_β,
ILQL starting from π_β, then value-guided samples for a few β (β = 0 samples
π_β itself). Everything lands in `--workdir`: `tokenizer/`, `bc/` and `ilql/`
(config.json, metrics.jsonl, TensorBoard events, checkpoints; rerunning the
same command resumes from them) and `samples.json`.

The toy records are support-desk replies that start politely and sometimes
turn rude mid-sentence (reward −1; helpful replies get +1, garbled ones 0), so a good policy
has to learn which tokens lead to the rude endings, which is what ILQL's
token-level Q and V are for.
"""

from __future__ import annotations

import argparse
import json
import random

# [readme: begin] (docs/python_api.md shows this part verbatim; tests/test_examples.py checks that it does)
import os

import jax

from ilql_jax import (BCThenILQL, Episode, GPT2Config, LossConfig, ModelConfig, OptimConfig, SamplerConfig, agent,
                      env, episodes_to_arrays, generate_text, train_bpe_tokenizer, train_and_evaluate)


def train_ilql(records, workdir, *, steps=300, batch_size=32, max_len=64, width=64, layers=2,
               betas=(0.0, 1.0, 4.0, 16.0), n_prompts=64, max_new_tokens=24):
    """`records`: (prompt, response, reward) triples. Trains BC π_β, then ILQL from it, then samples one reply
    per prompt for each β; returns {β: [(prompt, reply), ...]}."""
    episodes = [Episode([env(prompt), agent(response, reward)]) for prompt, response, reward in records]
    tokenizer = train_bpe_tokenizer([text for p, r, _ in records for text in (p, r)], vocab_size=512)
    tokenizer.save(os.path.join(workdir, "tokenizer"))
    arrays = episodes_to_arrays(episodes, tokenizer, max_len)  # tokens, masks, r_t, next(t), dones
    model = ModelConfig(trunk=GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=max_len, n_embd=width,
                                         n_layer=layers, n_head=4, dropout=0.0))
    # 1. π_β: behaviour cloning on every record. 2. ILQL: every trunk starts from π_β; Q and V learn the
    #    rewards. A faster target (polyak_alpha) than the paper's 0.005 carries the end-of-reply reward back
    #    through the reply's tokens in a short run.
    runs = BCThenILQL(model, LossConfig(tau=0.7, alpha_cql=0.1), bc_steps=steps, ilql_steps=steps,
                      bc_optim=OptimConfig(learning_rate=1e-3), ilql_optim=OptimConfig(learning_rate=3e-4),
                      polyak_alpha=0.05, loop=dict(batch_size=batch_size, max_len=max_len))
    train_and_evaluate(runs.bc(), os.path.join(workdir, "bc"), arrays)
    state = train_and_evaluate(runs.ilql(os.path.join(workdir, "bc")), os.path.join(workdir, "ilql"), arrays)
    # 3. Sample with π_β's logits + β·(Q − V); β is traced, so the sweep compiles once.
    prompts = list(dict.fromkeys(prompt for prompt, _, _ in records))[:n_prompts]
    histories = [[env(prompt)] for prompt in prompts]
    sampler = SamplerConfig(max_new_tokens=max_new_tokens)
    return {beta: list(zip(prompts, generate_text(tokenizer, model, state.params, state.target_params, histories,
                                                   jax.random.key(0), beta=beta, sampler_config=sampler)))
            for beta in betas}
# [readme: end]


# --- the toy records and their reward ------------------------------------------

ISSUES = ["my order is late", "the app crashes when I log in", "I was charged twice", "my password reset fails",
          "the screen arrived cracked", "I cannot find my invoice", "the delivery went to the wrong address",
          "my account is locked", "the refund has not arrived", "the coupon code does not work"]
OPENERS = ["Thanks for writing in.", "Sorry to hear that.", "I see.", "Let me look at this.", "Okay."]
HELPFUL = ["I have fixed it and you will get an email today", "I sent you a link that solves this",
           "I refunded the charge and it should show in a few days", "a new one is on its way to you now",
           "I reset it for you, please try again", "you can find it under account settings"]
RUDE = ["read the manual before you write to us", "this is your own fault", "stop wasting my time",
        "we do not care, go away", "figure it out yourself"]


def politeness(reply: str) -> float:
    """The toy reward: −1 for a rude sentence, +1 for a helpful one, 0 for neither (e.g. garbled text)."""
    reply = reply.lower()
    if any(rude in reply for rude in RUDE):
        return -1.0
    return 1.0 if any(helpful.lower() in reply for helpful in HELPFUL) else 0.0


def toy_records(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    """`n` (prompt, response, reward) records; about 40% of the replies turn rude after the opener."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        prompt = f"Hi, {rng.choice(ISSUES)}. Ticket {rng.randrange(1000, 10000)}."
        body = rng.choice(RUDE) if rng.random() < 0.4 else rng.choice(HELPFUL)
        body = f"{body[0].upper()}{body[1:]}." if rng.random() < 0.5 else f"Well, {body}."
        response = f"{rng.choice(OPENERS)} {body}"
        records.append((prompt, response, politeness(response)))
    return records


def read_jsonl(path: str) -> list[tuple[str, str, float]]:
    """Records from a JSONL file: one {"prompt": str, "response": str, "reward": number} per line."""
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                records.append((str(row["prompt"]), str(row["response"]), float(row["reward"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{line_no}: need a JSON object with prompt, response and reward ({e})")
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


TINY = dict(steps=4, batch_size=8, max_len=48, width=32, layers=1, betas=(0.0, 4.0), n_prompts=8,
            max_new_tokens=12)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a JSONL file of prompt/response/reward records (default: toy records)")
    parser.add_argument("--workdir", default="runs/custom_reward")
    parser.add_argument("--steps", type=int, default=300, help="BC steps, then as many ILQL steps")
    parser.add_argument("--tiny", action="store_true", help="a few steps of a tiny model (for tests)")
    args = parser.parse_args(argv)
    records = read_jsonl(args.data) if args.data else toy_records(64 if args.tiny else 4000)
    sizes = TINY if args.tiny else dict(steps=args.steps)
    samples = train_ilql(records, args.workdir, **sizes)

    report = {}
    for beta, pairs in samples.items():
        rows = [{"prompt": p, "reply": r} for p, r in pairs]
        if not args.data:  # the toy reward can judge the samples
            for row in rows:
                row["reward"] = politeness(row["reply"])
            mean = sum(row["reward"] for row in rows) / len(rows)
            print(f"β={beta:g}: mean reward {mean:+.3f} over {len(rows)} replies; e.g. {rows[0]['reply']!r}")
        else:
            print(f"β={beta:g}: e.g. {rows[0]['prompt']!r} -> {rows[0]['reply']!r}")
        report[f"{beta:g}"] = rows
    with open(os.path.join(args.workdir, "samples.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
