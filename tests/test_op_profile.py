"""benchmarks/op_profile.py: XLA:CPU's per-thunk trace read back, each instruction's kind and pass from the
compiled text, and the `--profile` fields of the train step and sampler benchmarks (one line when `--worker`
is missing)."""

import re

import jax
import jax.numpy as jnp
import pytest

from benchmarks import op_profile, train_step


def _grad_program():
    def loss(w, x):
        return jnp.sum(jax.nn.log_softmax(jnp.tanh(x @ w), axis=-1) ** 2)
    args = (jnp.ones((64, 96)), jnp.ones((128, 64)))
    return jax.jit(jax.grad(loss)).lower(*args).compile(), args


def test_kinds_and_passes_read_off_the_compiled_text():
    compiled, _ = _grad_program()
    text = compiled.as_text()
    kinds, sources = op_profile.op_kinds(text), op_profile.op_sources(text)
    # The forward product and the weight gradient are matmuls; the backward one comes from a transpose.
    dots = [name for name, kind in kinds.items() if kind == "matmul"]
    assert len(dots) >= 2
    assert {op_profile.pass_of(sources[name][1]) for name in dots if name in sources} == {"forward", "backward"}
    assert "reduction" in kinds.values() and "elementwise" in kinds.values()
    assert op_profile.pass_of("transpose(jvp(...i,io->...o))/dot_general") == "backward"
    assert op_profile.pass_of("jvp(...i,io->...o)/dot_general") == "forward"
    assert op_profile.pass_of("mul") == "rest"


def _entry_kinds(fn, *args) -> list[str]:
    """The kinds of the instructions a compiled program runs (its entry computation's)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    kinds = op_profile.op_kinds(text)
    entry = text[text.index("ENTRY"):]
    return [kinds[name] for name in re.findall(r"^\s+(?:ROOT )?%?([\w.\-]+) = ", entry, re.M)]


def test_a_fusion_of_layout_ops_alone_is_data_movement():
    x = jnp.ones((64, 32))
    # The program's one fusion: a transposed copy, concatenated (its parameter is data movement too).
    assert set(_entry_kinds(lambda x: jnp.concatenate([x.T, x.T]), x)) == {"data movement"}
    # With arithmetic inside, the same fusion is elementwise.
    assert "elementwise" in _entry_kinds(lambda x: jnp.concatenate([x.T * 2, x.T]), x)


def test_a_traced_call_is_split_by_kind_and_pass():
    compiled, args = _grad_program()
    jax.block_until_ready(compiled(*args))
    out = op_profile.profile(lambda: compiled(*args), compiled.as_text(), top=3)
    assert out["op_s"] > 0 and out["traced_call_s"] > 0
    assert set(out["op_share"]) == set(op_profile.KINDS) and set(out["op_share_by_pass"]) == set(op_profile.PASSES)
    assert sum(out["op_share"].values()) == pytest.approx(1.0)
    assert sum(out["op_share_by_pass"].values()) == pytest.approx(1.0)
    assert out["op_share"]["matmul"] > 0 and out["op_share_by_pass"]["backward"] > 0
    assert 1 <= len(out["top_ops"]) <= 3
    assert all(op["op"] in compiled.as_text() and op["ms"] >= 0 and op["calls"] >= 1 for op in out["top_ops"])


def test_train_step_worker_reports_its_profile():
    rec = train_step.worker("tiny", steps=1, mode="time", tune_malloc=False, profile=True)
    assert rec["op_s"] > 0 and rec["op_share"]["matmul"] > 0
    assert rec["op_share_by_pass"]["forward"] > 0 and rec["op_share_by_pass"]["backward"] > 0
    assert rec["top_ops"] and all(op["kind"] in op_profile.KINDS for op in rec["top_ops"])


def test_sampler_worker_reports_its_profile():
    from benchmarks import sampler as bench

    rec = bench.worker("tiny-llama", 1, False, batch=2, new_tokens=3, profile=True)
    assert rec["op_s"] > 0 and rec["op_share"]["matmul"] > 0
    assert rec["op_share_by_pass"]["rest"] == pytest.approx(1.0)  # decoding has no gradient


@pytest.mark.parametrize("module", [train_step, "sampler"])
def test_profile_needs_a_worker(module, capsys):
    if module == "sampler":
        from benchmarks import sampler as module
    with pytest.raises(SystemExit) as exit_:
        module.main(["--profile"])
    assert exit_.value.code == 2 and "--profile traces one worker" in capsys.readouterr().err


def test_parts_needs_a_worker(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_step.main(["--parts"])
    assert exit_.value.code == 2 and "--parts times one worker" in capsys.readouterr().err
