"""verl advantage estimators backed by :func:`icrm_kernels.group_advantages`.

    from icrm_kernels.integrations.verl import register_estimators
    register_estimators()            # once, before verl builds its trainer
    # then in the verl config:  algorithm.adv_estimator=icrm_verl_grpo   (or icrm_bnpo, icrm_dler, ...)

:func:`register_estimators` adds ``icrm_<preset>`` to verl's estimator registry
(``verl.trainer.ppo.core_algos.register_adv_est``) for every preset in
:data:`icrm_kernels.ADVANTAGE_PRESETS`. Each estimator has verl's signature
``(token_level_rewards, response_mask, index=None, config=None, **kwargs)`` and returns
``(advantages, returns)``, both ``[B, T]`` (the same tensor, as verl's outcome estimators do):

- the sequence score is ``token_level_rewards.sum(-1)``, as in verl;
- ``index`` holds the group id of each row: verl passes a numpy array of uid strings; any
  sequence of hashable ids works (numpy array, list, tuple) and an integer tensor is used as is.
  Ids are made dense in order of first appearance, then ``group_advantages(scores,
  group_index=ids, preset=..., response_mask=response_mask)`` computes every advantage in one
  call (token-level whitening for ``verl_reinforce_pp_baseline`` included);
- ``epsilon`` (when a caller passes it) overrides the preset's eps; ``icrm_verl_grpo`` honours
  ``config.norm_adv_by_std_in_grpo = False`` as verl's ``grpo`` does (it becomes Dr. GRPO).

The ``icrm_verl_*`` estimators equal verl's own ``grpo``, ``rloo`` and
``reinforce_plus_plus_baseline`` (tested against verl 0.9). verl is not a dependency of this
package: importing this module does not import verl; :func:`register_estimators` does.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from icrm_kernels.ops.advantages import PRESETS, group_advantages

__all__ = ["register_estimators", "dense_group_ids", "make_estimator", "ESTIMATOR_PREFIX"]

ESTIMATOR_PREFIX = "icrm_"

# one function object per preset, made once: verl's registry refuses a second, different
# function under a registered name, so register_estimators() can run any number of times
_ESTIMATORS: Dict[str, Any] = {}


def dense_group_ids(index, n: int, device) -> torch.Tensor:
    """``index`` (numpy array or sequence of hashable ids, or an integer tensor) -> int64 ``[n]``
    dense ids in order of first appearance, on ``device``."""
    if isinstance(index, torch.Tensor):
        if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise TypeError(f"index must hold integer or hashable ids, got a {index.dtype} tensor")
        if index.dim() != 1 or index.numel() != n:
            raise ValueError(f"index must have one id per row of token_level_rewards ({n}), "
                             f"got shape {tuple(index.shape)}")
        return index.to(device=device, dtype=torch.int64)
    if index is None:
        raise ValueError("index must give the group (uid) of each row; verl passes data.non_tensor_batch['uid']")
    if isinstance(index, (str, bytes)) or not hasattr(index, "__len__"):
        raise TypeError(f"index must be a numpy array, list or tensor of ids, got {type(index).__name__}")
    if len(index) != n:
        raise ValueError(f"index must have one id per row of token_level_rewards ({n}), got {len(index)}")
    seen: Dict[Any, int] = {}
    try:
        ids = [seen.setdefault(u.item() if hasattr(u, "item") and not isinstance(u, (str, bytes)) else u, len(seen))
               for u in index]
    except TypeError as exc:  # an unhashable id (a list, a dict)
        raise TypeError(f"index must hold hashable ids (uid strings, ints), got {exc}") from None
    return torch.tensor(ids, dtype=torch.int64).to(device)


def _config_get(config, key, default=None):
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    getter = getattr(config, "get", None)
    if callable(getter):
        try:
            return getter(key, default)
        except TypeError:
            pass
    return getattr(config, key, default)


def make_estimator(preset: str):
    """verl-signature estimator computing ``group_advantages(..., preset=preset)``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if preset in _ESTIMATORS:
        return _ESTIMATORS[preset]

    def estimator(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index=None, config=None,
                  epsilon: Optional[float] = None, **kwargs):
        if not isinstance(token_level_rewards, torch.Tensor) or token_level_rewards.dim() != 2:
            raise ValueError("token_level_rewards must be a [B, T] tensor, got "
                             f"{getattr(token_level_rewards, 'shape', type(token_level_rewards).__name__)}")
        if not isinstance(response_mask, torch.Tensor) or response_mask.shape != token_level_rewards.shape:
            raise ValueError(f"response_mask must have the shape of token_level_rewards "
                             f"{tuple(token_level_rewards.shape)}, got "
                             f"{getattr(response_mask, 'shape', type(response_mask).__name__)}")
        n = token_level_rewards.shape[0]
        ids = dense_group_ids(index, n, token_level_rewards.device)
        options = {}
        if epsilon is not None:
            options["eps"] = epsilon
        if preset == "verl_grpo" and _config_get(config, "norm_adv_by_std_in_grpo", True) is False:
            options["scale"] = "none"
        with torch.no_grad():
            scores = token_level_rewards.sum(dim=-1)
            adv = group_advantages(scores, group_index=ids, preset=preset, response_mask=response_mask, **options)
        return adv, adv

    estimator.__name__ = estimator.__qualname__ = f"{ESTIMATOR_PREFIX}{preset}"
    estimator.__doc__ = (f"verl advantage estimator: icrm_kernels.group_advantages(..., preset={preset!r}) "
                         "over token_level_rewards.sum(-1), grouped by index; returns (advantages, returns).")
    _ESTIMATORS[preset] = estimator
    return estimator


def register_estimators(presets=None) -> Dict[str, Any]:
    """Register ``icrm_<preset>`` in verl's advantage-estimator registry for each preset (all by
    default). Returns ``{name: function}``. Safe to call more than once. Needs verl (0.4 or
    later: ``verl.trainer.ppo.core_algos.register_adv_est``)."""
    try:
        from verl.trainer.ppo.core_algos import register_adv_est
    except ImportError as exc:
        raise ImportError("register_estimators needs verl (pip install verl); "
                          f"importing verl.trainer.ppo.core_algos failed: {exc}") from exc
    names = sorted(PRESETS) if presets is None else list(presets)
    out = {}
    for preset in names:
        fn = make_estimator(preset)
        register_adv_est(f"{ESTIMATOR_PREFIX}{preset}")(fn)
        out[f"{ESTIMATOR_PREFIX}{preset}"] = fn
    return out
