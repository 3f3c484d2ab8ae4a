"""Where a compiled program's time goes, op by op, on the CPU.

XLA:CPU runs a program as a sequence of thunks, one per HLO instruction of the optimised module (a dot, a
fusion, a copy…), and under `jax.profiler.trace` it records each thunk it runs with its instruction's name
(the event's `hlo_op`). `profile` runs a call under the tracer, reads the trace back with
`jax.profiler.ProfileData` (no TensorBoard needed) and sums the thunks' time by instruction; `op_kinds` reads
the compiled module's text to say what each instruction is:

- "matmul": a dot or convolution, or a fusion that contains one (XLA:CPU fuses a dot with its elementwise
  neighbours, e.g. the YNNPACK fusions `ynn_fusion`);
- "data movement": copies, transposes and fusions of nothing but layout ops (reshape, broadcast, slice…);
- "reduction": a reduce or a fusion holding one (softmax and logsumexp sums, layer-norm statistics);
- "elementwise": everything else (fused arithmetic, the optimizer's update, comparisons).

Thunks of one program can run at once on several cores, so the summed times can exceed the wall time; the
shares are of the summed time.
"""

from __future__ import annotations

import collections
import functools
import glob
import re
import tempfile
import time
from typing import Any, Callable

import jax
from jax.profiler import ProfileData

KINDS = ("matmul", "data movement", "reduction", "elementwise")
PASSES = ("forward", "backward", "rest")
_MATMUL_OPS = {"dot", "convolution"}
_LAYOUT_OPS = {"copy", "transpose", "bitcast", "parameter", "reshape", "broadcast", "slice", "concatenate",
               "pad", "dynamic-slice", "dynamic-update-slice", "constant", "tuple", "get-tuple-element"}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*?\s([a-z][a-z\-]*)\(")
_SHAPE_AND_SOURCE = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"")


def _computations(hlo_text: str) -> dict[str, list[tuple[str, str, list[str]]]]:
    """computation name → its instructions as (name, opcode, computations it calls)."""
    comps: dict[str, list[tuple[str, str, list[str]]]] = {}
    current = None
    for line in hlo_text.splitlines():
        if not line.startswith(" ") and (m := _COMPUTATION.match(line)):
            current = comps.setdefault(m.group(1), [])
        elif current is not None and (m := _INSTRUCTION.match(line)):
            current.append((m.group(1), m.group(2), re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)))
    return comps


def op_kinds(hlo_text: str) -> dict[str, str]:
    """Each instruction of a compiled module's text (`compiled.as_text()`) → its kind (see the module doc)."""
    comps = _computations(hlo_text)

    @functools.cache
    def opcodes(computation: str) -> frozenset[str]:
        """Every opcode in a computation and the computations it calls."""
        return frozenset().union(*({op}.union(*map(opcodes, calls)) for _, op, calls in comps.get(computation, [])))

    kinds = {}
    for instructions in comps.values():
        for name, op, calls in instructions:
            inner = {op}.union(*map(opcodes, calls)) - {"fusion"}
            if inner & _MATMUL_OPS or (op == "custom-call" and "matmul" in name):
                kinds[name] = "matmul"
            elif inner <= _LAYOUT_OPS:
                kinds[name] = "data movement"
            elif "reduce" in inner or "reduce-window" in inner:
                kinds[name] = "reduction"
            else:
                kinds[name] = "elementwise"
    return kinds


def pass_of(source: str) -> str:
    """"backward" for an op JAX made by transposing a linearised one, "forward" for a linearised one (the
    loss's forward inside a gradient), else "rest" (the optimizer, the target update, the metrics)."""
    return "backward" if "transpose(" in source else "forward" if "jvp(" in source else "rest"


def op_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Each instruction → (its result's shape, the JAX operation it came from: the last two parts of its
    `op_name`, where `transpose(jvp(…))` marks the backward pass)."""
    return {m.group(1): (m.group(2).split("{")[0], "/".join(m.group(3).split("/")[-2:]))
            for line in hlo_text.splitlines() if (m := _SHAPE_AND_SOURCE.match(line))}


def thunk_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
    """From a trace written by `jax.profiler.trace(trace_dir)`: nanoseconds and calls per HLO instruction."""
    ns, calls = collections.Counter(), collections.Counter()
    for path in glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True):
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                for event in line.events:
                    if "hlo_op" in dict(event.stats):
                        ns[event.name] += event.duration_ns
                        calls[event.name] += 1
    return ns, calls


def profile(fn: Callable[[], Any], hlo_text: str, *, top: int = 8) -> dict[str, Any]:
    """Runs `fn` (one call of the compiled program whose text is `hlo_text`, already warm) under the tracer.

    Returns `op_s` (summed thunk seconds; above `traced_call_s`, the traced call's wall time, where thunks
    ran at once), `op_share` (kind → share of `op_s`, every kind of `KINDS`), `op_share_by_pass` (the same
    split by `pass_of`) and `top_ops` (the `top` instructions that took longest: name, kind, ms, calls,
    result shape and source)."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            wall = time.perf_counter() - t0
        ns, calls = thunk_times(trace_dir)
    kinds, sources = op_kinds(hlo_text), op_sources(hlo_text)
    by_kind = collections.Counter({kind: 0 for kind in KINDS})
    by_pass = collections.Counter({p: 0 for p in PASSES})
    for name, t in ns.items():
        by_kind[kinds.get(name, "elementwise")] += t
        by_pass[pass_of(sources.get(name, ("", ""))[1])] += t
    total = sum(ns.values()) or 1
    return {"op_s": total / 1e9, "traced_call_s": wall,
            "op_share": {k: by_kind[k] / total for k in KINDS},
            "op_share_by_pass": {p: by_pass[p] / total for p in PASSES},
            "top_ops": [{"op": name, "kind": kinds.get(name, "elementwise"), "ms": round(t / 1e6, 1),
                         "calls": calls[name], "shape": sources.get(name, ("", ""))[0],
                         "source": sources.get(name, ("", ""))[1]}
                        for name, t in ns.most_common(top)]}
