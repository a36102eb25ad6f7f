"""TRL: a ``GRPOTrainer`` whose advantages come from :func:`icrm_kernels.group_advantages`, and a
callback that drives an R2M head's step from the trainer.

    from icrm_kernels.integrations.trl import IcrmGRPOTrainer, R2MStepCallback

    trainer = IcrmGRPOTrainer(model=policy, reward_funcs=[...], args=GRPOConfig(...),
                              train_dataset=ds, processing_class=tok,
                              advantage_preset="bnpo")          # or "dler", "verl_rloo", "win_rate", ...
    trainer.add_callback(R2MStepCallback(reward_model.score))   # an R2M head: omega(t) follows training

What changes against TRL's ``GRPOTrainer``: only the advantages. TRL computes its advantages
inline in ``_generate_and_score_completions``; :class:`IcrmGRPOTrainer` lets TRL do everything
else (generation, rewards, logging, the loss), keeps the rewards TRL gathered over every process
(``rewards_per_func``, ``[N, K]``, NaN where a reward function returned None) and replaces the
advantages of this process's rows by one ``group_advantages`` call over them:

``group_advantages(rewards_per_func, group_size=num_generations, reward_weights=args.reward_weights,
aggregation=args.multi_objective_aggregation, preset=advantage_preset, **advantage_options)``

- ``advantage_preset="auto"`` (default): the preset that reproduces TRL's own formula for
  ``args.scale_rewards`` (``"group"`` -> ``trl_group``, ``"batch"`` -> ``trl_batch``, ``"none"`` ->
  ``trl_none``). It matches TRL's advantages to float32 rounding (the package accumulates in
  float64 on the CPU, TRL in float32: differences of a few 1e-7), so a run trains like TRL's
  to that precision (tested: the same seed gives the same losses over two steps to 1e-5).
- ``advantage_preset=None``: TRL's own code, untouched.
- any preset of :data:`icrm_kernels.ADVANTAGE_PRESETS` (``bnpo``, ``dler``, ``verl_rloo``,
  ``openrlhf_reinforce_baseline``, ...) and ``advantage_options`` (explicit option keywords,
  which override the preset's).
- ``advantage_preset="win_rate"`` (Pref-GRPO): each response's reward becomes its win rate
  within its group, ``group_win_rate(rewards, group_size=G, temperature=win_rate_temperature)``
  (hard wins when the temperature is None), then ``group_advantages(..., preset="trl_group")``
  normalizes the win rates. The rewards are first aggregated over the reward functions (weighted
  nansum, TRL's rule).

Completions that every reward function scored None get advantage 0, as in TRL.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from icrm_kernels.ops.advantages import PRESETS, group_advantages
from icrm_kernels.ops.pairwise import group_win_rate

try:
    from transformers import TrainerCallback
    from trl import GRPOTrainer
except ImportError as _exc:  # an optional integration: say what is missing when it is used
    raise ImportError(f"icrm_kernels.integrations.trl needs trl and transformers (pip install trl): {_exc}") from _exc

__all__ = ["IcrmGRPOTrainer", "R2MStepCallback", "trl_preset", "ADVANTAGE_CHOICES"]

_SCALE_TO_PRESET = {"group": "trl_group", "batch": "trl_batch", "none": "trl_none"}
# what advantage_preset accepts beyond the presets
ADVANTAGE_CHOICES = ("auto", "win_rate", *sorted(PRESETS))


def trl_preset(scale_rewards) -> str:
    """The preset that reproduces TRL's advantage formula for ``GRPOConfig.scale_rewards``."""
    if scale_rewards is True:  # older TRL: a bool, True = per-group std
        scale_rewards = "group"
    if scale_rewards is False:
        scale_rewards = "none"
    if scale_rewards not in _SCALE_TO_PRESET:
        raise ValueError(f"scale_rewards must be one of {sorted(_SCALE_TO_PRESET)}, got {scale_rewards!r}")
    return _SCALE_TO_PRESET[scale_rewards]


class IcrmGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with the advantages computed by :func:`icrm_kernels.group_advantages`
    (module docstring). Extra keyword arguments, the rest are ``GRPOTrainer``'s:

    advantage_preset: ``"auto"`` | None | a preset name | ``"win_rate"``.
    advantage_options: dict of ``group_advantages`` option keywords over the preset.
    win_rate_temperature: Pref-GRPO's soft win rate temperature (None: hard wins, ties 0.5).
    """

    def __init__(self, *args, advantage_preset: Optional[str] = "auto",
                 advantage_options: Optional[Dict[str, Any]] = None,
                 win_rate_temperature: Optional[float] = None, **kwargs):
        if advantage_preset is not None and (not isinstance(advantage_preset, str)
                                             or advantage_preset not in ADVANTAGE_CHOICES):
            raise ValueError(f"advantage_preset must be None or one of {list(ADVANTAGE_CHOICES)}, "
                             f"got {advantage_preset!r}")
        if advantage_options is not None and not isinstance(advantage_options, dict):
            raise TypeError(f"advantage_options must be a dict of group_advantages options, "
                            f"got {type(advantage_options).__name__}")
        for bad in ("rewards", "group_size", "cu_groups", "group_index", "reward_weights", "aggregation", "preset"):
            if advantage_options and bad in advantage_options:
                raise ValueError(f"advantage_options must not set {bad!r}: the trainer provides it")
        super().__init__(*args, **kwargs)
        if advantage_preset == "auto":
            advantage_preset = trl_preset(self.scale_rewards)
        self.advantage_preset = advantage_preset
        self.advantage_options = dict(advantage_options or {})
        self.win_rate_temperature = win_rate_temperature
        self._icrm_rewards = None
        if advantage_preset is not None and advantage_preset != "win_rate":
            # fail at construction, not at the first step, on an option group_advantages refuses
            group_advantages(torch.zeros(2), group_size=2, preset=advantage_preset, **self.advantage_options)

    # TRL calls this once per generation batch with the rewards of every process gathered
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._icrm_rewards = rewards_per_func
        return rewards_per_func

    def compute_advantages(self, rewards_per_func: torch.Tensor, num_generations: int) -> torch.Tensor:
        """``[N]`` advantages of every process's rows from ``rewards_per_func[N, K]``."""
        w = self.reward_weights.to(rewards_per_func.device)
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        if self.advantage_preset == "win_rate":
            rewards = (rewards_per_func * w.unsqueeze(0)).nansum(dim=1)
            wins = group_win_rate(rewards, group_size=num_generations, temperature=self.win_rate_temperature)
            wins = torch.where(unscorable, torch.full_like(wins, float("nan")), wins)
            adv = group_advantages(wins, group_size=num_generations, preset="trl_group", **self.advantage_options)
        else:
            adv = group_advantages(rewards_per_func, group_size=num_generations, reward_weights=w,
                                   aggregation=self.multi_objective_aggregation, preset=self.advantage_preset,
                                   **self.advantage_options)
        return torch.where(unscorable, torch.zeros_like(adv), adv)

    def _generate_and_score_completions(self, inputs):
        self._icrm_rewards = None
        output = super()._generate_and_score_completions(inputs)
        if self.advantage_preset is None or self._icrm_rewards is None:
            return output
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        with torch.no_grad():
            adv = self.compute_advantages(self._icrm_rewards, num_generations)
        local = output["advantages"]
        n_local = local.shape[0]
        start = self.accelerator.process_index * n_local
        output["advantages"] = adv[start:start + n_local].to(dtype=local.dtype, device=local.device)
        logged = self._logs.get("advantages") if isinstance(self._logs, dict) else None
        if logged is not None and len(logged) >= adv.numel():  # the logged column shows what is trained on
            for _ in range(adv.numel()):
                logged.pop()
            logged.extend(adv.tolist())
        self._icrm_rewards = None
        return output


class R2MStepCallback(TrainerCallback):
    """Sets an R2M head's RL step (``head.set_step(state.global_step + offset)``) at the start of
    each optimizer step, so that omega(t) follows training. ``head``: any object with
    ``set_step`` (``icrm_kernels.nn.R2MRewardHead``, a patched reward model's ``score``)."""

    def __init__(self, head, offset: int = 0):
        if not callable(getattr(head, "set_step", None)):
            raise TypeError(f"head must have a set_step(step) method (an R2M head), got {type(head).__name__}")
        self.head = head
        self.offset = int(offset)

    def on_step_begin(self, args, state, control, **kwargs):
        self.head.set_step(state.global_step + self.offset)
        return control
