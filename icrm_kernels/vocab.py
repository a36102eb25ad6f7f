"""Every option vocabulary of the library, defined once.

Each vocabulary is an ordered tuple of the strings an option accepts; a value's position in
the tuple is the integer code that the Triton kernels (``tl.constexpr`` parameters) and the C++
ops (``csrc``) receive. Named integer constants (plain ints, ``<VOCABULARY>_<VALUE>``) give
those codes to code that compares them, kernels included (``import icrm_kernels.vocab as V``,
then ``if BASELINE == V.BASELINE_BATCH_MEAN:`` inside an ``@triton.jit`` function: Triton reads
attributes of an imported module as compile-time constants).

The codes are an ABI: the C++ enums (``csrc/advantages.cpp``), the special-function selector
(``csrc/beta.cpp`` ``special_unary``) and the ELBO reduction (``csrc/beta.cpp`` ``beta_elbo``)
use the same numbers, which ``tests/test_vocabularies.py`` checks against this module. Append
new values; never reorder. No imports beyond the standard library: kernels and the reference
read this module alike.
"""
from __future__ import annotations

from typing import Dict, Tuple

# ------------------------------------------ group_advantages (docs/advantages.md#formula-and-options)
BASELINES: Tuple[str, ...] = ("none", "group_mean", "leave_one_out", "batch_mean")
"""``baseline`` b_i of ``A_i = (r_i - b_i) / (s_i + eps)``. none: b = 0; group_mean: the mean of
the row's group; leave_one_out: the mean of the other rows of its group, (sum_g r - r_i)/(n_g - 1)
(RLOO); batch_mean: the mean of every valid row of the batch."""
BASELINE_NONE = 0
BASELINE_GROUP_MEAN = 1
BASELINE_LEAVE_ONE_OUT = 2
BASELINE_BATCH_MEAN = 3

SCALES: Tuple[str, ...] = ("none", "group_std", "batch_std", "bnpo")
"""``scale`` s_i. none: s = 1 and eps = 0 (Dr. GRPO); group_std: the std of the row's group;
batch_std: the std of the raw rewards over the batch (TRL scale_rewards="batch"); bnpo: BNPO's
Beta-normalized A_i = w_g (s_i - p_g) (needs baseline group_mean; ``bnpo_bounds`` min-max
scaling)."""
SCALE_NONE = 0
SCALE_GROUP_STD = 1
SCALE_BATCH_STD = 2
SCALE_BNPO = 3

WHITENS: Tuple[str, ...] = ("none", "sample", "token")
"""``whiten``: batch whitening after the group normalization. none: no whitening; sample:
A <- (A - mean) / spread over the samples; token: each sample weighted by its valid tokens in
``response_mask`` (verl masked_whiten)."""
WHITEN_NONE = 0
WHITEN_SAMPLE = 1
WHITEN_TOKEN = 2

WHITEN_STDS: Tuple[str, ...] = ("std_eps", "rsqrt_eps", "rsqrt_clamp")
"""``whiten_std``: the whitening's spread form. std_eps: 1 / (sqrt(var) + whiten_eps) (the
default of whiten="sample"); rsqrt_eps: rsqrt(var + whiten_eps) (the default of whiten="token",
verl); rsqrt_clamp: rsqrt(max(var, whiten_eps)) (OpenRLHF)."""
WHITEN_STD_STD_EPS = 0
WHITEN_STD_RSQRT_EPS = 1
WHITEN_STD_RSQRT_CLAMP = 2

SINGLETONS: Tuple[str, ...] = ("zero", "raw", "nan")
"""``singleton``: a group with one valid row, when a group-level statistic is used. zero: A = 0;
raw: the group's mean is 0 and its std 1, as verl's loop (A = r / (1 + eps) with group_std,
A = r without a scale; BNPO: p = 0, kept in the over-group moments); nan: A = NaN."""
SINGLETON_ZERO = 0
SINGLETON_RAW = 1
SINGLETON_NAN = 2

NAN_POLICIES: Tuple[str, ...] = ("propagate", "omit", "raise")
"""``nan_policy``: NaN rewards. propagate: a NaN poisons its group, and the batch for batch
statistics; omit: NaN rows leave every statistic and get A = 0 (K > 1: a row is NaN only when
all its components are, components are nansum'd); raise: ValueError on the checked path
(propagate inside ``unchecked()`` and torch.compile). Host-side only (kernels get a bool OMIT)."""
NAN_POLICY_PROPAGATE = 0
NAN_POLICY_OMIT = 1
NAN_POLICY_RAISE = 2

