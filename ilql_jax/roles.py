"""The roles in a train state's parameter trees, named and read in one place.

`models/ilql.py: init` lays them out (`utterance.init` alike, with scalar Q heads)::

    online  {"value": {"trunk", "v", "q1", "q2"}, "policy", "frozen"}
    target  {"trunk", "q1", "q2"}

π_β ("policy") is absent when it shares the value trunk, the target "trunk" when
the target reads the online one, and "frozen" (the trunks' shared frozen part,
models/partial.py) outside partial training. A BC state's online tree holds π_β
alone (with "frozen" under partial training) and its target is empty.
"""

from __future__ import annotations

from typing import Any

VALUE, POLICY, TRUNK, FROZEN = "value", "policy", "trunk", "frozen"
V, Q1, Q2 = "v", "q1", "q2"

Params = dict[str, Any]


def is_bc(online: Params) -> bool:
    """Whether `online` is a BC state's: π_β alone, no value network."""
    return VALUE not in online


def value(online: Params) -> Params:
    """The value network: {"trunk", "v", "q1", "q2"}."""
    return online[VALUE]


def value_trunk(online: Params) -> Any:
    return online[VALUE][TRUNK]


def v_head(online: Params) -> Any:
    return online[VALUE][V]


def q_heads(params: Params) -> tuple[Any, Any]:
    """(Q1, Q2) of the value network (`value(online)`) or of the target."""
    return params[Q1], params[Q2]


def has_q_heads(params: Params) -> bool:
    return Q1 in params


def has_policy(online: Params) -> bool:
    return POLICY in online


def policy(online: Params) -> Any:
    """π_β's own trunk (a BC state's, or ILQL's when not shared)."""
    return online[POLICY]


def policy_path(online: Params) -> tuple[str, ...]:
    """Where π_β's trunk sits in `online`: its own, else the value trunk it shares."""
    return (POLICY,) if POLICY in online else (VALUE, TRUNK)


def policy_trunk(online: Params) -> Any:
    """π_β's trunk, at `policy_path`."""
    return online[POLICY] if POLICY in online else online[VALUE][TRUNK]


def target_trunk(target: Params) -> Any:
    return target[TRUNK]


def has_target_trunk(target: Params) -> bool:
    return TRUNK in target


def frozen(online: Params) -> Any:
    """The frozen part that every trunk shares under partial training."""
    return online[FROZEN]


def has_frozen(online: Params) -> bool:
    """Whether `online` comes from partial training (`ModelConfig.num_layers_unfrozen`, `lora_rank`)."""
    return FROZEN in online
