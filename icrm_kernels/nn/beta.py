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

from icrm_kernels._checks import check_choice, check_finite_float, check_positive_int
from icrm_kernels.ops.beta import beta_from_logits
from icrm_kernels.vocab import BETA_HEAD_OUTPUTS

OUTPUTS = BETA_HEAD_OUTPUTS  # the accepted ``output`` values (icrm_kernels/vocab.py)


class BetaRewardHead(nn.Module):
    """Two linear heads on the hidden state: mean logit and concentration logit.

    hidden_size: width of the model's last hidden state (a positive int). tau_min: floor on the
    concentration alpha + beta (finite, >= 0). bias: biases on both heads (the mean bias cancels
    in :meth:`score_pair`). conc_init: initial concentration logit (bias of the concentration
    head), softplus(2) ~ 2.1. output: ``"alpha_beta"`` (default) or ``"logits"``, see
    :meth:`forward`. dtype: a floating dtype. ``tau_min`` and ``output`` may be reassigned later;
    they are validated then too. Invalid arguments raise TypeError/ValueError naming them.
    """

    def __init__(self, hidden_size: int, *, tau_min: float = 1e-2, bias: bool = True, conc_init: float = 2.0,
                 output: str = "alpha_beta", device=None, dtype=None):
        check_positive_int(hidden_size, "hidden_size")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        conc_init = check_finite_float(conc_init, "conc_init")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype (or None), got {dtype!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError, ValueError) as exc:
                raise ValueError(f"device must be a torch.device or a device string, got {device!r} ({exc})") from None
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.mean_head = nn.Linear(hidden_size, 1, bias=bias, **kw)
        self.conc_head = nn.Linear(hidden_size, 1, bias=bias, **kw)
        self.tau_min = tau_min
        self.output = output
        with torch.no_grad():
            self.conc_head.weight.zero_()
            if bias:
                self.conc_head.bias.fill_(conc_init)

    # Properties rather than plain attributes: both are public knobs users set after construction
    # (``head.output = "logits"``), and a typo there would otherwise only show up as wrong
    # numbers (any string other than "logits" meant alpha_beta) or a late error in the kernel.
    @property
    def tau_min(self) -> float:
        return self._tau_min

    @tau_min.setter
    def tau_min(self, value) -> None:
        self._tau_min = check_finite_float(value, "tau_min", low=0.0)

    @property
    def output(self) -> str:
        return self._output

    @output.setter
    def output(self, value) -> None:
        self._output = check_choice(value, "output", OUTPUTS)

    def __setstate__(self, state):
        # heads pickled before tau_min/output became validated properties kept them as plain
        # attributes; move them to the properties' storage so such checkpoints still load
        for name in ("tau_min", "output"):
            if name in state:
                state["_" + name] = state.pop(name)
        super().__setstate__(state)

    def _check_hidden(self, hidden, name: str) -> None:
        """The linear layers' own errors ("mat1 and mat2 shapes cannot be multiplied") do not say
        which argument is wrong: check here and name it."""
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(hidden).__name__}")
        if not hidden.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {hidden.dtype}")
        w = self.mean_head.weight
        if hidden.dim() == 0 or hidden.shape[-1] != w.shape[1]:
            raise ValueError(f"{name} must have shape [..., hidden_size={w.shape[1]}], got {tuple(hidden.shape)}")
        if hidden.dtype != w.dtype:
            raise TypeError(f"{name} has dtype {hidden.dtype} but the head's weights are {w.dtype}; "
                            f"cast one to the other (e.g. head.to({hidden.dtype}))")
        if hidden.device != w.device:
            raise ValueError(f"{name} is on {hidden.device} but the head's weights are on {w.device}")

    @classmethod
    def from_score(cls, score: nn.Linear, **kwargs) -> "BetaRewardHead":
        """Build from an existing reward head ``score`` (nn.Linear(hidden, 1)): its weights become the
        mean head, so the initial mean logit is the old reward."""
        if not isinstance(score, nn.Linear):
            raise TypeError(f"score must be an nn.Linear with out_features=1, got {type(score).__name__}")
        if score.out_features != 1:
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
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(attr, str):
            raise TypeError(f"attr must be a str (the name of the score layer), got {type(attr).__name__}")
        if not hasattr(model, attr):
            raise ValueError(f"attr: model ({type(model).__name__}) has no attribute {attr!r}")
        head = cls.from_score(getattr(model, attr), **kwargs)
        setattr(model, attr, head)
        if hasattr(model, "config"):
            model.config.num_labels = 2
        return head

    def logits(self, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean_logit, conc_logit), each hidden.shape[:-1]."""
        self._check_hidden(hidden, "hidden")
        return self.mean_head(hidden).squeeze(-1), self.conc_head(hidden).squeeze(-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., 2]: (alpha, beta), or (mean_logit, conc_logit) when ``self.output == "logits"``."""
        m, c = self.logits(hidden)
        if self.output == "logits":
            return torch.stack([m, c], -1)
        alpha, beta = beta_from_logits(m, c, self.tau_min)
        return torch.stack([alpha, beta], -1)

    def pair_logits(self, h_a: torch.Tensor, h_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(mean_logit, conc_logit) for "a preferred to b": f(h_a) - f(h_b), g(h_a) + g(h_b).
        h_a and h_b broadcast against each other (e.g. one reference answer against many)."""
        self._check_hidden(h_a, "h_a")
        self._check_hidden(h_b, "h_b")
        try:
            torch.broadcast_shapes(h_a.shape[:-1], h_b.shape[:-1])
        except RuntimeError:
            raise ValueError(f"h_a and h_b must have broadcastable leading shapes, got {tuple(h_a.shape)} and "
                             f"{tuple(h_b.shape)}") from None
        ma, ca = self.logits(h_a)
        mb, cb = self.logits(h_b)
        return ma - mb, ca + cb

    def score_pair(self, h_a: torch.Tensor, h_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) of Beta over P(a preferred to b); swapping a and b swaps alpha and beta."""
        m, c = self.pair_logits(h_a, h_b)
        return beta_from_logits(m, c, self.tau_min)

    def extra_repr(self) -> str:
        return f"hidden_size={self.mean_head.in_features}, tau_min={self.tau_min}, output={self.output!r}"
