"""The trunk interface: what the heads, losses, train step, sampler, sharding and memory plan use of a
language-model trunk, written once for every architecture.

A trunk is a config (a frozen dataclass) and pure functions of a parameter `nnx.State`:

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
`sharding.py` maps onto the mesh. Prompts may be left-padded and ragged:
position ids count real tokens only and padded keys are masked, so a
left-padded prompt decodes exactly like the same prompt unpadded. A training
row may pack several independent sequences, told apart by segment ids in the
attention mask (`attention_layout`).

The architectures (`gpt2`: `GPT2Config`; `llama`: `LlamaConfig`, for Llama 2/3,
TinyLlama, SmolLM2, Qwen2) give their modules and what is their own: `MODEL`, the
nnx module, with the hooks `embed`, `block_inputs`, `final_norm` and `logits`
(unmasked) and a list of blocks `BLOCKS` called as `block(x, *block_inputs, mask,
kv_cache, cache_index, rngs=)`; what follows the last block (`FINAL`); the
projections LoRA can adapt (`LORA_PROJECTIONS`); the parameters with a padded
vocabulary axis (`VOCAB_PARAMS`); and `kv_heads(config)`.
"""

from __future__ import annotations

import functools
from types import ModuleType

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from ilql_jax.configs import GPT2Config, LlamaConfig
from ilql_jax.models import gpt2, llama
from ilql_jax.models import lora as lora_lib
from ilql_jax.models.layers import mask_padded_vocab, shard_batch

Array = jax.Array
Params = nnx.State
TrunkConfig = GPT2Config | LlamaConfig

_IMPLEMENTATIONS: tuple[tuple[type, ModuleType], ...] = ((LlamaConfig, llama), (GPT2Config, gpt2))


def implementation(config: TrunkConfig) -> ModuleType:
    """The module of `config`'s architecture."""
    for cls, module in _IMPLEMENTATIONS:
        if isinstance(config, cls):
            return module
    raise TypeError(f"not a trunk config: {type(config).__name__} (expected GPT2Config or LlamaConfig)")


def _module(config: TrunkConfig, rngs: nnx.Rngs, lora: lora_lib.LoRASpec | None = None) -> nnx.Module:
    return implementation(config).MODEL(config, rngs=rngs, lora=lora)


def init(config: TrunkConfig, key: Array) -> Params:
    """Random parameters, initialised as the architecture's Hugging Face model initialises them (see its
    `MODEL`). Parameters of the padded vocabulary (embedding rows, untied LM-head columns) are zero: no
    token id reaches them and their logits are masked, so they stay zero and export drops nothing."""
    params = nnx.state(_module(config, nnx.Rngs(params=key)), nnx.Param)
    real = jnp.arange(config.padded_vocab_size) < config.vocab_size
    for (owner, name), axis in implementation(config).VOCAB_PARAMS:
        if owner in params:  # an untied LM head exists only when untied
            leaf = params[owner][name]
            leaf.value = jnp.where(jnp.expand_dims(real, 1 - axis), leaf.value, 0)
    return params


@functools.lru_cache(maxsize=None)
def graphdef(config: TrunkConfig, lora: lora_lib.LoRASpec | None = None) -> nnx.GraphDef:
    """The (static) graph definition for a config (with adapters where `lora` says); built abstractly, no FLOPs."""
    gdef, _ = nnx.split(nnx.eval_shape(lambda: _module(config, nnx.Rngs(0), lora)))
    return gdef


def abstract_params(config: TrunkConfig, lora: lora_lib.LoRASpec | None = None) -> Params:
    """Parameter shapes and dtypes (with their logical axis metadata), no allocation; with `lora`, the
    adapters' too."""
    return nnx.state(nnx.eval_shape(lambda: _module(config, nnx.Rngs(0), lora)), nnx.Param)


def init_adapters(config: TrunkConfig, lora: lora_lib.LoRASpec, key: Array) -> Params:
    """Fresh adapters (A as PEFT's, B zero) for the projections `lora` names: the LoRA leaves alone."""
    return nnx.state(_module(config, nnx.Rngs(params=key), lora), nnx.LoRAParam)


