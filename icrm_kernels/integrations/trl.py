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
  ``trl_none``). It matches TRL's advantages to float32 rounding, so a run trains like TRL's:
  tested with the same seed over two steps, the losses are bit for bit TRL's for ``batch`` and
  ``none``; for ``group`` TRL's float32 ``nanstd`` and the package's shifted two-pass std round
  differently and a loss can differ in its last bits (6e-8 measured).
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

__all__ = ["IcrmGRPOTrainer", "R2MStepCallback", "R2MRewardFunction", "trl_preset", "ADVANTAGE_CHOICES"]

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
        for fn in self.reward_funcs:  # an R2M reward function without a policy scores with the one trained here
            if isinstance(fn, R2MRewardFunction) and fn.policy is None:
                fn.policy = self.model
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


class R2MRewardFunction:
    """A TRL reward function scoring with an R2M reward model (a ``*ForSequenceClassification``
    patched by ``icrm_kernels.integrations.hf.apply_r2m``), fed the policy's hidden states.

    TRL does not expose the hidden states of its own policy forward (it keeps only the
    log-probabilities), so this function runs **one extra policy forward** per generation batch,
    under ``torch.no_grad()``, over prompt + completion tokens with ``output_hidden_states=True``;
    the last layer's states of the completion tokens, packed ``[T, D_p]`` with ``cu_seqlens``,
    are the R2M attention's keys and values. The reward model reads prompt + completion text with
    its own tokenizer, TRL's convention for model rewards. It also sets the head's RL step from
    TRL's ``trainer_state`` (so :class:`R2MStepCallback` is optional).

    reward_model: the patched model; reward_tokenizer: its tokenizer; policy_tokenizer: the
    policy's (to re-tokenize the prompts as TRL did); policy: the policy model, or None to let
    :class:`IcrmGRPOTrainer` bind the model it trains.
    """

    def __init__(self, reward_model, reward_tokenizer, policy_tokenizer, policy=None, *, name: str = "r2m_reward"):
        if not callable(getattr(getattr(reward_model, "score", None), "set_step", None)):
            raise TypeError("reward_model must be patched with icrm_kernels.integrations.hf.apply_r2m "
                            "(its score head has set_step)")
        self.reward_model = reward_model
        self.reward_tokenizer = reward_tokenizer
        self.policy_tokenizer = policy_tokenizer
        self.policy = policy
        self.__name__ = name

    def policy_states(self, prompts, completion_ids):
        """(packed [T, D_p] last-layer states of the completion tokens, cu_seqlens [B+1] int32)."""
        if self.policy is None:
            raise ValueError("R2MRewardFunction has no policy: pass policy= or use it with IcrmGRPOTrainer")
        device = next(self.policy.parameters()).device
        seqs, spans = [], []
        for p, c in zip(prompts, completion_ids):
            pid = self.policy_tokenizer(p, add_special_tokens=False)["input_ids"]
            seqs.append(list(pid) + list(c))
            spans.append((len(pid), len(pid) + len(c)))
        width = max(len(s) for s in seqs)
        pad = self.policy_tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        with torch.no_grad():
            out = self.policy(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        hidden = out.hidden_states[-1]
        parts = [hidden[i, a:b] for i, (a, b) in enumerate(spans)]
        lens = torch.tensor([b - a for a, b in spans])
        cu = torch.zeros(len(parts) + 1, dtype=torch.int32)
        cu[1:] = lens.cumsum(0)
        return torch.cat(parts), cu.to(hidden.device)

    def __call__(self, prompts, completions, completion_ids=None, trainer_state=None, **kwargs):
        if completion_ids is None:
            raise ValueError("completion_ids is needed (TRL passes it to reward functions)")
        if trainer_state is not None:
            self.reward_model.score.set_step(int(trainer_state.global_step))
        states, cu = self.policy_states(prompts, completion_ids)
        device = next(self.reward_model.parameters()).device
        enc = self.reward_tokenizer([p + c for p, c in zip(prompts, completions)], return_tensors="pt",
                                    padding=True, padding_side="right", add_special_tokens=False)
        dtype = next(self.reward_model.parameters()).dtype
        with torch.no_grad():
            out = self.reward_model(input_ids=enc["input_ids"].to(device),
                                    attention_mask=enc["attention_mask"].to(device),
                                    policy_states=states.to(device=device, dtype=dtype),
                                    policy_cu_seqlens=cu.to(device))
        return out.logits[:, 0].float().tolist()
