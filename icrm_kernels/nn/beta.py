"""``BetaRewardHead``: ICRM's two-headed reward head, a drop-in for the ``score`` nn.Linear of a
Hugging Face ``AutoModelForSequenceClassification`` reward model.

The head maps a hidden state h to a mean logit f(h) and a concentration logit g(h), and returns
``torch.stack([alpha, beta], -1)`` with (alpha, beta) = beta_from_logits(f(h), g(h), tau_min).
Returning one tensor with 2 "labels" keeps HF's forward working unchanged: the model pools the
last token as usual and ``model(...).logits`` is ``[B, 2]`` = (alpha, beta). Set
``head.output = "logits"`` to get the raw ``[..., 2]`` = (mean_logit, conc_logit) instead and
train with the fused :func:`icrm_kernels.beta_elbo_loss_from_logits`.

Scoring a pair (a, b), "a preferred to b" (:meth:`BetaRewardHead.score_pair`):
mean_logit = f(h_a) - f(h_b) and conc_logit = g(h_a) + g(h_b). Swapping a and b negates the
mean logit (mu -> 1 - mu) and keeps the concentration, i.e. swaps alpha and beta, exactly.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from icrm_kernels.ops.beta import beta_from_logits


class BetaRewardHead(nn.Module):
    """Two linear heads on the hidden state: mean logit and concentration logit.

    hidden_size: width of the model's last hidden state. tau_min: floor on the concentration
    alpha + beta. bias: biases on both heads (the mean bias cancels in :meth:`score_pair`).
    conc_init: initial concentration logit (bias of the concentration head), softplus(2) ~ 2.1.
    """

    def __init__(self, hidden_size: int, *, tau_min: float = 1e-2, bias: bool = True, conc_init: float = 2.0,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.mean_head = nn.Linear(hidden_size, 1, bias=bias, **kw)
        self.conc_head = nn.Linear(hidden_size, 1, bias=bias, **kw)
        self.tau_min = float(tau_min)
        self.output = "alpha_beta"
        with torch.no_grad():
            self.conc_head.weight.zero_()
            if bias:
                self.conc_head.bias.fill_(conc_init)

    @classmethod
    def from_score(cls, score: nn.Linear, **kwargs) -> "BetaRewardHead":
        """Build from an existing reward head ``score`` (nn.Linear(hidden, 1)): its weights become the
        mean head, so the initial mean logit is the old reward."""
        if not isinstance(score, nn.Linear) or score.out_features != 1:
            raise ValueError(f"score must be an nn.Linear with out_features=1, got {score!r}")
        head = cls(score.in_features, bias=score.bias is not None, device=score.weight.device,
                   dtype=score.weight.dtype, **kwargs)
        with torch.no_grad():
            head.mean_head.weight.copy_(score.weight)
            if score.bias is not None:
                head.mean_head.bias.copy_(score.bias)
        return head

    @classmethod
    def replace_score(cls, model: nn.Module, attr: str = "score", **kwargs) -> "BetaRewardHead":
        """Swap ``model.<attr>`` (HF's ``score``) for a BetaRewardHead and set ``config.num_labels = 2``."""
        head = cls.from_score(getattr(model, attr), **kwargs)
        setattr(model, attr, head)
        if hasattr(model, "config"):
            model.config.num_labels = 2
        return head

    def logits(self, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean_logit, conc_logit), each hidden.shape[:-1]."""
        return self.mean_head(hidden).squeeze(-1), self.conc_head(hidden).squeeze(-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., 2]: (alpha, beta), or (mean_logit, conc_logit) when ``self.output == "logits"``."""
        m, c = self.logits(hidden)
        if self.output == "logits":
            return torch.stack([m, c], -1)
        alpha, beta = beta_from_logits(m, c, self.tau_min)
        return torch.stack([alpha, beta], -1)

    def pair_logits(self, h_a: torch.Tensor, h_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean_logit, conc_logit) for "a preferred to b": f(h_a) - f(h_b), g(h_a) + g(h_b)."""
        ma, ca = self.logits(h_a)
        mb, cb = self.logits(h_b)
        return ma - mb, ca + cb

    def score_pair(self, h_a: torch.Tensor, h_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) of Beta over P(a preferred to b); swapping a and b swaps alpha and beta."""
        m, c = self.pair_logits(h_a, h_b)
        return beta_from_logits(m, c, self.tau_min)

    def extra_repr(self) -> str:
        return f"hidden_size={self.mean_head.in_features}, tau_min={self.tau_min}, output={self.output!r}"