def _model(params: Params, config: TrunkConfig, lora: lora_lib.LoRASpec | None = None) -> nnx.Module:
    return nnx.merge(graphdef(config, lora), params)


def positions_from_mask(attention_mask: Array) -> Array:
    """Position ids counted over real tokens (mask > 0), so left padding does not shift them."""
    return jnp.maximum(jnp.cumsum(attention_mask > 0, axis=-1) - 1, 0).astype(jnp.int32)


def attention_layout(attention_mask: Array) -> tuple[Array, Array]:
    """The causal mask `[B, T, T]` (query, key) and the position ids `[B, T]` of a batch of rows.

    `attention_mask` is 0 on padding and a segment id (≥ 1) on real tokens. A row
    of 0/1 is one sequence (left or right padded). A packed row holds several
    independent sequences, one contiguous run of tokens per id (`data/packing.py`):
    a token attends only to earlier tokens of its own run, and positions restart
    at 0 at the start of each run, so every run computes exactly what it would
    alone in a row of its own. Padding queries see every earlier real key (their
    outputs are never read; the fill keeps them finite).
    """
    chex.assert_rank(attention_mask, 2)
    t = attention_mask.shape[1]
    segment = attention_mask.astype(jnp.int32)
    real = segment > 0
    same = (segment[:, :, None] == segment[:, None, :]) | ~real[:, :, None]
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & real[:, None, :] & same
    # Real tokens before t, and that count at the first token of t's run: their difference is t's position.
    before = jnp.cumsum(real, axis=-1) - 1
    starts = real & (segment != jnp.pad(segment, ((0, 0), (1, 0)))[:, :-1])
    run_start = jax.lax.cummax(jnp.where(starts, before, 0), axis=1)
    return mask, jnp.maximum(before - run_start, 0).astype(jnp.int32)


def _run_block(block: nnx.Module, args: tuple, rngs: nnx.Rngs | None, remat: bool):
    """One block on `args`, called directly or (remat) under `jax.checkpoint`.

    The checkpointed call is a pure function of the block's state rather than
    `nnx.remat`: nnx.remat writes the block's variables back after the call,
    which fails for parameters closed over from an outer trace (the target
    trunk runs inside the train step's `jax.grad` without being
    differentiated). The dropout stream is threaded through, so the masks are
    those of the direct call.
    """
    if not remat:
        return block(*args, rngs=rngs)
    graphdef, state = nnx.split(block)
    rng_def, rng_state = (None, None) if rngs is None else nnx.split(rngs)

    def run(state, rng_state, *args):
        r = None if rng_state is None else nnx.merge(rng_def, rng_state)
        out = nnx.merge(graphdef, state)(*args, rngs=r)
        return out, (None if r is None else nnx.state(r))

    out, rng_state = jax.checkpoint(run)(state, rng_state, *args)
    if rngs is not None:
        nnx.update(rngs, rng_state)
    return out


def _run(model: nnx.Module, tokens, positions, mask, cache=None, cache_index=None, *, rngs=None, with_logits=True,
         start=0, stop=None, residual=None, final=True):
    """Runs the trunk. Returns (hidden after the final norm [B, T, D] float32, logits [B, T, V_pad] float32
    or None without `with_logits`, cache).

    A range of blocks (for a frozen bottom shared by several trunks, models/partial.py): blocks
    [start, stop) run on `residual`, the residual stream entering block `start` (None: the
    embeddings, then start is 0); `cache` holds those blocks' layers; without `final` the result is
    the residual stream leaving block stop − 1 (no final norm, no logits) in place of hidden.
    """
    cfg = model.cfg
    stop = cfg.n_layer if stop is None else stop
    x = model.embed(tokens, positions, rngs) if residual is None else residual
    inputs = model.block_inputs(positions)
    blocks = getattr(model, implementation(cfg).BLOCKS)
    new_cache = []
    for i in range(start, stop):
        kv = None if cache is None else cache[i - start]
        x, kv = _run_block(blocks[i], (x, *inputs, mask, kv, cache_index), rngs, cfg.remat)
        new_cache.append(kv)
    new_cache = None if cache is None else new_cache
    if not final:
        return x, None, new_cache
    hidden = shard_batch(model.final_norm(x))
    logits = mask_padded_vocab(model.logits(hidden), cfg.vocab_size) if with_logits else None
    return hidden, logits, new_cache


