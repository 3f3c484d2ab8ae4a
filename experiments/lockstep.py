"""Many games played together, one batched decision per turn: the evaluation loop the experiments share, and the
player that decodes each turn's moves from a trained ILQL state."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import jax

from ilql_jax import reranking, sampler

__all__ = ["Game", "model_player", "play_lockstep", "power_of_two_buckets"]


class Game(Protocol):
    done: bool

    def step(self, utterance: str): ...


G = TypeVar("G", bound=Game)


def power_of_two_buckets(n: int, smallest: int = 8) -> tuple[int, ...]:
    """Batch sizes smallest, 2·smallest, ... up to the first one ≥ n (the last is n itself)."""
    sizes, size = [], smallest
    while size < n:
        sizes.append(size)
        size *= 2
    return (*sizes, n)


def play_lockstep(games: Sequence[G], choose: Callable[[list[G]], Sequence[str]], max_turns: int,
                  buckets: Sequence[int] | None = None) -> None:
    """Plays `games` to the end (or for `max_turns` turns): each turn, `choose(batch)` returns one utterance per
    game of `batch`, and every unfinished game of it plays its own.

    `batch` is every game, finished ones too, when `buckets` is None: the decoder then
    sees one batch shape. With `buckets` (increasing batch sizes, the last ≥
    len(games)), it is the unfinished games, topped up with finished ones to the
    smallest bucket that holds them: a few batch shapes, and the long tail of
    a few unfinished games costs a small batch. Utterances for finished games
    are ignored.
    """
    if buckets is not None and (not buckets or buckets[-1] < len(games)):
        raise ValueError(f"buckets {tuple(buckets or ())} must end at >= {len(games)} games")
    for _ in range(max_turns):
        live = [g for g in games if not g.done]
        if not live:
            return
        if buckets is None:
            batch = list(games)
        else:
            size = next(b for b in buckets if b >= len(live))
            batch = live + [g for g in games if g.done][:size - len(live)]
        utterances = choose(batch)
        if len(utterances) != len(batch):
            raise ValueError(f"choose returned {len(utterances)} utterances for {len(batch)} games")
        for game, utterance in zip(batch, utterances):
            if not game.done:
                game.step(utterance)


def model_player(tok, model, state, prompt: Callable[[G], Sequence[int]], key, sampler_config, *, beta: float = 0.0,
                 adv_clip: float | None = None, rerank: dict[str, Any] | None = None) -> Callable[[list[G]], list[str]]:
    """A `choose` for `play_lockstep` that decodes from a trained state (`model` its `ilql.ModelConfig`): each
    turn, one batched decode of every game's `prompt(game)` on log π_β + β·A (A clipped at `adv_clip`), or with
    `rerank` (`reranking.rerank_text`'s n and weights) the best of n samples of π_β.

    Each turn has its own key, the call count folded into `key`, so every method meets the same key sequence.
    Inner markup is never emitted: the move goes back into a history, which cannot hold it.
    """
    calls = itertools.count()
    forbidden = sampler.inner_markup_ids(tok)

    def choose(games: list[G]) -> list[str]:
        prompts = [prompt(g) for g in games]
        turn_key = jax.random.fold_in(key, next(calls))
        if rerank is not None:
            return reranking.rerank_text(tok, model, state.params, state.target_params, prompts, turn_key,
                                         sampler_config=sampler_config, forbidden_ids=forbidden, **rerank)
        return sampler.generate_text(tok, model, state.params, state.target_params, prompts, turn_key,
                                     sampler_config=sampler_config, beta=beta, adv_clip=adv_clip,
                                     forbidden_ids=forbidden)

    return choose
