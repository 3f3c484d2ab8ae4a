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


def trim_heap() -> bool:
    """Returns the process's free heap memory to the kernel (glibc's `malloc_trim(0)`, which also releases
    free pages inside the heap).

    `tune_malloc` turns automatic trimming off for speed, so the temporaries of
    setup (initialising the state, compiling) would stay resident and, being
    holes the step's larger buffers do not fit in, add to every later peak.
    Called once after setup, the peak RSS then measures the step. Returns False
    where glibc's `malloc_trim` is unavailable.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


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

    `rows=m, k=k` measures an [m, k] × [k, n] product instead, with the right
    operand stored [n, k] (contracted along its minor axis, as the decode step
    reads its vocabulary-major Q̄ kernels): the rate of a skinny matmul that
    streams a weight matrix from memory, which bounds a decode step at m rows.
    """

    def __init__(self, n: int = 2048, dtype=jnp.float32, *, rows: int | None = None, k: int | None = None):
        ka, kb = jax.random.split(jax.random.key(0))
        self.n, self.rows, self.k = n, rows or n, k or n
        self._a = jax.random.normal(ka, (self.rows, self.k), dtype)
        if rows is None:
            self._b = jax.random.normal(kb, (n, n), dtype)
            self._f = jax.jit(jnp.matmul)
        else:
            self._b = jax.random.normal(kb, (n, self.k), dtype)
            self._f = jax.jit(lambda a, b: jnp.einsum("mk,nk->mn", a, b))
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
        return 2 * self.rows * self.k * self.n

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


# --- memory --------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_bytes() -> int:
    """The device's peak allocation on an accelerator; this process's peak RSS on a CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return peak_rss_bytes()


class BandwidthMeter:
    """Best achieved memory read bandwidth (bytes/s) of the default device, measured in this run.

    The denominator of a decode step's memory-bandwidth bound. Several jitted
    kernels that each read one `nbytes` float32 buffer (far beyond the caches)
    once and write next to nothing are timed; the best rate over all of them
    and all `measure()` calls counts, so the bound it gives is the tightest
    this machine showed (a rate measured at a busy moment would loosen it).
    """

    def __init__(self, nbytes: int = 256 << 20):
        cols = 4096
        self.nbytes = nbytes - nbytes % (4 * cols)
        self._x = jnp.ones((self.nbytes // (4 * cols), cols), jnp.float32)
        v = jnp.ones((1, self._x.shape[0]), jnp.float32)
        self._kernels = {"sum": jax.jit(jnp.sum), "matvec": jax.jit(lambda x: v @ x)}
        for f in self._kernels.values():
            jax.block_until_ready(f(self._x))
        self.best_s, self.best_kernel = float("inf"), None

    def measure(self, repeats: int = 3) -> float:
        for name, f in self._kernels.items():
            t = time_fn(lambda: f(self._x), steps=repeats, warmup=0)
            if t["best_s"] < self.best_s:
                self.best_s, self.best_kernel = t["best_s"], name
        return self.bytes_per_s

    @property
    def bytes_per_s(self) -> float:
        return self.nbytes / self.best_s


# --- subprocesses -------------------------------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json_lines(cmd: list[str], *, env: dict | None = None, timeout: float | None = None) -> list[dict]:
    """Runs `cmd`, returns the JSON objects it printed one per line (other lines are ignored).

    Raises RuntimeError with the command's stderr tail when it fails.
    """
    import subprocess
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    out = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def worker_env() -> dict:
    """The environment for a benchmark worker: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Peer:
    """The official PyTorch ILQL, prepared outside this repository (see the peer harness's README).

    `dir` holds `ilql/` (the official tree) and `venv/` (its Python), as the
    harness's setup.sh makes them; the harness scripts (peer_official_step.py,
    peer_official_sample.py) are found in `harness`, by default the first of
    `$PEER_HARNESS`, else the `shared/peer` folder beside the checkout (or one level up) that holds them.
    """

    def __init__(self, dir: str, harness: str | None = None):
        self.dir = os.path.abspath(dir)
        self.tree = os.path.join(self.dir, "ilql")
        self.python = os.path.join(self.dir, "venv", "bin", "python")
        if not os.path.isdir(os.path.join(self.tree, "src")) or not os.access(self.python, os.X_OK):
            raise SystemExit(f"--peer {dir}: expected ilql/src and venv/bin/python there (run the peer harness's "
                             "setup.sh with PEER_DIR pointing at it)")
        candidates = [harness] if harness else [
            os.environ.get("PEER_HARNESS"), os.path.join(REPO_ROOT, "..", "shared", "peer"),
            os.path.join(REPO_ROOT, "..", "..", "shared", "peer")]
        for c in candidates:
            if c and os.path.isfile(os.path.join(c, "peer_official_step.py")):
                self.harness = os.path.abspath(c)
                break
        else:
            raise SystemExit("peer harness scripts not found; pass --peer-harness DIR (the folder holding "
                             "peer_official_step.py) or set PEER_HARNESS")

    def run(self, script: str, args: list[str]) -> list[dict]:
        return run_json_lines([self.python, os.path.join(self.harness, script), "--repo", self.tree, *args])


