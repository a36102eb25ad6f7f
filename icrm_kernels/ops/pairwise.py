"""Pairwise group ops (docs/pairwise.md#math): Pref-GRPO's group win rate and R2M's GREBT loss.

Public functions: :func:`group_win_rate`, :func:`grebt_loss`. Both take the three group layouts
of the package (exactly one of ``group_size``, ``cu_groups``, ``group_index``), run the Triton
kernels on CUDA tensors and the C++ kernels on CPU tensors (the float64 torch reference when the
extension is not built), and are ``torch.library`` custom ops with fake and autograd
registrations, so ``torch.compile(fullgraph=True)`` traces them without a graph break.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from icrm_kernels import _backend, _op
from icrm_kernels._checks import (
    check_choice,
    check_finite_float,
    check_same_device,
    check_tensor,
)
from icrm_kernels._layout import kernel_args, layout_of_kernel_args, num_groups_of_kernel_args, resolve_groups
from icrm_kernels.reference import pairwise as ref
from icrm_kernels import vocab
from icrm_kernels.profiling import ranged

__all__ = ["group_win_rate", "grebt_loss"]

_HALF = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------ helpers
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cpu_in(x: Tensor) -> Tensor:
    """The C++ kernels take fp32/fp64: half inputs are upcast here."""
    return x.float() if x.dtype in _HALF else x


# ------------------------------------------------------------------- group_win_rate records
# group_win_rate(scores, cu, order, group_size, temperature) -> [N] win rates in the scores'
# dtype; the layout as the kernels take it (_layout.kernel_args); temperature <= 0: hard wins.
def _win_rate_triton(scores, cu, order, group_size, temperature):
    from icrm_kernels.triton import pairwise as tri

    return tri.win_rate_forward(scores, cu, order, group_size, temperature)


def _win_rate_cpp(scores, cu, order, group_size, temperature):
    out = torch.ops.icrm_cpu.pairwise_win_rate(_cpu_in(scores), cu, order, group_size, temperature)
    return out.to(scores.dtype)


def _win_rate_reference(scores, cu, order, group_size, temperature):
    layout = layout_of_kernel_args(scores.numel(), scores.device, cu, order, group_size)
    s = scores.to(_compute_dtype(scores.dtype))
    return ref.win_rate_from_layout(s, layout, None if temperature <= 0 else temperature).to(scores.dtype)


# group_win_rate_backward(grad, scores, cu, order, group_size, temperature > 0) -> d scores
def _win_rate_bwd_triton(grad, scores, cu, order, group_size, temperature):
    from icrm_kernels.triton import pairwise as tri

    return tri.win_rate_backward(grad.to(scores.dtype), scores, cu, order, group_size, temperature)


def _win_rate_bwd_cpp(grad, scores, cu, order, group_size, temperature):
    out = torch.ops.icrm_cpu.pairwise_win_rate_backward(_cpu_in(grad.to(scores.dtype)), _cpu_in(scores), cu, order,
                                                         group_size, temperature)
    return out.to(scores.dtype)


def _win_rate_bwd_reference(grad, scores, cu, order, group_size, temperature):
    layout = layout_of_kernel_args(scores.numel(), scores.device, cu, order, group_size)
    cdt = _compute_dtype(scores.dtype)
    return ref.win_rate_backward_from_layout(grad.to(cdt), scores.to(cdt), layout, temperature).to(scores.dtype)


WIN_RATE_BWD = _op.define(_op.OpRecord(
    name="group_win_rate_backward", family="pairwise",
    schema="(Tensor grad, Tensor scores, Tensor? cu, Tensor? order, int group_size, float temperature) -> Tensor",
    fake=lambda grad, scores, *rest: torch.empty_like(scores),
    triton=_win_rate_bwd_triton, cpp=_win_rate_bwd_cpp, cpp_op="pairwise_win_rate_backward",
    reference=_win_rate_bwd_reference))


def _win_rate_setup(ctx, inputs, output):
    scores, cu, order, group_size, temperature = inputs
    ctx.save_for_backward(scores, cu, order)
    ctx.group_size = group_size
    ctx.temperature = temperature


def _win_rate_backward(ctx, grad):
    scores, cu, order = ctx.saved_tensors
    if ctx.temperature <= 0:  # hard wins are piecewise constant
        return torch.zeros_like(scores), None, None, None, None
    ds = WIN_RATE_BWD(grad, scores, cu, order, ctx.group_size, ctx.temperature)
    return ds, None, None, None, None


WIN_RATE = _op.define(_op.OpRecord(
    name="group_win_rate", family="pairwise",
    schema="(Tensor scores, Tensor? cu, Tensor? order, int group_size, float temperature) -> Tensor",
    fake=lambda scores, *rest: torch.empty_like(scores),
    triton=_win_rate_triton, cpp=_win_rate_cpp, cpp_op="pairwise_win_rate", reference=_win_rate_reference,
    backward=_win_rate_backward, setup_context=_win_rate_setup, differentiable=1))


def _prepare(x: Tensor, name: str, group_size, cu_groups, group_index):
    check_tensor(x, name, ndim=1, floating=True)
    check_same_device(**{name: x, "cu_groups": cu_groups, "group_index": group_index})
    layout = resolve_groups(x.numel(), x.device, group_size=group_size, cu_groups=cu_groups, group_index=group_index,
                            rows=name)
    return layout


@ranged("group_win_rate")
def group_win_rate(scores: Tensor, *, group_size: Optional[int] = None, cu_groups: Optional[Tensor] = None,
                   group_index: Optional[Tensor] = None, temperature: Optional[float] = None) -> Tensor:
    """Pref-GRPO pairwise win rate of every row within its group.

    ``w_i = 1/(n_g − 1) · Σ_{j≠i, j∈g} P(i ≻ j)`` with ``P = σ((s_i − s_j)/T)`` (Bradley-Terry)
    for ``temperature=T > 0``, or hard wins (1 win, ½ tie, 0 loss) when ``temperature`` is None.

    Args:
        scores: ``[N]`` float16/bfloat16/float32/float64 scores (e.g. reward-model logits).
        group_size / cu_groups / group_index: the group layout, exactly one given (docs/advantages.md#group-layouts).
        temperature: None (hard wins) or a positive float.

    Returns:
        ``[N]`` win rates in ``scores.dtype`` (computed in fp32, fp64 for float64 input).
        Within a group the win rates sum to n_g/2 (P(i≻j) + P(j≻i) = 1).

    Choices beyond the formula (documented in docs/pairwise.md#what-to-know):
        - a group of one row gets ``w = 0.5`` (no opponent: neither a win nor a loss; it keeps the
          group mean of 0.5 that every other group has) and zero gradient;
        - NaN propagates: a NaN score makes every win rate of its group NaN (both modes);
        - the hard version is piecewise constant: its gradient is zero.
        - float64 tensors on CUDA run the float64 reference instead of the fp32 kernel.
    """
    layout = _prepare(scores, "scores", group_size, cu_groups, group_index)
    scores = scores.contiguous()  # the kernels index rows directly
    if temperature is not None:
        temperature = check_finite_float(temperature, "temperature", low=0.0, low_open=True)
    cu, order, g = kernel_args(layout)
    return WIN_RATE(scores, cu, order, g, 0.0 if temperature is None else temperature)


# --------------------------------------------------------------------------- grebt_loss op
# grebt_group_losses(rewards, select, cu, order, group_size, alpha, eps) -> (per-group losses
# [groups], NaN for groups of < 2 rows; dloss_g/dr_i [N]), fused, in fp32 (fp64 for fp64 rewards)
def _grebt_triton(rewards, select, cu, order, group_size, alpha, eps, scale=1.0):
    """``scale`` multiplies the losses and the row gradients in the kernel (EagerGrebt passes the
    mean's 1/groups); the op's own outputs are unscaled."""
    from icrm_kernels.triton import pairwise as tri

    return tri.grebt_forward(rewards, select, cu, order, group_size, alpha, eps, scale, scale)


def _grebt_cpp(rewards, select, cu, order, group_size, alpha, eps):
    return tuple(torch.ops.icrm_cpu.pairwise_grebt(_cpu_in(rewards), None if select is None else _cpu_in(select),
                                                   cu, order, group_size, alpha, eps))


def _grebt_reference(rewards, select, cu, order, group_size, alpha, eps):
    # computes in float64 whatever the input (the CPU fallback, float64 on CUDA)
    n = rewards.numel()
    layout = layout_of_kernel_args(n, rewards.device, cu, order, group_size)
    r = rewards.double()
    sel = None if select is None else select.double()
    losses = ref.grebt_group_losses(r, layout, alpha=alpha, eps=eps, select=sel)
    drow = ref.grebt_row_gradients(r, layout, alpha=alpha, eps=eps, select=sel)
    out = losses.new_full((num_groups_of_kernel_args(n, cu, group_size),), float("nan"))
    out[: losses.numel()] = losses
    cdt = _compute_dtype(rewards.dtype)
    return out.to(cdt), drow.to(cdt)


def _grebt_fake(rewards, select, cu, order, group_size, alpha, eps):
    cdt = _compute_dtype(rewards.dtype)
    groups = num_groups_of_kernel_args(rewards.numel(), cu, group_size)
    return rewards.new_empty(groups, dtype=cdt), rewards.new_empty(rewards.shape, dtype=cdt)


def _grebt_setup(ctx, inputs, output):
    rewards, select, cu, order, group_size, alpha, eps = inputs
    ctx.save_for_backward(output[1], cu, order)
    ctx.group_size = group_size
    ctx.dtype = rewards.dtype
    ctx.set_materialize_grads(False)  # drow is internal: no [N]-sized zero gradient for it


def _grebt_backward(ctx, grad_losses, grad_drow):
    if grad_losses is None:
        return (None,) * 7
    drow, cu, order = ctx.saved_tensors
    n = drow.numel()
    g_loss = grad_losses if grad_losses.dtype == drow.dtype else grad_losses.to(drow.dtype)
    if cu is None and n:  # fixed groups: one value per group, broadcast over its rows (not materialized)
        g = g_loss.unsqueeze(1)
        d = drow.reshape(-1, ctx.group_size)
    else:
        g = g_loss if cu is None else g_loss[layout_of_kernel_args(n, drow.device, cu, order, ctx.group_size).group_of_row()]
        d = drow
    # a group whose loss gets no gradient gets none back, even when its loss is NaN: masking or
    # nansum-ing the "none" output keeps a poisoned group's NaN out of the other rows' update
    grad = torch.where(g == 0, 0, d * g)
    if grad.dim() != 1:
        grad = grad.reshape(n)
    if grad.dtype != ctx.dtype:
        grad = grad.to(ctx.dtype)
    return grad, None, None, None, None, None, None


GREBT = _op.define(_op.OpRecord(
    name="grebt_group_losses", family="pairwise",
    schema="(Tensor rewards, Tensor? select, Tensor? cu, Tensor? order, int group_size, float alpha, float eps) "
           "-> (Tensor, Tensor)",
    fake=_grebt_fake, triton=_grebt_triton, cpp=_grebt_cpp, cpp_op="pairwise_grebt", reference=_grebt_reference,
    backward=_grebt_backward, setup_context=_grebt_setup, eager_outputs=1, differentiable=1))


class EagerGrebt(torch.autograd.Function):
    """Eager ``grebt_loss`` with fixed groups of >= 2 rows and a "mean"/"sum" reduction, when the
    rewards need a gradient: the op's implementation, the reduction and the backward formula of
    ``_grebt_backward`` (with the mean's 1/groups) in one graph node instead of the op's node and
    a ``MeanBackward``/``SumBackward``; the rewards are the only tensor argument (each argument
    of ``apply`` costs host time). Same values and gradients as the op path, which
    torch.compile, export and tracing use. Disabled, like every eager twin, when the op has no
    context inside ``_backend.eager_autograd(False)``."""

    @staticmethod
    def forward(ctx, rewards, spec):
        select, group_size, alpha, eps, mean = spec
        groups = rewards.numel() // group_size
        scale = 0  # 0: drow already carries the mean's 1/groups (or the reduction is a sum)
        if GREBT.backend(rewards) == "triton":
            # the kernel scales the losses and the row gradients by the mean's 1/groups: one
            # torch op less in forward and in backward
            losses, drow = _grebt_triton(rewards, select, None, None, group_size, alpha, eps,
                                         1.0 / groups if mean else 1.0)
            total = losses.sum()
        else:
            losses, drow = GREBT.run(rewards, select, None, None, group_size, alpha, eps)
            scale = groups if mean else 0
            total = losses.mean() if mean else losses.sum()
        ctx.save_for_backward(drow)  # (saved, not an attribute: a second backward raises, as on the op path)
        ctx.g = (scale, rewards.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (drow,) = ctx.saved_tensors
        groups, dtype = ctx.g
        g = grad_total if grad_total.dtype == drow.dtype else grad_total.to(drow.dtype)
        if groups:
            g = g / groups  # each group's loss gets grad_total / groups, as from MeanBackward
        # a group whose loss gets no gradient passes none back, even when its loss is NaN
        grad = (drow * g).masked_fill_(g == 0, 0)
        if grad.dtype != dtype:
            grad = grad.to(dtype)
        return grad, None


_grebt_apply = EagerGrebt.apply


# validated (alpha, eps, reduction) by the values and types passed (~1 µs of checks a call)
_GREBT_SCALARS = {}


@ranged("grebt_loss")
def grebt_loss(rewards: Tensor, *, group_size: Optional[int] = None, cu_groups: Optional[Tensor] = None,
               group_index: Optional[Tensor] = None, alpha: float = 0.3, eps: float = 1e-6,
               select: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """R2M's group reward entropy Bradley-Terry loss (GREBT), forward and backward fused.

    Per group g with n_g ≥ 2 rows: ``w``/``l`` = first argmax/argmin of ``select`` (default: the
    rewards, detached); ``L_BT = −log σ(r_w − r_l)`` (as a stable softplus);
    ``z = (r − μ_g)/(σ_pop,g + eps)``, ``p = softmax(z)`` within the group,
    ``L_GRE = −Σ p log p``; ``L_g = (1 − alpha)·L_BT + alpha·L_GRE``.

    Args:
        rewards: ``[N]`` float16/bfloat16/float32/float64 rewards (differentiable).
        group_size / cu_groups / group_index: the group layout, exactly one given.
        alpha: weight of the entropy term, in [0, 1]. eps: >= 0, added to the population std.
        select: optional ``[N]`` float tensor choosing the pair (e.g. human labels or a gold
            RM's scores); never differentiated.
        reduction: ``"mean"`` (over the groups with n_g ≥ 2), ``"sum"``, or ``"none"``.

    Returns:
        A float32 scalar (float64 for float64 rewards; a half-precision loss would round), or for
        ``"none"`` the ``[num_groups]`` per-group losses with **NaN for skipped groups** (n_g < 2).
        For ``group_index`` the groups are in ascending id order.

    The kernel writes dL_g/dr_i for every row while computing the loss (one launch); backward only
    scales it by the incoming gradient.

    Choices beyond the formula (documented in docs/pairwise.md#what-to-know):
        - ``"mean"`` with no group of two or more rows returns 0 (with zero gradient), not NaN.
        - NaN propagates: a NaN reward (or a NaN in ``select``) makes its group's loss and
          gradient NaN, and so the mean/sum. With ``"none"``, a group whose loss receives a zero
          gradient (masked out, or dropped by ``nansum``) passes back zero, not NaN.
        - identical rewards in a group: z = 0, p uniform, L_GRE = log n_g, and the GRE gradient is 0
          (the std's derivative at 0 is taken as 0). If w = l (all ``select`` equal), L_BT = log 2
          with zero gradient.
        - ``reduction="none"`` with ``group_index`` reads the number of groups on the host (one
          sync; not traceable by torch.compile fullgraph); every other combination is sync-free.
        - float64 tensors on CUDA run the float64 reference instead of the fp32 kernel.
    """
    layout = _prepare(rewards, "rewards", group_size, cu_groups, group_index)
    rewards = rewards.contiguous()  # the kernels index rows directly
    key = (alpha, eps, reduction, type(alpha), type(eps))
    try:
        alpha, eps = _GREBT_SCALARS[key]
    except (KeyError, TypeError):  # not seen yet, or unhashable (then the checks raise)
        alpha = check_finite_float(alpha, "alpha", low=0.0, high=1.0)
        eps = check_finite_float(eps, "eps", low=0.0)
        check_choice(reduction, "reduction", vocab.REDUCTIONS)
        if alpha != 0.0 and eps != 0.0 and len(_GREBT_SCALARS) < 256:  # (0.0 == -0.0: zeros not cached)
            _GREBT_SCALARS[key] = (alpha, eps)
    if select is not None:
        check_tensor(select, "select", ndim=1, floating=True)
        check_same_device(rewards=rewards, select=select)
        if select.numel() != rewards.numel():
            raise ValueError(f"select must have one value per reward ({rewards.numel()}), got {select.numel()}")
        select = select.detach().contiguous()
    cu, order, g = kernel_args(layout)
    if (cu is None and g >= 2 and reduction != "none" and rewards.numel() >= g and rewards.requires_grad
            and torch.is_grad_enabled() and _backend._eager_mode((rewards, select))
            and _backend._EAGER_ON.get()):  # (the eager twins are on: _backend.eager_autograd)
        return _grebt_apply(rewards, (select, g, alpha, eps, reduction == "mean"))
    losses, _ = GREBT(rewards, select, cu, order, g, alpha, eps)
    if reduction == "none":
        if layout.kind == "index":
            return losses[: int(layout.num_groups)]
        return losses
    if cu is None:  # fixed groups: all valid (G >= 2) or all skipped (G = 1)
        if g < 2 or losses.numel() == 0:  # nothing to average: 0, still attached to the graph
            return 0 * losses.nan_to_num().sum()
        return losses.sum() if reduction == "sum" else losses.mean()
    valid = (cu[1:] - cu[:-1]) >= 2
    total = torch.where(valid, losses, 0).sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1).to(total.dtype)
