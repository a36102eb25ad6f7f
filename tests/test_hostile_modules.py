"""Hostile inputs to the nn modules and the Hugging Face wrapper (issue 9): every bad argument
is a ValueError/TypeError naming what the caller passed, and NaN in one sequence's states gives
NaN for that sequence only. The ops underneath have their own hostile tests
(test_hostile_groups.py, test_hostile_attention_beta.py, test_hostile_state.py)."""
import pytest
import torch

from icrm_kernels.integrations.hf_r2m import R2MRewardModel, reward_token_hidden
from icrm_kernels.nn import PolicyFeedbackAttention, R2MRewardHead

RM, POLICY = 8, 12


def _inputs():
    return torch.randn(2, RM), torch.randn(10, POLICY), torch.tensor([0, 4, 10])


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(rm_dim=0, policy_dim=POLICY), ValueError, "rm_dim"),
    (dict(rm_dim=True, policy_dim=POLICY), ValueError, "rm_dim"),
    (dict(rm_dim=RM, policy_dim=-3), ValueError, "policy_dim"),
    (dict(rm_dim=RM, policy_dim=POLICY, attn_dim=8, num_heads=3), ValueError, "num_heads"),
])
def test_attention_module_bad_constructor(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        PolicyFeedbackAttention(**kwargs)


def test_attention_module_bad_inputs_name_them():
    att = PolicyFeedbackAttention(RM, POLICY, 8, num_heads=2)
    q, s, cu = _inputs()
    with pytest.raises(ValueError, match="states"):
        att(q, torch.randn(10, POLICY - 1), cu)
    with pytest.raises(ValueError, match="query"):
        att(torch.randn(2, RM + 1), s, cu)
    with pytest.raises(TypeError, match="states"):
        att(q, [[0.0] * POLICY], cu)
    with pytest.raises(TypeError, match="states"):
        att(q, s.to(torch.int64), cu)
    with pytest.raises(ValueError, match="cu_seqlens"):
        att(q, s, torch.tensor([0, 4, 11]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        att(torch.randn(3, RM), s, cu)


def test_attention_module_nan_stays_in_its_sequence():
    att = PolicyFeedbackAttention(RM, POLICY, 8, num_heads=2)
    q, s, cu = _inputs()
    s[6, 3] = float("nan")  # a token of the second sequence
    out = att(q, s, cu)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def test_reward_head_bad_arguments_name_them():
    with pytest.raises(TypeError, match="score"):
        R2MRewardHead(torch.nn.Conv1d(RM, 1, 1), policy_dim=POLICY)
    with pytest.raises(ValueError, match="score"):
        R2MRewardHead(torch.nn.Linear(RM, 2), policy_dim=POLICY)
    with pytest.raises(ValueError, match="floor"):
        R2MRewardHead(torch.nn.Linear(RM, 1), policy_dim=POLICY, floor=2.0)
    with pytest.raises(ValueError, match="total_steps"):
        R2MRewardHead(torch.nn.Linear(RM, 1), policy_dim=POLICY, total_steps=0)
    head = R2MRewardHead(torch.nn.Linear(RM, 1), policy_dim=POLICY, total_steps=10)
    with pytest.raises(ValueError, match="step"):
        head.set_step(-1)
    q, s, cu = _inputs()
    for grad in (True, False):  # the training path (module) and the fused reward path
        with torch.set_grad_enabled(grad):
            with pytest.raises(ValueError, match="states"):
                head(q, torch.randn(10, POLICY + 2), cu)
            with pytest.raises(ValueError, match="hidden"):
                head(torch.randn(2, RM - 1), s, cu)


def test_reward_head_nan_gives_nan_reward_for_that_sequence():
    head = R2MRewardHead(torch.nn.Linear(RM, 1), policy_dim=POLICY, total_steps=10)
    q, s, cu = _inputs()
    s[1, 0] = float("inf")  # first sequence
    s[2, 0] = float("-inf")
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            r = head(q, s, cu)
        assert not torch.isfinite(r[0]) and torch.isfinite(r[1])


def test_hf_wrapper_bad_model_and_mask():
    with pytest.raises(TypeError, match="score"):
        R2MRewardModel.wrap(torch.nn.Linear(3, 3), policy_dim=POLICY)
    with pytest.raises(ValueError, match="attention_mask"):
        reward_token_hidden(torch.randn(2, 5, RM), torch.ones(2, 4))


def test_non_tensor_layouts_are_named():
    """numpy and list ids (verl passes a numpy array of uid strings) get a TypeError naming the
    argument, not an AttributeError or a "cpu is not cpu" device message."""
    import numpy as np

    import icrm_kernels as ik

    r = torch.randn(4)
    for ids in (np.array(["a", "b", "a", "b"]), np.array([0, 1, 0, 1]), [0, 1, 0, 1]):
        with pytest.raises(TypeError, match="group_index must be a torch.Tensor"):
            ik.group_advantages(r, group_index=ids)
    with pytest.raises(TypeError, match="cu_groups must be a torch.Tensor"):
        ik.group_advantages(r, cu_groups=[0, 2, 4])