AGGREGATIONS: Tuple[str, ...] = ("sum_then_normalize", "normalize_then_sum")
"""``aggregation`` of K reward components. sum_then_normalize: weighted sum, then normalize
(TRL default); normalize_then_sum: normalize each component in its group, weighted sum, then a
batch normalization (TRL GDPO). Host-side only."""
AGGREGATION_SUM_THEN_NORMALIZE = 0
AGGREGATION_NORMALIZE_THEN_SUM = 1

# ------------------------------------------------------------------ special functions
SPECIAL_UNARY: Tuple[str, ...] = ("digamma", "trigamma", "lgamma")
"""The elementwise special function a selector picks (Triton ``_unary_kernel`` WHICH, C++
``special_unary(x, which)``). digamma: psi(x) = d/dx log Gamma(x); trigamma: psi'(x); lgamma:
log Gamma(x); all for x > 0."""
UNARY_DIGAMMA = 0
UNARY_TRIGAMMA = 1
UNARY_LGAMMA = 2

# ------------------------------------------------------------------ losses
REDUCTIONS: Tuple[str, ...] = ("none", "sum", "mean")
"""``reduction`` of a loss (``beta_elbo_loss``, ``beta_elbo_loss_from_logits``, ``grebt_loss``).
none: one loss per element (group); sum: their (weighted) sum; mean: the ELBO's sum_i w_i L_i / N,
GREBT's mean over the groups of >= 2 rows. Codes: C++ ``beta_elbo(..., reduction)``."""
REDUCTION_NONE = 0
REDUCTION_SUM = 1
REDUCTION_MEAN = 2

# ------------------------------------------------------------------ Beta posteriors
BETA_STATISTICS: Tuple[str, ...] = ("mean", "var", "log_mean", "log1m_mean", "logit_mean", "entropy")
"""A statistic of Beta(alpha, beta) over theta (``steer(statistic=...)``; the fields of
``BetaStats`` and the rows of the ``beta_stats`` kernels' [6, n] output, in this order). mean:
alpha / s (s = alpha + beta); var: alpha beta / (s^2 (s + 1)); log_mean: E[log theta] =
psi(alpha) - psi(s); log1m_mean: E[log(1 - theta)] = psi(beta) - psi(s); logit_mean:
E[logit theta] = psi(alpha) - psi(beta); entropy: the differential entropy."""
BETA_STAT_MEAN = 0
BETA_STAT_VAR = 1
BETA_STAT_LOG_MEAN = 2
BETA_STAT_LOG1M_MEAN = 3
BETA_STAT_LOGIT_MEAN = 4
BETA_STAT_ENTROPY = 5

BETA_HEAD_OUTPUTS: Tuple[str, ...] = ("alpha_beta", "logits")
"""``BetaRewardHead(output=...)``: what the head's forward returns. alpha_beta: the Beta
parameters (alpha, beta); logits: the raw [..., 2] logits (mean_logit, conc_logit), for
``beta_elbo_loss_from_logits``.
Host-side only."""
BETA_HEAD_OUTPUT_ALPHA_BETA = 0
BETA_HEAD_OUTPUT_LOGITS = 1

# ------------------------------------------------------------------ registry
VOCABULARIES: Dict[str, Tuple[str, ...]] = {
    "baseline": BASELINES,
    "scale": SCALES,
    "whiten": WHITENS,
    "whiten_std": WHITEN_STDS,
    "singleton": SINGLETONS,
    "nan_policy": NAN_POLICIES,
    "aggregation": AGGREGATIONS,
    "special_unary": SPECIAL_UNARY,
    "reduction": REDUCTIONS,
    "beta_statistic": BETA_STATISTICS,
    "beta_head_output": BETA_HEAD_OUTPUTS,
}
"""option kind -> its vocabulary."""

# the prefix of each vocabulary's named constants (tests check constant == position)
CONSTANT_PREFIXES: Dict[str, str] = {
    "baseline": "BASELINE_",
    "scale": "SCALE_",
    "whiten": "WHITEN_",
    "whiten_std": "WHITEN_STD_",
    "singleton": "SINGLETON_",
    "nan_policy": "NAN_POLICY_",
    "aggregation": "AGGREGATION_",
    "special_unary": "UNARY_",
    "reduction": "REDUCTION_",
    "beta_statistic": "BETA_STAT_",
    "beta_head_output": "BETA_HEAD_OUTPUT_",
}


def codes(vocabulary: Tuple[str, ...]) -> Dict[str, int]:
    """{value: code} of one vocabulary (code = position), for launchers that look codes up."""
    return {name: i for i, name in enumerate(vocabulary)}


def code(kind: str, value: str) -> int:
    """The integer code of ``value`` in the vocabulary of option ``kind``; ValueError if unknown."""
    vocabulary = VOCABULARIES[kind]
    try:
        return vocabulary.index(value)
    except ValueError:
        raise ValueError(f"{kind} must be one of {list(vocabulary)}, got {value!r}") from None
