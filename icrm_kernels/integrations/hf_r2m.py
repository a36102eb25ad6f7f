"""Deprecated: use :func:`icrm_kernels.integrations.hf.apply_r2m`, which patches the model in
place (``save_pretrained``, ``config``, PEFT and TRL keep working; this wrapper has none of them).

R2M on a Hugging Face reward model (``*ForSequenceClassification`` with a linear ``score`` head).

    from transformers import AutoModelForSequenceClassification
    from icrm_kernels.integrations.hf_r2m import R2MRewardModel

    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    r2m = R2MRewardModel.wrap(rm, policy_dim=4096, attn_dim=2048, total_steps=1000)
    r2m.set_step(t)
    rewards = r2m(input_ids, attention_mask, policy_states, cu_seqlens=cu)   # [B]
    r2m.trainable_parameters()   # attention + score head: what R2M's GREBT update trains

The wrapper runs the RM's backbone (``model.base_model``, frozen by :meth:`wrap`), takes the
last hidden state at each sequence's reward token (the last position where ``attention_mask``
is 1, which handles left and right padding like the HF heads do), and feeds it with the
policy's hidden states to :class:`~icrm_kernels.nn.R2MRewardHead`, which reuses the model's own
``score`` layer (same parameter object, no copy). ``transformers`` is not a dependency: any
module with ``base_model`` (returning ``last_hidden_state`` or a tuple) and ``score`` works.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from icrm_kernels.nn.attention import PolicyFeedbackAttention, R2MRewardHead

__all__ = ["R2MRewardModel", "reward_token_hidden"]


def reward_token_hidden(hidden: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    """``hidden[B, S, D]`` at the last position where ``attention_mask[B, S]`` is 1 -> ``[B, D]``."""
    b, s, _ = hidden.shape
    if attention_mask is None:
        idx = torch.full((b,), s - 1, device=hidden.device, dtype=torch.long)
    else:
        if tuple(attention_mask.shape) != (b, s):
            raise ValueError(f"attention_mask must be [B, S] = {(b, s)}, got {tuple(attention_mask.shape)}")
        pos = torch.arange(s, device=hidden.device)
        idx = torch.where(attention_mask.bool(), pos, -1).amax(dim=1).clamp(min=0)
    return hidden[torch.arange(b, device=hidden.device), idx]


class R2MRewardModel(nn.Module):
    """A reward model whose score head also attends over the policy's hidden states (R2M)."""

    def __init__(self, model: nn.Module, head: R2MRewardHead):
        super().__init__()
        self.model = model
        self.head = head

    @classmethod
    def wrap(cls, model: nn.Module, *, policy_dim: int, attn_dim: Optional[int] = None, num_heads: int = 1,
             bias: bool = False, total_steps: int = 1, floor: float = 0.6, freeze_backbone: bool = True,
             attention: Optional[PolicyFeedbackAttention] = None) -> "R2MRewardModel":
        import warnings

        warnings.warn("R2MRewardModel.wrap is deprecated: use icrm_kernels.integrations.hf.apply_r2m(model, ...), "
                      "which patches the model in place so save_pretrained/load_pretrained, PEFT and TRL work",
                      DeprecationWarning, stacklevel=2)
        score = getattr(model, "score", None)
        if not isinstance(score, nn.Linear):
            raise TypeError("model must have a linear `score` head (a *ForSequenceClassification model)")
        if getattr(model, "base_model", None) is None or model.base_model is model:
            raise TypeError("model must expose its backbone as `base_model`")
        head = R2MRewardHead(score, attention, policy_dim=policy_dim, attn_dim=attn_dim, num_heads=num_heads,
                             bias=bias, total_steps=total_steps, floor=floor)
        if freeze_backbone:
            for p in model.base_model.parameters():
                p.requires_grad_(False)
        return cls(model, head)

    def set_step(self, step: int) -> None:
        self.head.set_step(step)

    def trainable_parameters(self):
        """The attention's and the score head's parameters (what R2M updates)."""
        return list(self.head.parameters())

    def reward_token_embedding(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return reward_token_hidden(hidden, attention_mask)

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor], policy_states: Tensor, *,
                cu_seqlens: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        h = self.reward_token_embedding(input_ids, attention_mask)
        return self.head(h, policy_states.to(h.dtype), cu_seqlens=cu_seqlens, key_padding_mask=key_padding_mask)
