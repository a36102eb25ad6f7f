"""ICRM's Beta posterior math (docs/beta.md#math): the public ops.

ICRM's reward model outputs a Beta(alpha, beta) over theta = P(a preferred to b), from two heads:
a mean logit and a concentration logit. The ops here turn those into Beta parameters, train them
with the variational ELBO, update them with in-context demonstrations, and read rewards off them.

Dispatch (the op records below; icrm_kernels/_op.py): CUDA tensors -> Triton kernels (fp32 math, bf16/fp16/fp32
inputs); CPU tensors -> the C++ extension (float and double kernels; bf16/fp16 upcast), or the
float64-capable torch reference (``icrm_kernels/reference/beta.py``) when it is not built.
float64 CUDA tensors run the torch reference (the kernels compute in fp32).

Numerics. KL(Beta(a,b) || Beta(a0,b0)) and the Beta entropy contain ln B(a,b) and a psi(a) + ...
terms of size ~1e7 at a, b ~ 1e6 that cancel to O(1); evaluated naively in fp32 they lose every
digit. The kernels use the exact rearrangement

    -ln B(a,b) + a(psi(a)-psi(s)) + b(psi(b)-psi(s)) = log(a b / s)/2 - log(2 pi)/2 - 1/2 - G(a) - G(b) + G(s)

(G the entropy remainder, ``icrm_kernels/triton/special.py``) and dKL/da written with
psi'(z) - 1/z, so concentrations from 1e-4 to 1e6 stay accurate in fp32.

Checked path: invalid values (alpha or beta <= 0 or not finite, labels outside [0, 1], priors
<= 0, discount outside (0, 1], segment ids out of range) raise ``ValueError`` naming the argument.
Those checks read tensor values (a device synchronisation); inside ``icrm_kernels.unchecked()``
they are skipped: alpha or beta <= 0, -inf or NaN then give NaN (every backend), labels outside
[0, 1] the linear extension of the loss; never a crash, a hang or an out-of-bounds access.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from icrm_kernels import _backend, _op
from icrm_kernels._checks import (
    check_choice,
    check_finite_float,
    check_finite_values,
    check_index,
    check_like,
    check_offsets,
    check_pair,
    check_positive,
    check_tensor,
    check_unit_interval,
    check_values,
    VALUE_BOUNDS,
    compiling,
    value_bounds,
    value_checks_enabled,
)
from icrm_kernels import vocab
from icrm_kernels._layout import segments_of_index
from icrm_kernels.ops.special import TRIGAMMA
from icrm_kernels.profiling import ranged

Tensor = torch.Tensor
_REDUCTIONS = vocab.codes(vocab.REDUCTIONS)  # reduction -> the C++ beta_elbo code (icrm_kernels/vocab.py)


# defined with the math it names; the public name is this one (icrm_kernels.BetaStats)
from icrm_kernels.reference.beta import BetaStats  # noqa: E402

STATISTICS = vocab.BETA_STATISTICS  # == BetaStats._fields (tests/test_vocabularies.py)


def _grad_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=64)
def _lnbeta(a: float, b: float) -> float:
    # through the Stirling remainders: math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b) loses
    # log10(a) digits for a large prior (lgamma ~ 1e7 at 1e6). Cached: every ELBO call needs it
    # for the same priors, and the float64 torch evaluation costs ~200 µs of host time a call.
    from icrm_kernels.reference.special import betaln

    return float(betaln(torch.tensor(float(a), dtype=torch.float64), torch.tensor(float(b), dtype=torch.float64)))


# ==================================================================== ELBO / KL (one kernel)
# Each implementation takes the op's arguments (x1, x2, labels, weights, prior_alpha, prior_beta,
# kl_weight, tau_min, from_logits, reduction code, compute_grad) and returns (loss, dL/dx1,
# dL/dx2): the per-element gradients of the *unreduced* weighted loss, written by the forward
# kernel (empty when compute_grad is False).
def _elbo_finish(x1, loss, g1, g2, reduction, compute_grad):
    """The op's output dtypes and shapes (each .to / .reshape that would be a no-op is skipped:
    ~1 µs of host time apiece)."""
    shape = x1.shape
    gdt = _grad_dtype(x1)
    if loss.dtype != x1.dtype:
        loss = loss.to(x1.dtype)
    if reduction == vocab.REDUCTION_NONE:
        if loss.shape != shape:
            loss = loss.reshape(shape)
    elif loss.dim():
        loss = loss.reshape(())
    if compute_grad:
        if g1.dtype != gdt:
            g1, g2 = g1.to(gdt), g2.to(gdt)
        if g1.shape != shape:
            g1, g2 = g1.reshape(shape), g2.reshape(shape)
        return loss, g1, g2
    return loss, x1.new_empty((0,), dtype=gdt), x1.new_empty((0,), dtype=gdt)


def _elbo_triton(x1, x2, labels, weights, pa, pb, kw, tau_min, from_logits, reduction, compute_grad,
                 grad_scale=1.0):
    """``grad_scale`` multiplies the gradients in the kernel (EagerElbo passes the mean's 1/N);
    the op's own gradients are unscaled."""
    from icrm_kernels.triton import beta as tri

    # the mean's 1/n multiplies the kernel's partial sums: one torch op fewer than sum / n
    mean = reduction == vocab.REDUCTION_MEAN
    loss, g1, g2 = tri.elbo(x1, x2, labels, weights, pa, pb, _lnbeta(pa, pb), kw, tau_min, from_logits,
                            reduction != vocab.REDUCTION_NONE, compute_grad, grad_scale,
                            1.0 / max(x1.numel(), 1) if mean else 1.0)
    if reduction != vocab.REDUCTION_NONE:
        loss = loss.sum()
    return _elbo_finish(x1, loss, g1, g2, reduction, compute_grad)


def _elbo_cpp(x1, x2, labels, weights, pa, pb, kw, tau_min, from_logits, reduction, compute_grad):
    loss, g1, g2 = torch.ops.icrm_cpu.beta_elbo(
        x1.contiguous(), x2.contiguous(), None if labels is None else labels.contiguous(),
        None if weights is None else weights.contiguous(), pa, pb, _lnbeta(pa, pb), kw, tau_min, from_logits,
        reduction, compute_grad)
    return _elbo_finish(x1, loss, g1, g2, reduction, compute_grad)


def _elbo_reference(x1, x2, labels, weights, pa, pb, kw, tau_min, from_logits, reduction, compute_grad):
    from icrm_kernels.reference import beta as ref

    loss, g1, g2 = ref.elbo_with_grads(x1, x2, labels, weights, pa, pb, kw, tau_min, from_logits, compute_grad)
    if reduction != vocab.REDUCTION_NONE:
        loss = loss.sum()
        if reduction == vocab.REDUCTION_MEAN:
            loss = loss / max(x1.numel(), 1)
    return _elbo_finish(x1, loss, g1, g2, reduction, compute_grad)


def _elbo_fake(x1, x2, labels, weights, prior_alpha, prior_beta, kl_weight, tau_min, from_logits, reduction,
               compute_grad):
    loss = x1.new_empty(x1.shape if reduction == vocab.REDUCTION_NONE else ())
    gdt = _grad_dtype(x1)
    if compute_grad:
        return loss, x1.new_empty(x1.shape, dtype=gdt), x1.new_empty(x1.shape, dtype=gdt)
    return loss, x1.new_empty((0,), dtype=gdt), x1.new_empty((0,), dtype=gdt)


def _elbo_setup(ctx, inputs, output):
    x1, x2 = inputs[0], inputs[1]
    ctx.reduction = inputs[9]
    ctx.n = x1.numel()
    ctx.compute_grad = inputs[10]
    ctx.dtypes = (x1.dtype, x2.dtype)
    ctx.save_for_backward(output[1], output[2])
    # the gradient outputs are internal: no [N]-sized zero gradients materialized for them
    ctx.set_materialize_grads(False)


def _elbo_backward(ctx, grad_loss, _g1, _g2):
    if not ctx.compute_grad or grad_loss is None:  # only labels/weights required grad: they get none
        return (None,) * 11
    g1, g2 = ctx.saved_tensors
    scale = grad_loss if grad_loss.dtype == g1.dtype else grad_loss.to(g1.dtype)
    if ctx.reduction == vocab.REDUCTION_MEAN:
        scale = scale / max(ctx.n, 1)
    d1, d2 = g1 * scale, g2 * scale
    if d1.dtype != ctx.dtypes[0]:  # (a no-op .to costs ~1 µs)
        d1 = d1.to(ctx.dtypes[0])
    if d2.dtype != ctx.dtypes[1]:
        d2 = d2.to(ctx.dtypes[1])
    return d1, d2, None, None, None, None, None, None, None, None, None


ELBO = _op.define(_op.OpRecord(
    name="beta_elbo", family="beta",
    schema="(Tensor x1, Tensor x2, Tensor? labels, Tensor? weights, float prior_alpha, float prior_beta, "
           "float kl_weight, float tau_min, bool from_logits, int reduction, bool compute_grad) "
           "-> (Tensor, Tensor, Tensor)",
    fake=_elbo_fake, triton=_elbo_triton, cpp=_elbo_cpp, cpp_op="beta_elbo", reference=_elbo_reference,
    backward=_elbo_backward, setup_context=_elbo_setup, eager_outputs=1, differentiable=2))


class EagerElbo(torch.autograd.Function):
    """The eager twin of ``icrm::beta_elbo`` + ``_elbo_backward`` for the common training call:
    x1 and/or x2 need a gradient, labels and weights do not. Only x1 and x2 are arguments (each
    argument of ``apply`` costs host time); everything else rides in ``spec``, and the
    gradients are saved tensors, not outputs (no internal outputs). On the Triton path the kernel multiplies
    the gradients by the mean's 1/N too (the same fp32 factor the op path's backward multiplies
    by: bitwise the same results for a unit incoming gradient), so the backward is two
    multiplies.
    Same formula as the op path, which torch.compile, export and tracing use. Disabled, like
    every eager twin, inside ``_backend.eager_autograd(False)``."""

    @staticmethod
    def forward(ctx, x1, x2, spec):
        labels, weights, pa, pb, kw, tmin, from_logits, red = spec
        n = x1.numel()
        scale = None
        if ELBO.backend(x1) == "triton":  # the kernel scales the gradients by the mean's 1/N
            s = 1.0 / max(n, 1) if red == vocab.REDUCTION_MEAN else 1.0
            loss, g1, g2 = _elbo_triton(x1, x2, labels, weights, pa, pb, kw, tmin, from_logits, red, True, s)
        else:  # C++ kernels and the reference: unscaled gradients
            loss, g1, g2 = ELBO.run(x1, x2, labels, weights, pa, pb, kw, tmin, from_logits, red, True)
            if red == vocab.REDUCTION_MEAN:
                scale = max(n, 1)
        ctx.save_for_backward(g1, g2)  # (not attributes: a second backward raises, as on the op path)
        ctx.g = (scale, x1.dtype)  # x1, x2: one dtype (checked)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        g1, g2 = ctx.saved_tensors
        scale, dt = ctx.g
        if scale is not None:  # the mean's 1/N, as in _elbo_backward
            if grad_loss.dtype != g1.dtype:
                grad_loss = grad_loss.to(g1.dtype)
            grad_loss = grad_loss / scale
        d1, d2 = g1 * grad_loss, g2 * grad_loss
        if d1.dtype != dt:  # (a no-op .to costs ~1 µs)
            d1, d2 = d1.to(dt), d2.to(dt)
        return d1, d2, None


_elbo_apply = EagerElbo.apply
_eager_mode = _backend._eager_mode


def _elbo_call(x1, x2, labels, weights, pa, pb, kw, tmin, from_logits, red):
    """The ELBO op: :class:`EagerElbo` for an eager call where only x1/x2 need a gradient, else
    the record (no gradient: the implementation directly; compile/tracing: the op)."""
    # (the last test: the eager twins are on, _backend.eager_autograd)
    if (torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad)
            and not (labels is not None and labels.requires_grad)
            and not (weights is not None and weights.requires_grad)
            and _eager_mode((x1, x2, labels, weights)) and _backend._EAGER_ON.get()):
        return _elbo_apply(x1, x2, (labels, weights, pa, pb, kw, tmin, from_logits, red))
    loss, _, _ = ELBO(x1, x2, labels, weights, pa, pb, kw, tmin, from_logits, red, _backend._needs_grad((x1, x2)))
    return loss


