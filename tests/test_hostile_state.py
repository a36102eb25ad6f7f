"""Hostile arguments to hypervolume and BetaRewardHead (issue 9, class 8): each raises a
TypeError/ValueError that names the argument, never a bare torch error or a silent default."""
import copy
import io
import pickle

import numpy as np
import pytest
import torch

from icrm_kernels import hypervolume
from icrm_kernels.nn import BetaRewardHead


# ------------------------------------------------------------------ hypervolume
@pytest.mark.parametrize("ref", [None, "ab", b"ab", 5, 1.0, {"a": 1}, [0.0, None], [1 + 2j, 0.0], [[0.0, 0.0]],
                                 [True, False], torch.tensor([True, False]), torch.tensor([1 + 1j, 2j])],
                         ids=lambda r: type(r).__name__ + ":" + repr(r)[:20])
def test_hypervolume_bad_ref_names_ref(ref):
    with pytest.raises(TypeError, match=r"^ref must be"):
        hypervolume(torch.rand(4, 2), ref)


@pytest.mark.parametrize("ref,match", [([0.0, 0.0, 0.0], "ref must have 2 entries"),
                                       ([float("nan"), 0.0], "ref must be finite"),
                                       ([float("-inf"), 0.0], "ref must be finite"),
                                       ([2.0, 2.0], "ref does not bound")])
def test_hypervolume_bad_ref_values(ref, match):
    with pytest.raises(ValueError, match=match):
        hypervolume(torch.rand(4, 2), ref)


def test_hypervolume_accepts_every_kind_of_real_ref():
    pts = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    want = 3.0
    for ref in ([0, 0], (0.0, 0.0), torch.zeros(2), torch.zeros(2, dtype=torch.int64), np.zeros(2),
                [np.float32(0), np.int64(0)], [torch.tensor(0.0), 0]):
        assert hypervolume(pts, ref).item() == want, ref


@pytest.mark.parametrize("clip", [None, 1, "yes"])
def test_hypervolume_clip_must_be_bool(clip):
    with pytest.raises(TypeError, match="clip must be a bool"):
        hypervolume(torch.rand(4, 2), [0.0, 0.0], clip=clip)


def test_hypervolume_bad_points():
    with pytest.raises(TypeError, match="points"):
        hypervolume([[1.0, 2.0]], [0.0, 0.0])
    with pytest.raises(TypeError, match="points"):
        hypervolume(torch.ones(3, 2, dtype=torch.int64), [0.0, 0.0])
    with pytest.raises(ValueError, match="points must be finite"):
        hypervolume(torch.tensor([[1.0, float("nan")]]), [0.0, 0.0])


