"""Shared fixtures. Tests run on CPU with no network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc
import tempfile

import jax
import pytest

# Tests compile many identical small programs; a per-run persistent cache shares them across tests.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "ilql_jax_test_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Frees each module's compiled programs when it ends. One process runs the whole suite (`python -m pytest`),
    and every XLA:CPU executable kept alive holds memory mappings of its own (test_sampler alone left 6,875;
    the kernel allows 65,530 a process, vm.max_map_count). Kept for the whole suite, compiling or loading a
    program in test_utterance aborted or segfaulted (CI, exit 139); cleared per module, the count stays near
    1,700 and the serial suite passes."""
    yield
    jax.clear_caches()
    gc.collect()