# ---------------------------------------------------------------- validation helpers
def _check_prior(prior_alpha, prior_beta) -> Tuple[float, float]:
    return (check_finite_float(prior_alpha, "prior_alpha", low=0.0, low_open=True),
            check_finite_float(prior_beta, "prior_beta", low=0.0, low_open=True))


# ---------------------------------------------------------------- public ELBO ops

def _check_elbo_args(x, x_name, labels, weights, prior_alpha, prior_beta, kl_weight, reduction):
    """The checks both ELBO entry points share: labels (required) and weights shaped like x,
    priors > 0, kl_weight >= 0, a known reduction. Returns them converted."""
    labels = check_like(labels, "labels", x, x_name)
    if labels is None:
        raise TypeError("labels must be a torch.Tensor, got None")
    weights = check_like(weights, "weights", x, x_name)
    key = (prior_alpha, prior_beta, kl_weight, reduction, type(prior_alpha), type(prior_beta), type(kl_weight))
    try:
        return (labels, weights) + _ELBO_SCALARS[key]
    except (KeyError, TypeError):  # not seen yet, or unhashable (then the checks below raise)
        pass
    pa, pb = _check_prior(prior_alpha, prior_beta)
    kw = check_finite_float(kl_weight, "kl_weight", low=0.0)
    red = _REDUCTIONS[check_choice(reduction, "reduction", tuple(_REDUCTIONS))]
    if kw != 0.0 and len(_ELBO_SCALARS) < 256:  # (0.0 == -0.0: a zero kl_weight is not cached)
        _ELBO_SCALARS[key] = (pa, pb, kw, red)
    return labels, weights, pa, pb, kw, red


