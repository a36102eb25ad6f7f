"""verl estimators (icrm_kernels.integrations.verl) against verl's own, with verl's real code
(installed by the Makefile with --no-deps plus the modules its core_algos imports)."""
import numpy as np
import pytest
import torch

from icrm_kernels import ADVANTAGE_PRESETS
from icrm_kernels.integrations.verl import dense_group_ids, register_estimators

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")


def _batch(seed, groups=6, max_size=5, t=7):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size + 1, (groups,), generator=g).tolist()
    uids = [f"uid-{u}" for u, s in enumerate(sizes) for _ in range(s)]
    perm = torch.randperm(len(uids), generator=g).tolist()
    uids = np.array([uids[i] for i in perm], dtype=object)  # as verl: uid strings, any order
    n = len(uids)
    mask = (torch.rand(n, t, generator=g) > 0.3).float()
    mask[:, 0] = 1
    rewards = torch.zeros(n, t)
    last = mask.cumsum(1).argmax(1)  # outcome reward on the last valid token, as verl's reward manager
    rewards[torch.arange(n), last] = torch.randn(n, generator=g)
    return rewards, mask, uids


def test_every_preset_registered_and_idempotent():
    names = register_estimators()
    assert set(names) == {f"icrm_{p}" for p in ADVANTAGE_PRESETS}
    again = register_estimators()  # a second call must not raise
    for name, fn in names.items():
        assert core_algos.get_adv_estimator_fn(name) is fn is again[name]


@pytest.mark.parametrize("ours, theirs, kwargs", [
    ("icrm_verl_grpo", "grpo", {}),
    ("icrm_verl_rloo", "rloo", {}),
    ("icrm_verl_reinforce_pp_baseline", "reinforce_plus_plus_baseline", {}),
])
def test_equals_verl(ours, theirs, kwargs):
    register_estimators()
    for seed in range(3):
        rewards, mask, uids = _batch(seed + int(torch.randint(0, 10**6, ())))
        want_a, want_r = core_algos.get_adv_estimator_fn(theirs)(
            token_level_rewards=rewards.clone(), response_mask=mask, index=uids, **kwargs)
        got_a, got_r = core_algos.get_adv_estimator_fn(ours)(
            token_level_rewards=rewards.clone(), response_mask=mask, index=uids, config=None)
        torch.testing.assert_close(got_a, want_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_r, want_r, rtol=1e-5, atol=1e-6)


def test_grpo_without_std_follows_config():
    register_estimators()
    rewards, mask, uids = _batch(7)
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=False)
    got, _ = core_algos.get_adv_estimator_fn("icrm_verl_grpo")(
        token_level_rewards=rewards, response_mask=mask, index=uids, config={"norm_adv_by_std_in_grpo": False})
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ids_of_any_hashable_kind():
    dev = torch.device("cpu")
    want = torch.tensor([0, 1, 0, 2])
    for index in (np.array(["a", "b", "a", "c"], dtype=object), ["a", "b", "a", "c"], (3, 9, 3, 1),
                  np.array([3, 9, 3, 1]), torch.tensor([0, 1, 0, 2])):
        assert torch.equal(dense_group_ids(index, 4, dev), want)


def test_bad_index():
    fn = register_estimators()["icrm_verl_grpo"]
    rewards, mask, uids = _batch(1)
    with pytest.raises(ValueError, match="index must have one id per row"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uids[:-1])
    with pytest.raises(ValueError, match="index must give the group"):
        fn(token_level_rewards=rewards, response_mask=mask)
    with pytest.raises(TypeError, match="hashable"):
        fn(token_level_rewards=rewards, response_mask=mask, index=[[1]] * len(uids))
    with pytest.raises(ValueError, match="response_mask must have the shape"):
        fn(token_level_rewards=rewards, response_mask=mask[:, :-1], index=uids)
