"""`ilql-jax export`: π_β as a Hugging Face GPT-2 directory, the value networks as safetensors (`ilql_jax.export`).

Everything is written into a temporary directory beside `out`, which is then
renamed to `out`: a kill leaves the old `out` (or none), never half of one.
"""

from __future__ import annotations

import os
import shutil

from ilql_jax.cli.options import ExportOptions
from ilql_jax.config import ConfigError

__all__ = ["export"]


def export(opts: ExportOptions) -> str:
    """Runs `ilql-jax export`; returns the output directory."""
    from ilql_jax import export as export_lib
    from ilql_jax.cli.workdir import load_run
    from ilql_jax.models import hf_import

    out = os.path.abspath(opts.out)
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)) and not opts.overwrite:
        raise ConfigError(f"--out {opts.out} exists and is not empty; pass --overwrite true to replace it")
    run = load_run(opts.workdir)
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_lib.export_run(tmp, run.tokenizer, run.config.step.model, run.state.params, run.state.target_params,
                              int(run.state.step))
    except ValueError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"{opts.workdir}: {e}") from e
    old = None
    if os.path.exists(out):
        old = f"{tmp}.old"
        os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    architecture = hf_import.config_to_hf(run.config.step.model.trunk)["architectures"][0]
    print(f"exported step {int(run.state.step)} of {opts.workdir} to {opts.out}: π_β (transformers {architecture}: "
          f"model.safetensors, config.json, tokenizer files) and the value networks ({export_lib.VALUES_FILE}, "
          f"{export_lib.VALUES_MANIFEST})")
    return out
