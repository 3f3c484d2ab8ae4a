"""Shared fixtures. Tests run on CPU with no network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile

import jax

# Tests compile many identical small programs; a per-run persistent cache shares them across tests.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "ilql_jax_test_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
