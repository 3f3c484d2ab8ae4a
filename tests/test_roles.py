"""`roles` reads the parameter trees that `train.init_state` builds, in every layout."""

import jax
import pytest

from ilql_jax import roles, train
from ilql_jax.models import gpt2, ilql


def _params(mode="ilql", **model):
    config = train.StepConfig(mode=mode, model=ilql.ModelConfig(trunk=gpt2.GPT2Config.tiny(), **model))
    state = train.abstract_state(config)  # shapes only
    return state.params, state.target_params


@pytest.mark.parametrize("model", [{}, {"shared_policy": True}, {"target_on_online_trunk": True},
                                   {"num_layers_unfrozen": 1}])
def test_an_ilql_state_has_its_value_network_and_its_pi_beta(model):
    online, target = _params(**model)
    assert not roles.is_bc(online)
    assert set(roles.value(online)) == {roles.TRUNK, roles.V, roles.Q1, roles.Q2}
    assert roles.v_head(online) is roles.value(online)[roles.V]
    assert jax.tree.structure(roles.q_heads(target)) == jax.tree.structure(roles.q_heads(roles.value(online)))
    shared = model.get("shared_policy", False)
    assert roles.has_policy(online) != shared
    assert roles.policy_path(online) == (("value", "trunk") if shared else ("policy",))
    assert roles.policy_trunk(online) is (roles.value_trunk(online) if shared else roles.policy(online))
    assert ilql.policy_params(ilql.ModelConfig(trunk=gpt2.GPT2Config.tiny(), **model), online) is \
        roles.policy_trunk(online)
    assert roles.has_target_trunk(target) != model.get("target_on_online_trunk", False)
    assert roles.has_frozen(online) == ("num_layers_unfrozen" in model)


def test_a_bc_state_holds_pi_beta_alone():
    online, target = _params("bc")
    assert roles.is_bc(online) and roles.policy_path(online) == ("policy",)
    assert roles.policy_trunk(online) is roles.policy(online)
    for shared in (False, True):  # π_β is a BC state's own trunk, whatever the ILQL model would share
        model = ilql.ModelConfig(trunk=gpt2.GPT2Config.tiny(), shared_policy=shared)
        assert ilql.policy_params(model, online) is roles.policy(online)
    assert not target and not roles.has_q_heads(target)