def alternate(rounds: int, runs: dict[str, Callable[[], Any]]) -> dict[str, list]:
    """Calls each of `runs` once per round, the order reversed every other round; their results per name."""
    out = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(runs[name]())
    return out


# --- synthetic episodes in the official harness's layout -----------------------


class IdTokenizer:
    """Token ids written as text ("17 4 99"); the six markup ids at the top of the vocabulary, in the
    order the official ToxicityTokenizer (and the peer harness's stand-in for it) adds them."""

    def __init__(self, vocab_size: int):
        base = vocab_size - 6
        self.end_a_id, self.a_id, self.eod_id, self.s_id, self.end_s_id, self.pad_id = range(base, base + 6)
        self.content_vocab = base - 1  # as the harness: no id of GPT-2's <|endoftext|> (base - 1)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]


def parse_shapes(parser, text: str, known) -> list[str]:
    """The shapes a comma-separated `--shapes` names; `parser.error` (exit 2) for one not in `known`."""
    shapes = [s for s in text.split(",") if s]
    for s in shapes:
        if s not in known:
            parser.error(f"unknown shape {s!r}; choose from {', '.join(known)}")
    return shapes


def gpt2_shape(shape: str):
    """The benchmarks' GPT-2 shapes, without dropout: "tiny" or "gpt2-small"."""
    from ilql_jax.models import gpt2

    if shape == "tiny":
        return gpt2.GPT2Config.tiny(dropout=0.0)
    if shape == "gpt2-small":
        return gpt2.GPT2Config.gpt2_small(dropout=0.0)
    raise ValueError(f"unknown shape {shape!r}")


def peer_fields(ours: dict, peer_rounds: list[dict]) -> dict:
    """The official code's figures beside ours: its best round, its rounds, the ratios (best over best, median
    over median) and its peak memory; `peer_rounds` are the peer harness's JSON lines, one per round."""
    theirs = max(peer_rounds, key=lambda r: r["tokens_per_s_best"])
    return {
        "peer_tokens_per_s": theirs["tokens_per_s_best"],
        "peer_tokens_per_s_median": theirs["tokens_per_s"],
        "peer_tokens_per_s_rounds": [r["tokens_per_s_best"] for r in peer_rounds],
        "ratio": ours["tokens_per_s"] / theirs["tokens_per_s_best"],
        "ratio_median": ours["tokens_per_s_median"] / theirs["tokens_per_s"],
        "peer_peak_memory_bytes": int(max(r["maxrss_GiB"] for r in peer_rounds) * 2**30),
        "peer_threads": theirs["threads"],
    }


def reddit_like_arrays(vocab_size: int, batch: int, seq_len: int, seed: int = 0, parent_frac: float = 0.5):
    """`batch` Reddit-style episodes `<s> parent </s> comment </a> </eod>` of exactly `seq_len` tokens,
    through `episodes.episodes_to_arrays`: the layout the peer harness times (its make_dataset), with
    the same parent/comment split and rewards drawn from {0, −5, −10}. Random token ids."""
    import numpy as np
    from ilql_jax.data import episodes

    tok = IdTokenizer(vocab_size)
    n_text = seq_len - 4
    parent = max(1, min(n_text - 1, int(round(n_text * parent_frac))))
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(str(i) for i in rng.integers(0, tok.content_vocab, n))
    eps = [episodes.Episode((episodes.env(text(parent)), episodes.agent(text(n_text - parent),
                                                                         float(rng.choice([0.0, -5.0, -10.0])))),
                            terminal=True) for _ in range(batch)]
    return episodes.episodes_to_arrays(eps, tok, seq_len)
