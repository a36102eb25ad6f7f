"""Float64-capable references for the special functions (plain torch)."""
from __future__ import annotations

import torch


def digamma(x: torch.Tensor) -> torch.Tensor:
    """psi(x) = d/dx log Gamma(x)."""
    return torch.digamma(x)


def trigamma(x: torch.Tensor) -> torch.Tensor:
    """psi'(x)."""
    return torch.polygamma(1, x)


def lgamma(x: torch.Tensor) -> torch.Tensor:
    """log Gamma(x)."""
    return torch.lgamma(x)


def betaln(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b)."""
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
