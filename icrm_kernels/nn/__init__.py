"""Modules that drop into a Hugging Face reward model."""

# --- R2M (family 2) ---
from icrm_kernels.nn.attention import PolicyFeedbackAttention, R2MRewardHead


# --- ICRM (family 3) ---
from icrm_kernels.nn.beta import BetaRewardHead  # noqa: E402,F401
