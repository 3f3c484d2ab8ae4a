"""The trunk interface: what the heads, losses, train step, sampler, sharding and memory plan use of a
language-model trunk, without knowing which architecture is inside.

A trunk is a config (a frozen dataclass) and a module of pure functions of a
parameter `nnx.State`, dispatched on the config's type:

- `init(config, key)` → params; `abstract_params(config)` → their shapes (no allocation),
- `forward(params, config, tokens, attention_mask, dropout_key=, with_logits=)` → (hidden, logits);
  with `start=` and `residual=`, blocks start .. n_layer − 1 on a given residual stream,
- `residual_stream(params, config, tokens, attention_mask, stop=)` → the residual stream leaving
  block stop − 1 (a frozen bottom's output, shared by several trunks: models/partial.py),
- `prefill(params, config, tokens, attention_mask, cache_len, with_logits=)` → (hidden, logits, cache),
- `decode_step(params, config, cache, token, with_logits=)` → (hidden, logits, cache); both also over
  a range of blocks (`start=`, `stop=`, `residual=`, `final=`: a shared bottom's cache and each top's),
- `lm_logits(params, config, hidden, mask_padded=)` → logits,
- `init_cache(config, batch_size, cache_len)` → a `KVCache` (a pytree),
- `init_adapters(config, lora, key)` → fresh LoRA adapters; `forward`, `residual_stream` and
  `abstract_params` take `lora=` (a `lora.LoRASpec`) for parameters that carry them.

Hidden states are the final-norm outputs in float32, logits float32 over the
vocabulary padded to a multiple of 128 (padded entries -inf), and every
parameter carries logical axis names (`vocab`, `embed`, `heads`, `mlp`) that
`sharding.py` maps onto the mesh. Every config has `vocab_size`,
`padded_vocab_size`, `n_positions`, `n_embd`, `n_layer`, `dtype`,
`param_dtype`, `dropout` and `remat`; every implementation module names its blocks'
container (`BLOCKS`), what follows the last block (`FINAL`) and the projections LoRA
can adapt (`LORA_PROJECTIONS`).

Implementations: `gpt2` (`GPT2Config`) and `llama` (`LlamaConfig`: Llama
2/3, TinyLlama, SmolLM2, Qwen2).
"""

from __future__ import annotations

from types import ModuleType

from ilql_jax.models import gpt2, llama
from ilql_jax.models.gpt2 import KVCache, mask_padded_vocab  # noqa: F401  (part of the interface)

TrunkConfig = gpt2.GPT2Config | llama.LlamaConfig
Params = gpt2.Params

_IMPLEMENTATIONS: tuple[tuple[type, ModuleType], ...] = ((llama.LlamaConfig, llama), (gpt2.GPT2Config, gpt2))


def implementation(config: TrunkConfig) -> ModuleType:
    """The module implementing `config`'s architecture."""
    for cls, module in _IMPLEMENTATIONS:
        if isinstance(config, cls):
            return module
    raise TypeError(f"not a trunk config: {type(config).__name__} (expected GPT2Config or LlamaConfig)")


def init(config: TrunkConfig, key):
    return implementation(config).init(config, key)


def abstract_params(config: TrunkConfig, lora=None):
    if lora is None:
        return implementation(config).abstract_params(config)
    return implementation(config).abstract_params(config, lora)


def init_adapters(config: TrunkConfig, lora, key):
    return implementation(config).init_adapters(config, lora, key)


def forward(params, config: TrunkConfig, tokens, attention_mask=None, *, dropout_key=None, with_logits=True,
            lora=None, start: int = 0, residual=None):
    if lora is None and residual is None and start == 0:
        return implementation(config).forward(params, config, tokens, attention_mask, dropout_key=dropout_key,
                                              with_logits=with_logits)
    return implementation(config).forward(params, config, tokens, attention_mask, dropout_key=dropout_key,
                                          with_logits=with_logits, lora=lora, start=start, residual=residual)


def residual_stream(params, config: TrunkConfig, tokens, attention_mask=None, *, stop: int, dropout_key=None,
                    lora=None):
    return implementation(config).residual_stream(params, config, tokens, attention_mask, stop=stop,
                                                  dropout_key=dropout_key, lora=lora)


def prefill(params, config: TrunkConfig, tokens, attention_mask, cache_len: int, *, with_logits=True, **blocks):
    """`blocks`: `start`, `stop`, `residual`, `final`: a range of blocks (see `gpt2.prefill`)."""
    return implementation(config).prefill(params, config, tokens, attention_mask, cache_len, with_logits=with_logits,
                                          **blocks)


def decode_step(params, config: TrunkConfig, cache, token, *, with_logits=True, **blocks):
    return implementation(config).decode_step(params, config, cache, token, with_logits=with_logits, **blocks)


def lm_logits(params, config: TrunkConfig, hidden, *, mask_padded=True):
    return implementation(config).lm_logits(params, config, hidden, mask_padded=mask_padded)


def init_cache(config: TrunkConfig, batch_size: int, cache_len: int):
    return implementation(config).init_cache(config, batch_size, cache_len)


def num_params(params) -> int:
    return gpt2.num_params(params)