def _layout(config: TrunkConfig, tokens: Array, attention_mask: Array | None, dropout_key: Array | None):
    """The causal mask, position ids and dropout stream of a forward pass over `tokens` [B, T]."""
    chex.assert_rank(tokens, 2)
    b, t = tokens.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    chex.assert_equal_shape([tokens, attention_mask])
    _check_length(config, t)
    mask, positions = attention_layout(attention_mask)
    return mask, positions, (None if dropout_key is None else nnx.Rngs(dropout=dropout_key))


def forward(params: Params, config: TrunkConfig, tokens: Array, attention_mask: Array | None = None,
            *, dropout_key: Array | None = None, with_logits: bool = True, lora: lora_lib.LoRASpec | None = None,
            start: int = 0, residual: Array | None = None) -> tuple[Array, Array | None]:
    """Full causal forward pass.

    Args:
        tokens: [B, T] int token ids.
        attention_mask: [B, T], 1 on real tokens (left or right padding both work), or
            segment ids of packed rows (`attention_layout`); None means all real.
        dropout_key: enables dropout when given.
        with_logits: False skips the LM head (logits None), for callers that
            read only the hidden states or only some positions' logits.
        lora: the adapters `params` carry (`lora.LoRASpec`), if any.
        start, residual: run blocks start .. n_layer − 1 on `residual` [B, T, D], the residual stream
            entering block `start` (from `residual_stream`), instead of the whole trunk.

    Returns:
        hidden [B, T, D] (after the final norm, float32) and logits [B, T, V_pad]
        (float32, padded vocabulary entries -inf). hidden[:, t] predicts tokens[:, t + 1].
    """
    mask, positions, rngs = _layout(config, tokens, attention_mask, dropout_key)
    if residual is not None:
        chex.assert_shape(residual, (*tokens.shape, config.n_embd))
    hidden, logits, _ = _run(_model(params, config, lora), tokens, positions, mask, rngs=rngs,
                             with_logits=with_logits, start=start, residual=residual)
    return hidden, logits


def residual_stream(params: Params, config: TrunkConfig, tokens: Array, attention_mask: Array | None = None, *,
                    stop: int, dropout_key: Array | None = None, lora: lora_lib.LoRASpec | None = None) -> Array:
    """The residual stream leaving block stop − 1 (the embeddings for stop = 0): [B, T, D] in the compute
    dtype, what `forward(..., start=stop, residual=...)` continues from. Only the embeddings and blocks
    [0, stop) of `params` are read."""
    mask, positions, rngs = _layout(config, tokens, attention_mask, dropout_key)
    x, _, _ = _run(_model(params, config, lora), tokens, positions, mask, rngs=rngs, stop=stop, final=False,
                   with_logits=False)
    return x


def lm_logits(params: Params, config: TrunkConfig, hidden: Array, *, mask_padded: bool = True) -> Array:
    """The LM head on final hidden states: [..., D] → [..., V_pad] float32, padded entries -inf, or left as
    computed (finite) without `mask_padded`, for a consumer that masks them inside a fused reduction."""
    logits = _model(params, config).logits(hidden)
    return mask_padded_vocab(logits, config.vocab_size) if mask_padded else logits


@chex.dataclass
class KVCache:
    """Decoding state of one trunk; a pytree, so it can live in a `lax.while_loop`.

    Attributes:
        k, v: per layer, [B, H_kv, S, Dh] keys and values for S = cache_len slots
            (heads-major, the layout the attention matmuls read).
        key_mask: [B, S] bool, slots holding a real token.
        index: [] int32, next slot to write.
        position: [B] int32, position id of the next token of each row.
    """
    k: list
    v: list
    key_mask: Array
    index: Array
    position: Array


