"""Modules that drop into a Hugging Face reward model."""

# --- R2M (family 2) ---
# (imports of nn/attention.py go here)


# --- ICRM (family 3) ---
from icrm_kernels.nn.beta import BetaRewardHead  # noqa: E402,F401