# validated (prior_alpha, prior_beta, kl_weight, reduction) by the values and types passed: the
# four checks cost ~2 µs a call and a training loop passes the same numbers every step
_ELBO_SCALARS = {}

@ranged("beta_elbo_loss")
def beta_elbo_loss(
    alpha: Tensor,
    beta: Tensor,
    labels: Tensor,
    *,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
    kl_weight: float = 1.0,
    weights: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """ICRM's variational loss (negative ELBO) for Beta(alpha, beta) posteriors.

    L_i = -[y_i (psi(a_i) - psi(s_i)) + (1 - y_i)(psi(b_i) - psi(s_i))] + kl_weight KL(Beta(a_i, b_i) || Beta(a0, b0)),
    s = a + b, y in [0, 1] (soft labels allowed: y = 1 means "a preferred").

    alpha, beta: any shape, one float dtype (fp32/bf16/fp16/fp64), one device. labels, weights: the
    same shape (bool/int labels are converted). ``reduction``: ``"mean"`` = sum_i w_i L_i / N (like
    ``torch.nn.BCELoss(weight=...)``: weights are per-element multipliers, the mean is over all N
    elements), ``"sum"``, or ``"none"`` (w_i L_i, alpha's shape). Output dtype = alpha's dtype.

    One fused pass computes the loss and, when alpha or beta require grad, dL/dalpha and dL/dbeta
    (trigamma inside), saved for backward; backward is one scaling. labels and weights get no
    gradient (they are data). prior_alpha, prior_beta > 0 are Python numbers.
    """
    check_pair(alpha, beta, "alpha", "beta")
    labels, weights, pa, pb, kw, red = _check_elbo_args(alpha, "alpha", labels, weights, prior_alpha, prior_beta,
                                                        kl_weight, reduction)
    check_values((alpha, "alpha", "positive"), (beta, "beta", "positive"), (labels, "labels", "unit"),
                  (weights, "weights", "weights"))
    return _elbo_call(alpha, beta, labels, weights, pa, pb, kw, 0.0, False, red)


@ranged("beta_elbo_loss_from_logits")
def beta_elbo_loss_from_logits(
    mean_logit: Tensor,
    conc_logit: Tensor,
    labels: Tensor,
    *,
    tau_min: float = 1e-2,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
    kl_weight: float = 1.0,
    weights: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """``beta_elbo_loss(*beta_from_logits(mean_logit, conc_logit, tau_min), labels, ...)`` in one
    fused pass: the parametrisation, the loss and d/d(logits) in the same kernel. Arguments and
    reduction as in :func:`beta_elbo_loss`; the logits must be finite, tau_min >= 0."""
    check_pair(mean_logit, conc_logit, "mean_logit", "conc_logit")
    labels, weights, pa, pb, kw, red = _check_elbo_args(mean_logit, "mean_logit", labels, weights, prior_alpha,
                                                        prior_beta, kl_weight, reduction)
    tmin = check_finite_float(tau_min, "tau_min", low=0.0)
    check_values((mean_logit, "mean_logit", "finite"), (conc_logit, "conc_logit", "finite"),
                  (labels, "labels", "unit"), (weights, "weights", "weights"))
    return _elbo_call(mean_logit, conc_logit, labels, weights, pa, pb, kw, tmin, True, red)


@ranged("beta_kl")
def beta_kl(alpha: Tensor, beta: Tensor, prior_alpha: Union[float, Tensor] = 1.0,
            prior_beta: Union[float, Tensor] = 1.0) -> Tensor:
    """KL(Beta(alpha, beta) || Beta(prior_alpha, prior_beta)), elementwise, alpha's shape and dtype:

    KL = ln B(a0,b0) - ln B(a,b) + (a-a0) psi(a) + (b-b0) psi(b) + (a0-a+b0-b) psi(a+b).

    With number priors this is the fused ELBO kernel without the data term (gradients w.r.t.
    alpha and beta fused too). Tensor priors (broadcasting against alpha) take an unfused path
    through the torch reference formula in float64 (differentiable in every argument)."""
    check_pair(alpha, beta, "alpha", "beta")
    check_values((alpha, "alpha", "positive"), (beta, "beta", "positive"))
    if isinstance(prior_alpha, torch.Tensor) or isinstance(prior_beta, torch.Tensor):
        from icrm_kernels.reference import beta as ref

        for name, p in (("prior_alpha", prior_alpha), ("prior_beta", prior_beta)):
            if isinstance(p, torch.Tensor):
                check_positive(p, name)
            else:
                check_finite_float(p, name, low=0.0, low_open=True)
        # in float64 (cast back, differentiably): the reference's remainder form is written for
        # float64 and loses ~1e-4 absolute when evaluated in fp32
        f64 = lambda t: t.to(torch.float64) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return ref.beta_kl(f64(alpha), f64(beta), f64(prior_alpha), f64(prior_beta)).to(alpha.dtype)
    pa, pb = _check_prior(prior_alpha, prior_beta)
    return _elbo_call(alpha, beta, None, None, pa, pb, 1.0, 0.0, False, 0)


def _from_logits_triton(mean_logit, conc_logit, tau_min):
    from icrm_kernels.triton import beta as tri

    return tri.from_logits(mean_logit, conc_logit, tau_min)


def _from_logits_cpp(mean_logit, conc_logit, tau_min):
    return torch.ops.icrm_cpu.beta_from_logits(mean_logit.contiguous(), conc_logit.contiguous(), tau_min)


def _from_logits_reference(mean_logit, conc_logit, tau_min):
    from icrm_kernels.reference import beta as ref

    a, b = ref.beta_from_logits(mean_logit.to(torch.float64), conc_logit.to(torch.float64), tau_min)
    return a.to(mean_logit.dtype), b.to(mean_logit.dtype)


def _from_logits_setup(ctx, inputs, output):
    ctx.tau_min = inputs[2]
    ctx.save_for_backward(inputs[0], inputs[1])


def _from_logits_backward(ctx, ga, gb):
    """Chain rule in torch ops (elementwise): d/dm = (ga - gb) tau mu (1-mu), d/dc = (ga mu + gb (1-mu)) sigmoid(c)."""
    m, c = ctx.saved_tensors
    cdt = _grad_dtype(m)
    mf, cf = m.to(cdt), c.to(cdt)
    ga = torch.zeros_like(mf) if ga is None else ga.to(cdt)
    gb = torch.zeros_like(mf) if gb is None else gb.to(cdt)
    mu, mu_c = torch.sigmoid(mf), torch.sigmoid(-mf)
    tau = F.softplus(cf) + ctx.tau_min
    return ((ga - gb) * tau * mu * mu_c).to(m.dtype), ((ga * mu + gb * mu_c) * torch.sigmoid(cf)).to(c.dtype), None


FROM_LOGITS = _op.define(_op.OpRecord(
    name="beta_from_logits", family="beta",
    schema="(Tensor mean_logit, Tensor conc_logit, float tau_min) -> (Tensor, Tensor)",
    fake=lambda m, c, tau_min: (torch.empty_like(m), torch.empty_like(m)),
    triton=_from_logits_triton, cpp=_from_logits_cpp, cpp_op="beta_from_logits", reference=_from_logits_reference,
    backward=_from_logits_backward, setup_context=_from_logits_setup, differentiable=2))


@ranged("beta_from_logits")
def beta_from_logits(mean_logit: Tensor, conc_logit: Tensor, tau_min: float = 1e-2) -> Tuple[Tensor, Tensor]:
    """(alpha, beta) = (mu tau, (1 - mu) tau), mu = sigmoid(mean_logit), tau = softplus(conc_logit) + tau_min.

    mean_logit, conc_logit: same shape, one float dtype; returns two tensors of that shape and dtype.
    Swapping the two responses (mean_logit -> -mean_logit) maps mu to 1 - mu, i.e. swaps alpha and
    beta. 1 - mu is computed as sigmoid(-mean_logit) (no cancellation). One elementwise kernel
    (Triton / C++); the backward is elementwise torch. For training prefer
    :func:`beta_elbo_loss_from_logits`, which fuses this parametrisation into the loss kernel.
    In fp32, |mean_logit| > ~88 underflows beta (or alpha) to 0.
    """
    check_pair(mean_logit, conc_logit, "mean_logit", "conc_logit")
    tmin = check_finite_float(tau_min, "tau_min", low=0.0)
    return FROM_LOGITS(mean_logit, conc_logit, tmin)


# ==================================================================== statistics
# Each implementation returns [6, *alpha.shape]: mean, var, E[log t], E[log(1-t)], E[logit t], entropy.
def _stats_shape(alpha, out):
    shape = (6,) + tuple(alpha.shape)
    return out if out.shape == shape else out.reshape(shape)


def _stats_triton(alpha, beta):
    from icrm_kernels.triton import beta as tri

    return _stats_shape(alpha, tri.stats(alpha, beta))


def _stats_cpp(alpha, beta):
    return _stats_shape(alpha, torch.ops.icrm_cpu.beta_stats(alpha.contiguous(), beta.contiguous()))


def _stats_reference(alpha, beta):
    from icrm_kernels.reference import beta as ref

    st = ref.beta_stats(alpha.to(torch.float64).reshape(-1), beta.to(torch.float64).reshape(-1))
    return _stats_shape(alpha, torch.stack(list(st)).to(alpha.dtype))


def _stats_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _stats_backward(ctx, grad):
    """Closed-form derivatives; the trigammas come from the trigamma op (one extra pass)."""
    alpha, beta = ctx.saved_tensors
    cdt = _grad_dtype(alpha)
    a, b, g = alpha.to(cdt), beta.to(cdt), grad.to(cdt)
    s = a + b
    tri = TRIGAMMA(torch.stack([a, b, s]))
    ta, tb, ts = tri[0], tri[1], tri[2]
    var = (a / s) * (b / s) / (s + 1.0)  # recomputed in fp32 (the saved output may be bf16)
    dvar = 2.0 / s + 1.0 / (s + 1.0)
    ga = (g[0] * b / (s * s) + g[1] * var * (1.0 / a - dvar) + g[2] * (ta - ts) - g[3] * ts + g[4] * ta
          + g[5] * (-(a - 1.0) * ta + (s - 2.0) * ts))
    gb = (-g[0] * a / (s * s) + g[1] * var * (1.0 / b - dvar) - g[2] * ts + g[3] * (tb - ts) - g[4] * tb
          + g[5] * (-(b - 1.0) * tb + (s - 2.0) * ts))
    return ga.to(alpha.dtype), gb.to(beta.dtype)


STATS = _op.define(_op.OpRecord(
    name="beta_stats", family="beta", schema="(Tensor alpha, Tensor beta) -> Tensor",
    fake=lambda alpha, beta: alpha.new_empty((6,) + tuple(alpha.shape)),
    triton=_stats_triton, cpp=_stats_cpp, cpp_op="beta_stats", reference=_stats_reference,
    backward=_stats_backward, setup_context=_stats_setup, differentiable=2))


@ranged("beta_stats")
def beta_stats(alpha: Tensor, beta: Tensor) -> BetaStats:
    """Statistics of Beta(alpha, beta) in one fused pass: ``BetaStats(mean, var, log_mean,
    log1m_mean, logit_mean, entropy)``, each of alpha's shape and dtype.

    mean = a/s, var = a b / (s^2 (s+1)), log_mean = E[log t] = psi(a) - psi(s),
    log1m_mean = E[log(1-t)] = psi(b) - psi(s), logit_mean = E[logit t] = psi(a) - psi(b),
    entropy = ln B(a,b) - (a-1) psi(a) - (b-1) psi(b) + (s-2) psi(s), s = a + b. Differentiable
    (backward: closed forms with the trigamma op, not fused with the forward)."""
    check_pair(alpha, beta, "alpha", "beta")
    check_values((alpha, "alpha", "positive"), (beta, "beta", "positive"))
    return BetaStats(*STATS(alpha, beta).unbind(0))


@ranged("steer")
def steer(alpha: Tensor, beta: Tensor, weights: Tensor, statistic: str = "mean") -> Tensor:
    """Multi-objective scalarisation: sum_k weights[..., k] * stat(Beta(alpha[..., k], beta[..., k])).

    alpha, beta: [..., K] per-objective posteriors; weights: [K] (one preference for the batch) or
    alpha's full shape [..., K] (one per row), chosen at test time; ``statistic`` is a
    :class:`BetaStats` field name. Returns [...] in alpha's dtype. Composite: the fused
    ``beta_stats`` kernel, then a weighted sum over the last dimension (differentiable)."""
    check_pair(alpha, beta, "alpha", "beta")
    check_tensor(weights, "weights", floating=True)
    check_choice(statistic, "statistic", STATISTICS)
    if alpha.dim() < 1:
        raise ValueError("alpha must have a last dimension of K objectives, got a 0-d tensor")
    k = alpha.shape[-1]
    if weights.device != alpha.device:
        raise ValueError(f"weights is on {weights.device} but alpha is on {alpha.device}; all tensors must be on one device")
    if not (tuple(weights.shape) == (k,) or weights.shape == alpha.shape):
        raise ValueError(f"weights must have shape ({k},) or alpha's shape {tuple(alpha.shape)}, got {tuple(weights.shape)}")
    check_finite_values(weights, "weights")
    stat = getattr(beta_stats(alpha, beta), statistic)
    return (stat * weights.to(stat.dtype)).sum(-1)


# ==================================================================== conjugate posterior
# Each implementation takes (outcomes, weights, cu, index, num_segments, prior_alpha, prior_beta,
# discount), one of cu / index given, and returns (alpha [K], beta [K]) in float32 (float64 for
# float64 outcomes).
def _posterior_triton(outcomes, weights, cu, index, num_segments, prior_alpha, prior_beta, discount):
    from icrm_kernels.triton import beta as tri

    order = None
    if index is not None:
        order, cu = segments_of_index(index, num_segments)
    return tri.posterior(outcomes.contiguous(), None if weights is None else weights.contiguous(), order,
                         cu.to(torch.int64).contiguous(), num_segments, prior_alpha, prior_beta, discount)


def _posterior_cpp(outcomes, weights, cu, index, num_segments, prior_alpha, prior_beta, discount):
    a, b = torch.ops.icrm_cpu.beta_posterior(outcomes.contiguous(), weights, cu, index, num_segments,
                                             prior_alpha, prior_beta, discount)
    return a.to(_grad_dtype(outcomes)), b.to(_grad_dtype(outcomes))


def _posterior_reference(outcomes, weights, cu, index, num_segments, prior_alpha, prior_beta, discount):
    from icrm_kernels.reference import beta as ref

    return ref.posterior_of_segments(outcomes, weights, cu, index, num_segments, prior_alpha, prior_beta, discount)


def _posterior_fake(outcomes, weights, cu, index, num_segments, prior_alpha, prior_beta, discount):
    dt = _grad_dtype(outcomes)
    return outcomes.new_empty((num_segments,), dtype=dt), outcomes.new_empty((num_segments,), dtype=dt)


POSTERIOR = _op.define(_op.OpRecord(
    name="beta_posterior", family="beta",
    schema="(Tensor outcomes, Tensor? weights, Tensor? cu, Tensor? index, int num_segments, float prior_alpha, "
           "float prior_beta, float discount) -> (Tensor, Tensor)",
    fake=_posterior_fake, triton=_posterior_triton, cpp=_posterior_cpp, cpp_op="beta_posterior",
    reference=_posterior_reference))


@ranged("beta_posterior")
def beta_posterior(
    outcomes: Tensor,
    *,
    cu_segments: Optional[Tensor] = None,
    segment_index: Optional[Tensor] = None,
    num_segments: Optional[int] = None,
    weights: Optional[Tensor] = None,
    prior_alpha: Union[float, Tensor] = 1.0,
    prior_beta: Union[float, Tensor] = 1.0,
    discount: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Exact conjugate Beta update from M in-context demonstrations grouped into K segments.

    alpha_k = a0 + sum_i w_i g^(n-1-i) y_i,  beta_k = b0 + sum_i w_i g^(n-1-i) (1 - y_i),
    over the demonstrations i of segment k in order of appearance in ``outcomes`` (the last is
    the most recent: discount g < 1 forgets older ones), n the segment's size.

    outcomes: [M] in [0, 1] (float, or bool/int hard labels). Layout, exactly one:
    ``cu_segments[K+1]`` (int32/int64 offsets, contiguous segments) or ``segment_index[M]``
    (segment numbers 0..K-1, any order). K = ``num_segments`` if given, else len(cu_segments) - 1,
    else max(segment_index) + 1 (reads the max back to the host: a device synchronisation, and a
    graph break under torch.compile; pass ``num_segments`` to avoid it). Segments without
    demonstrations get the prior. weights: [M] per-demonstration weights (default 1).

    Returns (alpha, beta), each [K], float32 (float64 for float64 outcomes): sums are
    accumulated in fp32 on the GPU, in double on the CPU. Not differentiable (outcomes are data).
    GPU: one program per segment (best for many short segments, the in-context case).
    Checked path raises on out-of-range ids; unchecked, ids outside [0, K) are ignored.

    Priors: numbers (one prior for every segment) or tensors, 0-d or ``[K]`` (one per segment,
    e.g. the amortised alpha, beta a reward model predicted for each query), on outcomes' device,
    > 0 and finite (checked). Tensor priors are added after the kernels sum the discounted
    counts (every backend runs with a zero prior, then ``alpha = prior_alpha + counts``), so the
    result is differentiable w.r.t. them (the counts are data); priors are cast to the result's
    dtype. With ``segment_index`` and no ``num_segments``, a ``[K]`` prior gives K (no host sync).

    Hostile inputs: outcomes outside [0, 1] or NaN/inf, and weights that are negative or not
    finite, raise ValueError naming the argument (value checks); a K that cannot be allocated
    (num_segments, or max(segment_index) + 1, beyond 2**31 - 1 or the device's memory) raises
    ValueError before anything is allocated; any int64 segment ids are accepted. Inside
    ``unchecked()`` and torch.compile, malformed ``cu_segments`` (decreasing, negative, past the
    end) are clamped into [0, M] in every implementation: unspecified values, never an access
    outside the buffers (demonstrations no segment covers are ignored).
    """
    check_tensor(outcomes, "outcomes", ndim=1)
    if outcomes.dtype.is_complex:
        raise TypeError(f"outcomes must be a real tensor, got {outcomes.dtype}")
    if not outcomes.is_floating_point():
        outcomes = outcomes.to(torch.float32)
    m = outcomes.numel()
    # the value checks of weights and outcomes read back in one sync (one aminmax each); each
    # still raises at its own place, after the argument checks that precede it
    if value_checks_enabled() and m and (weights is None or (
            isinstance(weights, Tensor) and weights.is_floating_point() and weights.dim() == 1
            and weights.numel() == m and weights.device == outcomes.device)):
        bounds = value_bounds(outcomes, *(() if weights is None else (weights,)))
    else:
        bounds = None
    if weights is not None:
        check_tensor(weights, "weights", ndim=1, floating=True)
        if weights.numel() != m:
            raise ValueError(f"weights must have one entry per demonstration ({m}), got {weights.numel()}")
        if weights.device != outcomes.device:
            raise ValueError(f"weights is on {weights.device} but outcomes is on {outcomes.device}")
        if bounds is None or not VALUE_BOUNDS["weights"](*bounds[1]):
            check_finite_values(weights, "weights")
            if value_checks_enabled() and m and bool((weights < 0).any()):
                raise ValueError("weights must be >= 0 (a negative weight can make alpha or beta non-positive)")
    tensor_priors = isinstance(prior_alpha, Tensor) or isinstance(prior_beta, Tensor)
    if tensor_priors:  # added after the kernels (see below); they run with a zero prior
        prior_alpha, prior_beta = (_check_tensor_prior(v, n, outcomes) for v, n in
                                   ((prior_alpha, "prior_alpha"), (prior_beta, "prior_beta")))
        pa = pb = 0.0
        if num_segments is None and cu_segments is None:
            num_segments = next((v.numel() for v in (prior_alpha, prior_beta) if v.dim() == 1), None)
    else:
        pa, pb = _check_prior(prior_alpha, prior_beta)
    g = check_finite_float(discount, "discount", low=0.0, high=1.0, low_open=True)
    if num_segments is not None:
        if isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 0:
            raise ValueError(f"num_segments must be a non-negative int, got {num_segments!r}")
    if (cu_segments is None) == (segment_index is None):
        raise ValueError("give exactly one of cu_segments and segment_index")
    if bounds is None or not VALUE_BOUNDS["unit"](*bounds[0]):
        check_unit_interval(outcomes, "outcomes")
    cu = index = None
    if cu_segments is not None:
        check_tensor(cu_segments, "cu_segments", ndim=1)
        if cu_segments.device != outcomes.device:  # before check_offsets reads the values
            raise ValueError(f"cu_segments is on {cu_segments.device} but outcomes is on {outcomes.device}")
        check_offsets(cu_segments, "cu_segments", m)
        k = cu_segments.numel() - 1
        if num_segments is not None and num_segments != k:
            raise ValueError(f"num_segments={num_segments} disagrees with cu_segments, which has {k} segments")
        cu = cu_segments.to(torch.int64)
    else:
        check_index(segment_index, "segment_index", m)
        if segment_index.device != outcomes.device:
            raise ValueError(f"segment_index is on {segment_index.device} but outcomes is on {outcomes.device}")
        if num_segments is None:
            k = int(segment_index.max()) + 1 if m else 0  # host sync, documented
        else:
            k = num_segments
        if value_checks_enabled() and m:
            lo, hi = int(segment_index.min()), int(segment_index.max())
            if lo < 0 or hi >= k:
                raise ValueError(f"segment_index must hold segment numbers in [0, {k}), got values in [{lo}, {hi}]")
        index = segment_index.to(torch.int64)
    _check_posterior_size(k, outcomes)
    alpha, beta = POSTERIOR(outcomes, weights, cu, index, k, pa, pb, g)
    if tensor_priors:
        for v, n in ((prior_alpha, "prior_alpha"), (prior_beta, "prior_beta")):
            if v.dim() == 1 and v.numel() != k:
                raise ValueError(f"{n} must be a number, a 0-d tensor or one prior per segment [K={k}], "
                                 f"got shape {tuple(v.shape)}")
        alpha, beta = alpha + prior_alpha.to(alpha.dtype), beta + prior_beta.to(beta.dtype)
    return alpha, beta


def _check_tensor_prior(v, name: str, outcomes: Tensor) -> Tensor:
    """A beta_posterior prior given as a number or a tensor: a 0-d or [K] float tensor on
    outcomes' device, > 0 and finite (value check)."""
    if not isinstance(v, Tensor):
        return torch.tensor(check_finite_float(v, name, low=0.0, low_open=True), dtype=torch.float64,
                            device=outcomes.device)
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a number or a floating tensor, got {v.dtype}")
    if v.dim() > 1:
        raise ValueError(f"{name} must be a number, a 0-d tensor or one prior per segment [K], got shape "
                         f"{tuple(v.shape)}")
    if v.device != outcomes.device:
        raise ValueError(f"{name} is on {v.device} but outcomes is on {outcomes.device}")
    if value_checks_enabled() and v.numel() and not bool(((v > 0) & torch.isfinite(v)).all()):
        raise ValueError(f"{name} must be > 0 and finite")
    return v


# Segment counts past int32 are beyond every kernel's grid and every realistic batch; checked
# before any allocation, so a stray id (2**62) raises instead of asking for exabytes.
_MAX_SEGMENTS = 2**31 - 1


def _device_memory_bytes(device: torch.device) -> Optional[int]:
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "cpu":
            import os

            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError):
        pass
    return None


def _check_posterior_size(k: int, outcomes: Tensor) -> None:
    """The [K] outputs must be allocatable: K from ``num_segments`` or max(segment_index) + 1."""
    itemsize = 8 if outcomes.dtype == torch.float64 else 4
    need = 2 * k * itemsize  # alpha and beta
    # the memory query is host-only (a graph break): under torch.compile the count bound alone
    mem = None if compiling() else _device_memory_bytes(outcomes.device)
    if k > _MAX_SEGMENTS or (mem is not None and need > mem):
        raise ValueError(f"segment_index/num_segments ask for {k} segments ({need} bytes of output), more than "
                         f"can be allocated (at most {_MAX_SEGMENTS} segments"
                         f"{'' if mem is None else f' and {mem} bytes on {outcomes.device}'}); segment ids must "
                         f"be dense numbers 0..K-1")