def init_cache(config: TrunkConfig, batch_size: int, cache_len: int, n_layers: int | None = None) -> KVCache:
    """An empty cache of `cache_len` slots for `n_layers` blocks (all of them by default)."""
    _check_length(config, cache_len)
    shape = (batch_size, implementation(config).kv_heads(config), cache_len, config.head_dim)
    dt = jnp.dtype(config.dtype)
    n = config.n_layer if n_layers is None else n_layers
    return KVCache(k=[jnp.zeros(shape, dt) for _ in range(n)], v=[jnp.zeros(shape, dt) for _ in range(n)],
                   key_mask=jnp.zeros((batch_size, cache_len), bool), index=jnp.zeros((), jnp.int32),
                   position=jnp.zeros((batch_size,), jnp.int32))


def _run_cached(params, config, cache: KVCache, tokens, key_mask_new, positions, with_logits, **blocks):
    """`blocks`: `start`, `stop`, `residual`, `final` of `_run` (a range of blocks, whose layers `cache` holds)."""
    b, t = tokens.shape
    key_mask = jax.lax.dynamic_update_slice(cache.key_mask, key_mask_new, (0, cache.index))
    s = key_mask.shape[1]
    # Query at slot index+i sees keys in slots <= index+i that hold real tokens.
    causal = jnp.arange(s)[None, :] <= (cache.index + jnp.arange(t))[:, None]
    mask = causal[None] & key_mask[:, None, :]
    hidden, logits, kv = _run(_model(params, config), tokens, positions, mask, list(zip(cache.k, cache.v)),
                              cache.index, with_logits=with_logits, **blocks)
    new = KVCache(k=[k for k, _ in kv], v=[v for _, v in kv], key_mask=key_mask, index=cache.index + t,
                  position=positions[:, -1] + 1)
    return hidden, logits, new


def prefill(params: Params, config: TrunkConfig, tokens: Array, attention_mask: Array, cache_len: int, *,
            with_logits: bool = True, start: int = 0, stop: int | None = None, residual: Array | None = None,
            final: bool = True) -> tuple[Array, Array | None, KVCache]:
    """Runs a (left-padded) prompt batch and returns a cache with `cache_len` slots.

    Returns hidden [B, P, D], logits [B, P, V_pad] (None without `with_logits`)
    and the cache; the last column of logits is the distribution over the first new token.

    A range of blocks (a bottom shared by several trunks, models/partial.py): blocks [start, stop) on
    `residual` [B, P, D] (None: the embeddings of `tokens`), the cache holding those blocks' layers;
    without `final`, the residual stream leaving block stop − 1 in place of hidden.
    """
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, attention_mask])
    b, p = tokens.shape
    if cache_len < p:
        raise ValueError(f"prefill: cache_len={cache_len} is shorter than the prompt length {p}")
    cache = init_cache(config, b, cache_len, (config.n_layer if stop is None else stop) - start)
    return _run_cached(params, config, cache, tokens, attention_mask.astype(bool), positions_from_mask(attention_mask),
                       with_logits, start=start, stop=stop, residual=residual, final=final)


def decode_step(params: Params, config: TrunkConfig, cache: KVCache, token: Array, *,
                with_logits: bool = True, start: int = 0, stop: int | None = None, residual: Array | None = None,
                final: bool = True) -> tuple[Array, Array | None, KVCache]:
    """Feeds one token per row. Returns hidden [B, D], logits [B, V_pad] (None without
    `with_logits`) and the new cache. A range of blocks as `prefill`'s, `residual` [B, D]."""
    chex.assert_rank(token, 1)
    b = token.shape[0]
    hidden, logits, cache = _run_cached(params, config, cache, token[:, None], jnp.ones((b, 1), bool),
                                        cache.position[:, None], with_logits, start=start, stop=stop,
                                        residual=None if residual is None else residual[:, None], final=final)
    return hidden[:, 0], (None if logits is None else logits[:, 0]), cache


def _check_length(config: TrunkConfig, t: int) -> None:
    if t > config.n_positions:
        raise ValueError(f"sequence length {t} exceeds the model's n_positions={config.n_positions}")


def num_params(params: Params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