# ------------------------------------------------------------------ BetaRewardHead
@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(hidden_size=0), ValueError, "hidden_size"),
    (dict(hidden_size=-3), ValueError, "hidden_size"),
    (dict(hidden_size=2.5), TypeError, "hidden_size"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(hidden_size=None), TypeError, "hidden_size"),
    (dict(hidden_size=4, tau_min=-0.1), ValueError, "tau_min"),
    (dict(hidden_size=4, tau_min=float("nan")), ValueError, "tau_min"),
    (dict(hidden_size=4, tau_min=float("inf")), ValueError, "tau_min"),
    (dict(hidden_size=4, tau_min="0.1"), TypeError, "tau_min"),
    (dict(hidden_size=4, output="bogus"), ValueError, "output"),
    (dict(hidden_size=4, output=None), ValueError, "output"),
    (dict(hidden_size=4, bias="yes"), TypeError, "bias"),
    (dict(hidden_size=4, conc_init=float("nan")), ValueError, "conc_init"),
    (dict(hidden_size=4, conc_init=None), TypeError, "conc_init"),
    (dict(hidden_size=4, dtype=torch.int64), TypeError, "dtype"),
    (dict(hidden_size=4, dtype="float32"), TypeError, "dtype"),
    (dict(hidden_size=4, device="nowhere"), ValueError, "device"),
])
def test_beta_reward_head_constructor_names_the_argument(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        BetaRewardHead(**kwargs)


def test_beta_reward_head_setters_validate():
    head = BetaRewardHead(4, output="logits", tau_min=0.0)
    assert head.output == "logits" and head.tau_min == 0.0
    with pytest.raises(ValueError, match="output"):
        head.output = "logit"
    with pytest.raises(ValueError, match="tau_min"):
        head.tau_min = -1.0
    assert head.output == "logits" and head.tau_min == 0.0  # a rejected value leaves the old one
    head.output = "alpha_beta"
    head.tau_min = 0.5
    out = head(torch.randn(3, 4))
    assert out.shape == (3, 2) and bool(((out[:, 0] + out[:, 1]) >= 0.5 - 1e-5).all())
    assert "output='alpha_beta'" in repr(head)


def test_beta_reward_head_copies_and_pickles():
    head = BetaRewardHead(4, tau_min=0.2, output="logits")
    for clone in (copy.deepcopy(head), pickle.loads(pickle.dumps(head))):
        assert clone.tau_min == 0.2 and clone.output == "logits"
    buf = io.BytesIO()
    torch.save(head, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).output == "logits"
    # a head pickled when tau_min/output were plain attributes still loads
    state = head.__dict__.copy()
    state["tau_min"], state["output"] = state.pop("_tau_min"), state.pop("_output")
    old = BetaRewardHead.__new__(BetaRewardHead)
    old.__setstate__(state)
    assert old.tau_min == 0.2 and old.output == "logits"


@pytest.mark.parametrize("method", ["forward", "logits"])
def test_beta_reward_head_hidden_is_checked(method):
    head = BetaRewardHead(4)
    call = getattr(head, method)
    with pytest.raises(TypeError, match="hidden must be a torch.Tensor"):
        call([[0.0] * 4])
    with pytest.raises(TypeError, match="hidden must be a floating tensor"):
        call(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"hidden must have shape \[..., hidden_size=4\]"):
        call(torch.randn(2, 5))
    with pytest.raises(ValueError, match="hidden must have shape"):
        call(torch.tensor(1.0))
    with pytest.raises(TypeError, match="hidden has dtype torch.float64"):
        call(torch.randn(2, 4, dtype=torch.float64))
    out = call(torch.randn(2, 3, 4))
    assert (out.shape == (2, 3, 2)) if method == "forward" else (out[0].shape == out[1].shape == (2, 3))


def test_beta_reward_head_pairs_are_checked():
    head = BetaRewardHead(4)
    with pytest.raises(ValueError, match="h_b must have shape"):
        head.score_pair(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(TypeError, match="h_a must be a torch.Tensor"):
        head.pair_logits(None, torch.randn(3, 4))
    with pytest.raises(ValueError, match="h_a and h_b must have broadcastable"):
        head.score_pair(torch.randn(3, 4), torch.randn(2, 4))
    a, b = head.score_pair(torch.randn(1, 4), torch.randn(5, 4))  # one against many broadcasts
    assert a.shape == b.shape == (5,)


def test_beta_reward_head_from_and_replace_score():
    with pytest.raises(TypeError, match="score must be an nn.Linear"):
        BetaRewardHead.from_score(torch.nn.Conv1d(4, 1, 1))
    with pytest.raises(ValueError, match="score must be an nn.Linear with out_features=1"):
        BetaRewardHead.from_score(torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="tau_min"):
        BetaRewardHead.from_score(torch.nn.Linear(4, 1), tau_min=-1.0)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        BetaRewardHead.replace_score(object())
    with pytest.raises(ValueError, match="attr"):
        BetaRewardHead.replace_score(torch.nn.Sequential(torch.nn.Linear(4, 1)), attr="score")
    with pytest.raises(TypeError, match="attr must be a str"):
        BetaRewardHead.replace_score(torch.nn.Sequential(torch.nn.Linear(4, 1)), attr=0)
