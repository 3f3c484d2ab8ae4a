"""How an episode's segments become one token sequence: ILQL's markup, or a model's chat template.

A `Layout` is the token pieces around each segment (docs/pretrained.md)::

    episode = opening (env_first or agent_first, by who speaks first)
              + per env segment:    env_open   + content + env_close
              + per agent segment:  agent_open + content + stop + agent_after
              + terminal (a terminal episode only)
    prompt  = the history laid out the same way (not terminal) + agent_open

ILQL's actions are an agent segment's content tokens and its `stop` token: the
reward sits on the transition that emits `stop`, and the sampler stops at it.
Every other piece is the environment's side (no action, no reward).

* `markup_layout(tokenizer)`: ILQL's own markup (docs/algorithm.md §1) from the
  tokenizer's `s_id, end_s_id, a_id, end_a_id, eod_id`: `<s>` or `<a>` opens
  the episode, `</s>` closes an env segment, `</a>` is the stop, `</eod>` the
  terminal piece; the other pieces are empty. This is the layout every
  tokenizer without a `layout` attribute gets, bit for bit as before.
* `chat_layout(template, ...)`: the pieces a Hugging Face chat template (jinja)
  puts around user and assistant messages, found by rendering it with sentinel
  messages: env segments are user messages, agent segments assistant messages.
  For SmolLM2-135M-Instruct the opening is its default system message
  (`<|im_start|>system\\n...<|im_end|>\\n`), env_open `<|im_start|>user\\n`,
  env_close `<|im_end|>\\n`, agent_open `<|im_start|>assistant\\n`, the stop
  `<|im_end|>`, agent_after `\\n`, and the terminal piece is empty.

Each piece is tokenized on its own and so is each segment's content, so a
content that starts or ends with whitespace may tokenize at its edges slightly
differently from the template's whole rendered text (docs/pretrained.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Layout", "chat_layout", "layout_of", "markup_layout", "render_chat", "token_id"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """The token pieces around segments (see the module docstring); ids are the tokenizer's.

    Attributes:
      kind: "markup" or "chat".
      env_first: opens an episode (or history) whose first segment is the environment's.
      agent_first: opens one the agent starts, and an empty history; None when the template cannot start with an
        assistant message.
      env_open, env_close: around an env segment's content.
      agent_open: before an agent segment's content (environment side: no action); ends every generation prompt.
      stop_id: closes an agent segment: its last action, the one that carries the reward; decoding stops at it.
      agent_after: after the stop (environment side).
      terminal: ends a terminal episode.
      reserved: (id, text) of every special id that must not occur inside a segment's content.
    """

    kind: str
    env_first: tuple[int, ...]
    agent_first: tuple[int, ...] | None
    env_open: tuple[int, ...]
    env_close: tuple[int, ...]
    agent_open: tuple[int, ...]
    stop_id: int
    agent_after: tuple[int, ...]
    terminal: tuple[int, ...]
    reserved: tuple[tuple[int, str], ...]

    @property
    def reserved_ids(self) -> dict[int, str]:
        return dict(self.reserved)


def markup_layout(tokenizer: Any) -> Layout:
    """ILQL's markup layout from a tokenizer's markup ids (`s_id`, `end_s_id`, `a_id`, `end_a_id`, `eod_id`)."""
    s, end_s, a, end_a, eod = (token_id(tokenizer, n) for n in ("s_id", "end_s_id", "a_id", "end_a_id", "eod_id"))
    return Layout(kind="markup", env_first=(s,), agent_first=(a,), env_open=(), env_close=(end_s,), agent_open=(),
                  stop_id=end_a, agent_after=(), terminal=(eod,),
                  reserved=((s, "<s>"), (end_s, "</s>"), (a, "<a>"), (end_a, "</a>"), (eod, "</eod>")))


def layout_of(tokenizer: Any) -> Layout:
    """The tokenizer's `layout` when it has one (a chat tokenizer), else ILQL's markup layout."""
    layout = getattr(tokenizer, "layout", None)
    return layout if isinstance(layout, Layout) else markup_layout(tokenizer)


def token_id(tokenizer: Any, name: str) -> int:
    """`tokenizer.<name>` as an int id; ValueError naming it when missing or not an integer."""
    import numbers

    import numpy as np

    if not hasattr(tokenizer, name):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no attribute {name!r}")
    value = getattr(tokenizer, name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"tokenizer.{name} must be an int token id, got {value!r}")
    return int(value)


# --- chat templates ---------------------------------------------------------------------------------------------

# Sentinel message contents: letters only (no whitespace for a template to trim), never in a real template.
_ENV, _AGENT = ("QqENVSENTINELONEqQ", "QqENVSENTINELTWOqQ"), ("QqAGENTSENTINELONEqQ", "QqAGENTSENTINELTWOqQ")


def render_chat(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = False,
                **special_tokens: str | None) -> str:
    """A chat template rendered as `transformers` renders it (jinja2 sandbox, trim_blocks, lstrip_blocks)."""
    import jinja2
    from jinja2 import sandbox

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(fmt):
        import datetime
        return datetime.datetime.now().strftime(fmt)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **{k: v for k, v in special_tokens.items() if v is not None})


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def _between(text: str, *sentinels: str) -> list[str]:
    """`text` cut at each sentinel in turn: the len(sentinels) + 1 pieces around them."""
    pieces = []
    for s in sentinels:
        if text.count(s) != 1:
            raise ValueError(f"the rendered template holds {text.count(s)} copies of a message, not 1")
        before, _, text = text.partition(s)
        pieces.append(before)
    return pieces + [text]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise ValueError(f"{what}: {text!r} does not end with {suffix!r}")
    return text[:len(text) - len(suffix)]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{what}: {text!r} does not start with {prefix!r}")
    return text[len(prefix):]


def chat_text_pieces(template: str, **special_tokens: str | None) -> dict[str, str | None]:
    """The text of every piece of the chat layout, found by rendering `template` with sentinel messages.

    ValueError (naming what did not fit) when the template does not put fixed text around each message: e.g. a
    template that renders a message differently by its position other than the opening.
    """
    def render(messages, generation=False):
        return render_chat(template, messages, add_generation_prompt=generation, **special_tokens)

    e1, e2 = _ENV
    a1, a2 = _AGENT
    # One user message: [env_first + env_open] E1 [env_close]; with the generation prompt: ... [env_close + agent_open].
    head, env_close = _between(render([_user(e1)]), e1)
    head_g, gen = _between(render([_user(e1)], True), e1)
    if head_g != head:
        raise ValueError("the generation prompt changes the text before the first message")
    agent_open = _strip_prefix(gen, env_close, "the generation prompt after a user message")
    # A whole conversation fixes the agent's closing (after its last message) and env_open (between turns).
    head2, x1, x2, x3, end = _between(render([_user(e1), _assistant(a1), _user(e2), _assistant(a2)]), e1, a1, e2, a2)
    if head2 != head or x1 != env_close + agent_open or x3 != x1:
        raise ValueError("a conversation's turns are not laid out as single messages are")
    env_open = _strip_prefix(x2, end, "the text between an assistant and a user message")
    env_first = _strip_suffix(head, env_open, "the text before the first user message")
    try:
        start, after = _between(render([_assistant(a1)]), a1)
        agent_first = _strip_suffix(start, agent_open, "the text before a first assistant message")
        if after != end:
            raise ValueError("a first assistant message is closed differently")
    except Exception:  # noqa: BLE001 - e.g. a template that raises unless a user speaks first
        agent_first = None
    return {"env_first": env_first, "agent_first": agent_first, "env_open": env_open, "env_close": env_close,
            "agent_open": agent_open, "agent_close": end}


def chat_layout(template: str, encode: Callable[[str], list[int]], special_ids: Mapping[str, int],
                **special_tokens: str | None) -> Layout:
    """The chat layout of `template` for a tokenizer that `encode`s text (special tokens as single ids).

    `special_ids`: the tokenizer's special tokens (text → id): they become the layout's reserved ids, and the
    agent's closing text must start with one of them, the stop (e.g. `<|im_end|>`); the rest of it
    (e.g. "\\n") is agent_after. `special_tokens` (bos_token, eos_token, ...) are passed to the template.
    """
    try:
        pieces = chat_text_pieces(template, **special_tokens)
    except Exception as e:  # noqa: BLE001 - a jinja syntax error, a template that raises, one that does not fit
        raise ValueError(f"chat template not understood: {type(e).__name__}: {e}") from None
    ids = {name: (None if text is None else tuple(int(i) for i in encode(text))) for name, text in pieces.items()}
    close = ids.pop("agent_close")
    if not close or close[0] not in set(special_ids.values()):
        raise ValueError(f"chat template: an assistant message is closed by {pieces['agent_close']!r}, which does not "
                         "start with a special token (the stop token ILQL needs)")
    return Layout(kind="chat", env_first=ids["env_first"], agent_first=ids["agent_first"], env_open=ids["env_open"],
                  env_close=ids["env_close"], agent_open=ids["agent_open"], stop_id=close[0],
                  agent_after=close[1:], terminal=(),
                  reserved=tuple(sorted((int(i), t) for t, i in special_ids.items())))
