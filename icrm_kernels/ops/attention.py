"""R2M's sequence-to-token cross-attention (docs/attention.md#math): public ops, checks, and the
op records (icrm_kernels/_op.py).

The paper computes Ĥ = concat_h(softmax(q_h k_hᵀ/√d_h) v_h) W_o with k = h W_k, v = h W_v
projected over every token. These ops compute the same function in the *absorbed* form, which
never projects a key or a value:

    q   = H W_q + b_q                                  [B, d]      (small torch GEMM)
    q̃_h = scale · W_k,h q_h                            [B, H, D_p] (small torch GEMM; b_k cancels)
    c_h, lse_h = Σ_l softmax_l(q̃_h·h_l) h_l, log Σ_l e^{q̃_h·h_l}    (core op: one read of states)
    Ĥ   = concat_h(c_h W_v,h + b_v,h) W_o + b_o        [B, D_r]    (small torch GEMMs)

Only the core touches the states. It is the custom op ``icrm::s2t_attention_core`` with a fake
and an autograd registration (backward: ``icrm::s2t_attention_core_bwd``), so the whole
function works under ``torch.compile(fullgraph=True)`` and autograd reaches the query, every
weight and bias (b_k cancels exactly: its gradient is exact zeros, it stays in the graph) and the states
when they require grad. Implementations of the core:

- CUDA tensors: Triton flash-decoding kernels (``icrm_kernels/triton/attention.py``).
- CPU tensors: the C++ extension (``csrc/attention.cpp``: one fused pass per sequence, online
  softmax, at::parallel_for over sequences) when built, else the absorbed form in plain torch
  (``reference.attention.s2t_attention_core``: two batched mat-vec passes over the states).
  Measured on the 2-core CI box, one thread, B=16, L=256, D_p=512, fp32: core forward C++ 0.98 ms
  vs torch 1.18 ms, backward 1.19 vs 1.33 ms (both far below the K/V projections they replace).

Choices beyond the formulas (documented in docs/attention.md#what-users-must-know):
- A row with no attended token (length 0, or every position masked) gives Ĥ = 0 and no output
  bias (nn.MultiheadAttention would give NaN). Emptiness comes from the layout (cu_seqlens /
  key_padding_mask), never from the scores: NaN or inf in states, query or any weight or bias
  give NaN in that row (or every row, for a weight), as nn.MultiheadAttention does; only a
  truly empty row gives 0. float64 inputs are computed in float64 on every path (CUDA float64
  runs the torch form, not the fp32 Triton kernels).
- Value checks off (``unchecked()``, torch.compile): malformed cu_seqlens (negative, decreasing,
  past the end) are sanitized to cu'[i] = max(cu'[i-1], clamp(cu[i], 0, T)) by every
  implementation: memory safety, not a meaningful result.
- The small GEMMs run in the input dtype (bf16/fp16 GEMMs accumulate in fp32 in torch); the core
  accumulates in fp32 and returns c in fp32, cast to the input dtype before the W_v projection.
- ``key_padding_mask`` must be a bool tensor (True = ignore), as nn.MultiheadAttention's.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from icrm_kernels import _op
from icrm_kernels._checks import (
    check_finite_float,
    check_offsets,
    check_positive_int,
    check_same_device,
    check_same_float_dtype,
    check_tensor,
    value_checks_enabled,
)
from icrm_kernels.reference import attention as _ref
from icrm_kernels.profiling import ranged

__all__ = ["seq_to_token_attention", "r2m_reward", "r2m_omega"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------- the records
# s2t_attention_core(q̃, states, cu_seqlens, key_padding_mask) -> (c[B, H, D_p], lse[B, H]) in fp32
# (fp64 for fp64 q̃): c_h = Σ_l softmax(q̃_h·h_l) h_l, and nonempty[B] bool: whether row b has an
# attended token, from the layout alone (never from the scores). The Triton kernels compute in
# fp32 (6e-7 error, gradcheck fails), so float64 runs the reference.
def _core_out(q_tilde, c, lse, nonempty):
    dt = _acc_dtype(q_tilde.dtype)
    if c.dtype != dt:
        c, lse = c.to(dt), lse.to(dt)
    return c.contiguous(), lse.contiguous(), nonempty.contiguous()


def _core_triton(q_tilde, states, cu_seqlens, key_padding_mask):
    from icrm_kernels.triton import attention as tri

    # nonempty from the offsets the launcher already sanitized (again at this level: ~45 µs)
    return _core_out(q_tilde, *tri.s2t_core_fwd(q_tilde, states, cu_seqlens, key_padding_mask))


def _core_cpp(q_tilde, states, cu_seqlens, key_padding_mask):
    c, lse = torch.ops.icrm_cpu.s2t_attention_core(q_tilde, states, cu_seqlens, key_padding_mask)
    return _core_out(q_tilde, c, lse, _ref.nonempty_rows(states, cu_seqlens, key_padding_mask, q_tilde.shape[0]))


def _core_reference(q_tilde, states, cu_seqlens, key_padding_mask):
    c, lse = _ref.s2t_attention_core(q_tilde, states, cu_seqlens, key_padding_mask)
    return _core_out(q_tilde, c, lse, _ref.nonempty_rows(states, cu_seqlens, key_padding_mask, q_tilde.shape[0]))


def _core_fake(q_tilde, states, cu_seqlens, key_padding_mask):
    b, h, _ = q_tilde.shape
    dt = _acc_dtype(q_tilde.dtype)
    return (q_tilde.new_empty(q_tilde.shape, dtype=dt), q_tilde.new_empty((b, h), dtype=dt),
            q_tilde.new_empty((b,), dtype=torch.bool))


# s2t_attention_core_bwd(dc, q̃, states, cu_seqlens, key_padding_mask, c, lse, need_dstates) ->
# (dq̃ in q̃'s dtype, d states in the states' dtype, or an empty tensor if not needed)
def _bwd_out(q_tilde, states, dq, dx, need_dstates):
    dx = dx.to(states.dtype).reshape(states.shape).contiguous() if need_dstates else states.new_empty(0)
    return dq.to(q_tilde.dtype).contiguous(), dx


def _bwd_triton(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse, need_dstates):
    from icrm_kernels.triton import attention as tri

    dq, dx = tri.s2t_core_bwd(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse, need_dstates)
    return _bwd_out(q_tilde, states, dq, dx, need_dstates)


def _bwd_cpp(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse, need_dstates):
    dq, dx = torch.ops.icrm_cpu.s2t_attention_core_bwd(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse,
                                                       need_dstates)
    return _bwd_out(q_tilde, states, dq, dx, need_dstates)


def _bwd_reference(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse, need_dstates):
    dq, dx = _ref.s2t_attention_core_backward(dc, q_tilde, states, c, lse, cu_seqlens, key_padding_mask, need_dstates)
    return _bwd_out(q_tilde, states, dq, dx, need_dstates)


def _bwd_fake(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse, need_dstates):
    return q_tilde.new_empty(q_tilde.shape), (states.new_empty(states.shape) if need_dstates else states.new_empty(0))


S2T_CORE_BWD = _op.define(_op.OpRecord(
    name="s2t_attention_core_bwd", family="attention",
    schema="(Tensor dc, Tensor q_tilde, Tensor states, Tensor? cu_seqlens, Tensor? key_padding_mask, Tensor c, "
           "Tensor lse, bool need_dstates) -> (Tensor, Tensor)",
    fake=_bwd_fake, triton=_bwd_triton, cpp=_bwd_cpp, cpp_op="s2t_attention_core_bwd", reference=_bwd_reference))


def _core_setup_context(ctx, inputs, output):
    q_tilde, states, cu_seqlens, key_padding_mask = inputs
    c, lse, nonempty = output
    ctx.save_for_backward(q_tilde, states, cu_seqlens, key_padding_mask, c, lse)
    ctx.mark_non_differentiable(lse, nonempty)


def _core_backward(ctx, dc, dlse, dnonempty):
    q_tilde, states, cu_seqlens, key_padding_mask, c, lse = ctx.saved_tensors
    need_dstates = bool(ctx.needs_input_grad[1])
    if dc is None:
        dc = torch.zeros_like(c)
    dq, dx = S2T_CORE_BWD(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse, need_dstates)
    return dq, (dx if need_dstates else None), None, None


S2T_CORE = _op.define(_op.OpRecord(
    name="s2t_attention_core", family="attention",
    schema="(Tensor q_tilde, Tensor states, Tensor? cu_seqlens, Tensor? key_padding_mask) -> (Tensor, Tensor, Tensor)",
    fake=_core_fake, triton=_core_triton, cpp=_core_cpp, cpp_op="s2t_attention_core", reference=_core_reference,
    backward=_core_backward, setup_context=_core_setup_context, eager_outputs=1, differentiable=2))


# r2m_reward_core(q̃, u, states, cu_seqlens, key_padding_mask) -> (y[B, H] =
# Σ_l softmax_l(q̃_h·h_l)(u_h·h_l), nonempty[B] bool); forward only
def _r2m_triton(q_tilde, u, states, cu_seqlens, key_padding_mask):
    from icrm_kernels.triton import attention as tri

    y, nonempty = tri.r2m_core(q_tilde, u, states, cu_seqlens, key_padding_mask)
    return y.to(_acc_dtype(q_tilde.dtype)).contiguous(), nonempty.contiguous()


def _r2m_cpp(q_tilde, u, states, cu_seqlens, key_padding_mask):
    y, nonempty = torch.ops.icrm_cpu.r2m_reward_core(q_tilde, u, states, cu_seqlens, key_padding_mask)
    return y.to(_acc_dtype(q_tilde.dtype)).contiguous(), nonempty


def _r2m_reference(q_tilde, u, states, cu_seqlens, key_padding_mask):
    return _ref.r2m_reward_core(q_tilde, u, states, cu_seqlens, key_padding_mask)


def _r2m_fake(q_tilde, u, states, cu_seqlens, key_padding_mask):
    b, h, _ = q_tilde.shape
    return q_tilde.new_empty((b, h), dtype=_acc_dtype(q_tilde.dtype)), q_tilde.new_empty((b,), dtype=torch.bool)


R2M_CORE = _op.define(_op.OpRecord(
    name="r2m_reward_core", family="attention",
    schema="(Tensor q_tilde, Tensor u, Tensor states, Tensor? cu_seqlens, Tensor? key_padding_mask) "
           "-> (Tensor, Tensor)",
    fake=_r2m_fake, triton=_r2m_triton, cpp=_r2m_cpp, cpp_op="r2m_reward_core", reference=_r2m_reference))


# ---------------------------------------------------------------- validation
def _check_inputs(query, states, w_q, w_k, w_v, w_o, cu_seqlens, key_padding_mask, num_heads, b_q, b_k, b_v, b_o, scale):
    check_tensor(query, "query", ndim=2, floating=True)
    check_tensor(states, "states", ndim=(2, 3), floating=True)
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)):
        check_tensor(w, name, ndim=2, floating=True)
    for name, b in (("b_q", b_q), ("b_k", b_k), ("b_v", b_v), ("b_o", b_o)):
        if b is not None:
            check_tensor(b, name, ndim=1, floating=True)
    check_same_device(query=query, states=states, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o, b_q=b_q, b_k=b_k, b_v=b_v,
                      b_o=b_o, cu_seqlens=cu_seqlens, key_padding_mask=key_padding_mask)
    check_same_float_dtype(query=query, states=states, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o, b_q=b_q, b_k=b_k,
                           b_v=b_v, b_o=b_o)
    bsz, d_r = query.shape
    d_p = states.shape[-1]
    d = w_q.shape[1]
    if w_q.shape[0] != d_r:
        raise ValueError(f"w_q must be [D_r={d_r}, d] (query width first), got {tuple(w_q.shape)}")
    for name, w in (("w_k", w_k), ("w_v", w_v)):
        if tuple(w.shape) != (d_p, d):
            raise ValueError(f"{name} must be [D_p={d_p}, d={d}] (states width x w_q's d), got {tuple(w.shape)}")
    if tuple(w_o.shape) != (d, d_r):
        raise ValueError(f"w_o must be [d={d}, D_r={d_r}], got {tuple(w_o.shape)}")
    for name, b, n in (("b_q", b_q, d), ("b_k", b_k, d), ("b_v", b_v, d), ("b_o", b_o, d_r)):
        if b is not None and b.shape[0] != n:
            raise ValueError(f"{name} must have {n} elements, got {tuple(b.shape)}")
    check_positive_int(num_heads, "num_heads")
    if d % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must divide the attention width d={d}")
    if scale is not None:
        check_finite_float(scale, "scale")
    if cu_seqlens is not None and key_padding_mask is not None:
        raise ValueError("give cu_seqlens (packed states[T, D_p]) or key_padding_mask (padded states[B, L, D_p]), not both")
    if states.dim() == 2:
        if cu_seqlens is None:
            raise ValueError("packed states[T, D_p] need cu_seqlens[B+1]; padded states must be [B, L, D_p]")
        check_offsets(cu_seqlens, "cu_seqlens", states.shape[0])
        if cu_seqlens.numel() != bsz + 1:
            raise ValueError(f"cu_seqlens must have B+1 = {bsz + 1} offsets (B = query rows), got {cu_seqlens.numel()}")
    else:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is for packed states[T, D_p]; states is padded [B, L, D_p]: use key_padding_mask")
        if states.shape[0] != bsz:
            raise ValueError(f"states must be [B={bsz}, L, D_p] (B = query rows), got {tuple(states.shape)}")
        if key_padding_mask is not None:
            check_tensor(key_padding_mask, "key_padding_mask", ndim=2, dtypes=(torch.bool,))
            if tuple(key_padding_mask.shape) != tuple(states.shape[:2]):
                raise ValueError(f"key_padding_mask must be [B, L] = {tuple(states.shape[:2])}, got {tuple(key_padding_mask.shape)}")
    return d


# ---------------------------------------------------------------- the absorbed pieces around the core
def _query_tilde(query, w_q, b_q, w_k, num_heads, scale):
    """q̃_h = scale · W_k,h (H W_q + b_q)_h: [B, H, D_p]."""
    d = w_q.shape[1]
    dh = d // num_heads
    scale = 1.0 / math.sqrt(dh) if scale is None else float(scale)
    q = query @ w_q
    if b_q is not None:
        q = q + b_q
    q = q * scale
    if num_heads == 1:  # plain GEMM (einsum would copy w_k into a batched layout)
        return (q @ w_k.t()).unsqueeze(1)
    return torch.einsum("bhe,phe->bhp", q.view(query.shape[0], num_heads, dh), w_k.view(w_k.shape[0], num_heads, dh))


def _head_gemv(w: Tensor, v: Tensor, acc: torch.dtype) -> Tensor:
    """out[h, r] = Σ_c W[r, h·C/H + c] v[h, c] in ``acc``; W [R, C], v [H, C/H]. The Triton path
    reads W once in its own dtype; torch's GEMV would first copy W to fp32 (at the target shape of docs/attention.md#speed-targets,
    ~75 µs per weight against ~6 µs for one read of it)."""
    if acc == torch.float32 and S2T_CORE.backend(v) == "triton":
        from icrm_kernels.triton import attention as _tri

        return _tri.head_gemv(w, v)
    heads, hc = v.shape
    if heads == 1:
        return (w.to(acc) @ v[0]).unsqueeze(0)
    return torch.einsum("phe,he->hp", w.to(acc).view(w.shape[0], heads, hc), v)


@ranged("seq_to_token_attention")
def seq_to_token_attention(
    query: Tensor, states: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor, *,
    cu_seqlens: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None, num_heads: int = 1,
    b_q: Optional[Tensor] = None, b_k: Optional[Tensor] = None, b_v: Optional[Tensor] = None,
    b_o: Optional[Tensor] = None, scale: Optional[float] = None,
) -> Tensor:
    """R2M's sequence-to-token cross-attention: the reward-token embedding attends over the policy's states.

    Ĥ = concat_h(softmax((H W_q + b_q)_h (h W_k + b_k)_hᵀ · scale) (h W_v + b_v)_h) W_o + b_o,
    computed in the absorbed form (see the module docstring): keys and values are never projected.

    Args:
        query: ``[B, D_r]`` the reward model's last hidden state at the reward token (H).
        states: packed ``[T, D_p]`` with ``cu_seqlens``, or padded ``[B, L, D_p]`` (optionally with
            ``key_padding_mask``). The policy's last-layer hidden states (h).
        w_q ``[D_r, d]``, w_k ``[D_p, d]``, w_v ``[D_p, d]``, w_o ``[d, D_r]``: ``x @ w`` convention
            (the transpose of an nn.Linear weight).
        cu_seqlens: int32/int64 ``[B+1]`` offsets (flash-attn convention); read on the device only.
        key_padding_mask: bool ``[B, L]``, True = ignore (nn.MultiheadAttention's convention).
        num_heads: divides d; head h uses columns ``h*d/H:(h+1)*d/H`` of w_q, w_k, w_v and rows of w_o.
        b_q, b_k, b_v ``[d]``, b_o ``[D_r]``: optional biases (b_k cancels in the softmax; its gradient is zeros).
        scale: score scale, default ``1/sqrt(d/num_heads)``.

    Returns ``[B, D_r]`` in the input dtype (fp32/bf16/fp16/fp64, all tensors one dtype). A row
    with no attended token gives 0 (no output bias). Differentiable w.r.t. every floating input.
    """
    d = _check_inputs(query, states, w_q, w_k, w_v, w_o, cu_seqlens, key_padding_mask, num_heads, b_q, b_k, b_v, b_o, scale)
    dh = d // num_heads
    q_tilde = _query_tilde(query, w_q, b_q, w_k, num_heads, scale)
    c, lse, nonempty = S2T_CORE(q_tilde, states, cu_seqlens, key_padding_mask)
    if num_heads == 1:
        o = c[:, 0].to(query.dtype) @ w_v
    else:
        o = torch.einsum("bhp,phe->bhe", c.to(query.dtype), w_v.view(w_v.shape[0], num_heads, dh))
        o = o.reshape(query.shape[0], d)
    if b_v is not None:
        o = o + b_v
    out = o @ w_o
    if b_o is not None:
        out = out + b_o
    if b_k is not None:
        # b_k cancels in the softmax, so it never enters the absorbed form; a zero-valued term
        # keeps it in the graph (autograd.grad gives exact zeros, as nn.MultiheadAttention, rather
        # than raising) and lets a NaN/inf in it poison the output, as it does in the explicit form
        out = out + b_k.sum() * 0.0
    # Empty rows from the layout, never from the scores: a NaN/inf score (NaN or inf in states,
    # query or weights) used to give a non-finite lse that passed for "empty" and returned 0.
    nonempty = nonempty[:, None]  # from the core (the layout the kernels used)
    # attended tokens but lse = -inf (every score -inf): NaN, as softmax gives
    no_mass = nonempty & (lse == float("-inf")).any(dim=-1, keepdim=True)
    out = torch.where(nonempty, out, 0.0)  # (scalar fills: no zeros_like / full_like tensors)
    return torch.where(no_mass, float("nan"), out)


def r2m_omega(step, total_steps, floor: float = 0.6):
    """ω(t) = max(½·cos(π·t/T) + ½, Ω): the weight of the RM's own embedding at RL step t of T.

    ``step``/``total_steps`` are numbers (returns a float) or tensors (returns a float64 tensor).
    ω(0) = 1, ω(T/2) = max(½, Ω), ω(T) = Ω (the floor, 0.6 by default); steps past T stay at Ω.
    """
    if not isinstance(step, torch.Tensor):
        check_finite_float(step, "step", low=0)
    if not isinstance(total_steps, torch.Tensor):
        check_finite_float(total_steps, "total_steps", low=0, low_open=True)
    check_finite_float(floor, "floor", low=0, high=1)
    for name, v, low_open in (("step", step, False), ("total_steps", total_steps, True)):
        if isinstance(v, torch.Tensor):
            if v.is_complex() or v.dtype == torch.bool:
                raise TypeError(f"{name} must be a real number or a real tensor, got dtype {v.dtype}")
            if value_checks_enabled() and v.numel():
                vf = v.detach().to(torch.float64)
                bad = ~(torch.isfinite(vf) & ((vf > 0) if low_open else (vf >= 0)))
                if bool(bad.any()):
                    raise ValueError(f"{name} must be finite and {'> 0' if low_open else '>= 0'}, "
                                     f"got {vf[bad].flatten()[0].item()}")
    if isinstance(step, torch.Tensor) or isinstance(total_steps, torch.Tensor):
        t = torch.as_tensor(step, dtype=torch.float64)
        total = torch.as_tensor(total_steps, dtype=torch.float64, device=t.device)
        t = torch.minimum(t, total)
        return torch.clamp(0.5 * torch.cos(math.pi * t / total) + 0.5, min=floor)
    step = min(float(step), float(total_steps))
    return max(0.5 * math.cos(math.pi * step / total_steps) + 0.5, floor)


@ranged("r2m_reward")
def r2m_reward(
    query: Tensor, states: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor, *,
    score_weight: Tensor, score_bias=None, omega, cu_seqlens: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None, num_heads: int = 1, b_q: Optional[Tensor] = None,
    b_k: Optional[Tensor] = None, b_v: Optional[Tensor] = None, b_o: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """Fused R2M reward, forward only: r = φ(ω·H + (1 − ω)·Ĥ), φ(x) = x·w_s + b_s.

    Since φ, W_o and W_v are linear, φ(Ĥ) = Σ_h Σ_l p_hl (u_h·h_l) + Σ_h b_v,h·z_h + b_o·w_s with
    z = W_o w_s and u_h = W_v,h z_h (width D_p): the kernel takes two dot products per token per
    head and never materialises c or Ĥ. Empty rows give r = φ(ω·H).

    Args: as :func:`seq_to_token_attention`, plus ``score_weight`` ``[D_r]`` (or an nn.Linear
    weight ``[1, D_r]``), ``score_bias`` (number, 0-d or 1-element tensor, or None) and ``omega``
    (number or 0-d tensor in [0, 1], see :func:`r2m_omega`).

    Returns ``[B]`` rewards in fp32 (fp64 for fp64 inputs), computed under ``torch.no_grad()``:
    train through :func:`seq_to_token_attention` and the score head instead.
    """
    d = _check_inputs(query, states, w_q, w_k, w_v, w_o, cu_seqlens, key_padding_mask, num_heads, b_q, b_k, b_v, b_o, scale)
    check_tensor(score_weight, "score_weight", ndim=(1, 2), floating=True)
    d_r = query.shape[1]
    if tuple(score_weight.shape) not in ((d_r,), (1, d_r)):
        raise ValueError(f"score_weight must be [D_r={d_r}] or an nn.Linear weight [1, D_r={d_r}], "
                         f"got {tuple(score_weight.shape)}")
    check_same_device(query=query, score_weight=score_weight)
    check_same_float_dtype(query=query, score_weight=score_weight)
    if isinstance(omega, torch.Tensor):
        if omega.numel() != 1:
            raise ValueError(f"omega must be a number or a one-element tensor, got shape {tuple(omega.shape)}")
        if not (omega.dtype.is_floating_point or omega.dtype in (torch.int32, torch.int64, torch.uint8, torch.int16,
                                                                  torch.int8)):
            raise TypeError(f"omega must be a real number or a real tensor, got dtype {omega.dtype}")
        check_same_device(query=query, omega=omega)
        if value_checks_enabled():
            om_v = float(omega.reshape(()))
            if not (0.0 <= om_v <= 1.0):  # NaN fails too
                raise ValueError(f"omega must be in [0, 1], got {om_v}")
    else:
        check_finite_float(omega, "omega", low=0, high=1)
    if isinstance(score_bias, torch.Tensor) and score_bias.numel() != 1:
        raise ValueError(f"score_bias must be a number or a one-element tensor, got shape {tuple(score_bias.shape)}")
    dh = d // num_heads
    acc = _acc_dtype(query.dtype)
    with torch.no_grad():
        w_s = score_weight.reshape(-1).to(acc)
        q_tilde = _query_tilde(query, w_q, b_q, w_k, num_heads, scale)
        z = _head_gemv(w_o, w_s.view(1, -1), acc).view(num_heads, dh)  # W_o,h w_s
        u = _head_gemv(w_v, z, acc)  # [H, D_p]: u_h = W_v,h z_h
        const = (b_v.to(acc) @ z.reshape(-1)) if b_v is not None else torch.zeros((), dtype=acc, device=query.device)
        if b_o is not None:
            const = const + b_o.to(acc) @ w_s
        y, nonempty = R2M_CORE(q_tilde, u, states, cu_seqlens, key_padding_mask)
        if b_k is not None:
            const = const + b_k.to(acc).sum() * 0.0  # cancels, but a NaN/inf in it poisons, as in seq_to_token_attention
        attn = torch.where(nonempty, y.sum(-1) + const, torch.zeros((), dtype=acc, device=query.device))
        om = omega.reshape(()).to(device=query.device, dtype=acc) if isinstance(omega, torch.Tensor) else float(omega)
        r = om * (query.to(acc) @ w_s) + (1 - om) * attn
        if score_bias is not None:
            r = r + (score_bias.reshape(()).to(acc) if isinstance(score_bias, torch.Tensor) else float(score_bias))
    return r
