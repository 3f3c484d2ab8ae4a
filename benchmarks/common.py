"""Shared helpers for the benchmarks: FLOP counts, measured peak, timing, output.

Every benchmark prints one JSON object per line (`emit`) and reports its model
FLOP utilisation against a peak measured in the same process (`PeakMeter`), so
numbers are comparable across machines and across (noisy, shared) runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


# --- FLOPs -------------------------------------------------------------------


def transformer_flops_per_token(*, n_layer: int, n_embd: int, padded_vocab_size: int, seq_len: int,
                                with_backward: bool = True) -> dict[str, int]:
    """Model FLOPs per token of a GPT-2 trunk with its tied LM head.

    The standard dense-transformer count (Kaplan et al. 2020; PaLM, appendix B;
    nanoGPT's `estimate_mfu`), with the parameters counted precisely:

    - N_matmul = 12·n_layer·d² + V_pad·d, the weight matrices that take part in a
      matmul: per block attn.c_attn (d×3d), attn.c_proj (d×d), mlp.c_fc (d×4d)
      and mlp.c_proj (4d×d); plus the tied LM head wte (V_pad×d), over the
      *padded* vocabulary since its padded logits are computed too.
      Not counted: the token-embedding lookup (a gather, not a matmul), the
      position embeddings wpe, all biases and layer-norm scales/offsets.
    - Attention: QKᵀ and weights·V cost 2·T·d FLOPs each per token per layer in
      the forward pass, over the full T×T score matrix (the causal mask is
      *not* halved, as in PaLM and nanoGPT): 4·n_layer·T·d per token.
    - Forward = 2·N_matmul + 4·n_layer·T·d; backward = 2 × forward, so
      forward + backward = 6·N_matmul + 12·n_layer·T·d per token.

    Softmax, GELU, layer norm, masking and the loss itself are not counted (not
    matmuls), as usual for MFU.

    Returns {"n_matmul_params", "flops_per_token"}.
    """
    d, t = n_embd, seq_len
    n_matmul = 12 * n_layer * d * d + padded_vocab_size * d
    forward = 2 * n_matmul + 4 * n_layer * t * d
    return {"n_matmul_params": n_matmul, "flops_per_token": 3 * forward if with_backward else forward}


def gpt2_flops_per_token(config, seq_len: int, with_backward: bool = True) -> dict[str, int]:
    """`transformer_flops_per_token` for a `ilql_jax.models.gpt2.GPT2Config`."""
    return transformer_flops_per_token(n_layer=config.n_layer, n_embd=config.n_embd,
                                       padded_vocab_size=config.padded_vocab_size, seq_len=seq_len,
                                       with_backward=with_backward)


# --- process setup -----------------------------------------------------------


def tune_malloc() -> bool:
    """Keeps freed memory in the process instead of returning it to the kernel.

    XLA:CPU mallocs its temporaries and outputs on every call. glibc serves
    blocks above 32 MiB (the logits alone are 200 MB at GPT-2 shape) with a
    fresh mmap, unmaps them on free and trims the heap top, so every step
    page-faults much of its working set back in: at GPT-2-small shape here
    ~400k minor faults (~1.7 GB) a step. Measured effect on the trunk step: on
    an idle machine none beyond noise (6.55 vs 6.59 s); with other processes
    competing for the cores, ~10% less CPU time (10.7 vs 11.8 CPU-s). Same as
    running under `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>
    MALLOC_ARENA_MAX=1`.

    Must run before the first JAX computation (so XLA's threads share the
    tuned main arena). Process-wide and irreversible; the heap then keeps its
    high-water mark. Returns False where glibc's `mallopt` is unavailable.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8
    ok = mallopt(m_arena_max, 1)          # one arena: large blocks of worker threads come from the heap too
    ok &= mallopt(m_mmap_max, 0)          # never mmap single blocks
    ok &= mallopt(m_trim_threshold, -1)   # never give the heap top back (-1 reads as SIZE_MAX)
    ok &= mallopt(m_top_pad, 64 << 20)    # grow the heap in 64 MiB steps
    return bool(ok)


def device_info() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return f"{dev.platform}:{getattr(dev, 'device_kind', '')}"


# --- timing ------------------------------------------------------------------


def time_fn(fn: Callable[[], Any], *, steps: int, warmup: int = 1,
            between: Callable[[], Any] | None = None) -> dict[str, float]:
    """Runs `fn` `warmup` times, then `steps` timed times, each waited on with
    `jax.block_until_ready`. `between` (untimed) runs before each timed call.
    Returns best / median / mean wall seconds, the count, and `cpu_s`, the least
    process CPU time (user + system, all threads) one call took: on a CPU
    backend a contention-insensitive measure of the work done."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times, cpu = [], []
    for _ in range(steps):
        if between is not None:
            between()
        c0, t0 = _cpu_s(), time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
    return {"best_s": min(times), "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "n": len(times), "cpu_s": min(cpu)}


def _cpu_s() -> float:
    return time.process_time()  # user + system, all threads


class PeakMeter:
    """Best achieved GFLOP/s of a jitted float32 n×n×n matmul on the default device.

    The denominator of every MFU reported here is an *achieved* peak, measured in
    the same run rather than taken from a datasheet. `measure()` adds `repeats`
    timed runs; call it between the timed steps of a benchmark so that, on a
    shared machine, the peak gets as many chances to catch a quiet moment as the
    model does (a peak taken only at a busy moment would inflate MFU). `gflops`
    is the best over all runs so far.
    """

    def __init__(self, n: int = 2048, dtype=jnp.float32):
        ka, kb = jax.random.split(jax.random.key(0))
        self.n = n
        self._a = jax.random.normal(ka, (n, n), dtype)
        self._b = jax.random.normal(kb, (n, n), dtype)
        self._f = jax.jit(jnp.matmul)
        jax.block_until_ready(self._f(self._a, self._b))
        self.best_s = float("inf")
        self.best_cpu_s = float("inf")
        self.runs = 0

    def measure(self, repeats: int = 3) -> float:
        t = time_fn(lambda: self._f(self._a, self._b), steps=repeats, warmup=1)
        self.best_s = min(self.best_s, t["best_s"])
        self.best_cpu_s = min(self.best_cpu_s, t["cpu_s"])
        self.runs += repeats
        return self.gflops

    @property
    def flops(self) -> int:
        return 2 * self.n ** 3

    @property
    def gflops(self) -> float:
        """Best wall-clock rate: the MFU denominator."""
        return self.flops / self.best_s / 1e9

    @property
    def gflops_per_cpu_s(self) -> float:
        """Best rate per second of process CPU time (see `time_fn`'s `cpu_s`)."""
        return self.flops / self.best_cpu_s / 1e9


class OtherLoad:
    """CPU share taken by *other* processes while in a `with` block (Linux only).

    `fraction` = (busy CPU time of the whole machine − this process's CPU time)
    / total CPU time, in [0, 1]; None where /proc is unavailable. On a shared
    machine, timings with a high fraction are pessimistic.
    """

    def __enter__(self):
        self._t0 = self._snap()
        return self

    def __exit__(self, *exc):
        t1 = self._snap()
        if self._t0 is None or t1 is None:
            self.fraction = None
            return
        total, idle, own = (b - a for a, b in zip(self._t0, t1))
        own_ticks = own * os.sysconf("SC_CLK_TCK")
        self.fraction = min(1.0, max(0.0, (total - idle - own_ticks) / total)) if total > 0 else None

    @staticmethod
    def _snap():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return None
        t = os.times()
        return sum(v[:8]), v[3] + v[4], t.user + t.system


def emit(record: dict[str, Any]) -> None:
    """Prints `record` as one JSON line (floats to 4 significant digits)."""
    out = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in record.items()}
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
