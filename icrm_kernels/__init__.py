"""icrm-kernels: fused GPU kernels (Triton) and CPU kernels (C++) for reward models in RLHF.

Every public op is listed here. Each has three implementations that compute the same function:
the Triton kernel (``icrm_kernels/triton/<family>.py``), the C++ CPU kernel
(``csrc/<family>.cpp``) and the float64-capable torch reference
(``icrm_kernels/reference/<family>.py``). ``icrm_kernels/ops/<family>.py`` holds the public op,
its checks and the op's record (``icrm_kernels/_op.py`` builds the torch.library op and the
dispatch between the three from it).
"""
from icrm_kernels._backend import available_backends, use_backend
from icrm_kernels._checks import unchecked

__version__ = "0.1.0"

# --- family 1a: grouped advantages, GRPO/RLOO/.../BNPO (docs/advantages.md) -----------------------------
from icrm_kernels.ops.advantages import PRESETS as ADVANTAGE_PRESETS  # noqa: E402
from icrm_kernels.ops.advantages import group_advantages, group_advantages_direct  # noqa: E402


# --- family 1b: pairwise group ops, Pref-GRPO win rate and R2M's GREBT loss (docs/pairwise.md) ---------
from icrm_kernels.ops.pairwise import grebt_loss, group_win_rate  # noqa: E402,F401


# --- family 2: sequence-to-token cross-attention, R2M (docs/attention.md) -------------------------------
from icrm_kernels.ops.attention import r2m_omega, r2m_reward, seq_to_token_attention


# --- family 3: Beta posterior math, ICRM (docs/beta.md) --------------------------------------------
from icrm_kernels.ops.beta import (  # noqa: E402
    BetaStats,
    beta_elbo_loss,
    beta_elbo_loss_from_logits,
    beta_from_logits,
    beta_kl,
    beta_posterior,
    beta_stats,
    steer,
)
from icrm_kernels.ops.special import betaln, digamma, lgamma, trigamma  # noqa: E402
from icrm_kernels.pareto import hypervolume  # noqa: E402


import types as _types  # noqa: E402

__all__ = sorted(n for n, v in globals().items() if not n.startswith("_") and not isinstance(v, _types.ModuleType))
