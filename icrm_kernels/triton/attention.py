"""Triton kernels for R2M's sequence-to-token cross-attention, absorbed form (docs/attention.md#math).

The projections are folded into the query side (q̃_h = scale · W_k,h q_h, width D_p), so the
kernels only ever read the raw states ``x[rows, D_p]`` (bf16/fp16/fp32, fp32 math):

Two kernel families, chosen per call in the launcher (``_config``; sweepable inside a
``launch_config(...)`` block, see ``bench/tune_attention.py``):

- full-row kernels (``_s2t_fwd_row_kernel``, ``_s2t_bwd_row_kernel``, ``_r2m_row_kernel``), used
  when next_pow2(D_p) <= 8192 and H <= 2 (the paper's default is one head): one program per
  (work item, head) loads each token block's whole row tile once, keeps q̃ / u / dc and its
  accumulators in registers for the whole program and stores its partial once. Every state
  byte is read once from DRAM; the next block's tile is loaded before the current one is used.
- generic kernels below, for many heads or very wide D_p:

- ``_s2t_fwd_kernel``: flash-decoding forward. One program per *work item* (a sequence's chunk
  of at most ``tokens_per_program`` tokens). Per block of BLOCK_L tokens: sweep 1 over D_p in
  BLOCK_D chunks computes the H scores of each token (elementwise products accumulate in a
  register tile across the chunks and are reduced once per token block), online softmax; sweep 2 re-reads the same
  tile (L1/L2 hit) and accumulates Σ p_l x_l into the program's fp32 partial [H, D_p] in a
  workspace. Writes the partial (m, l, acc).
- ``_s2t_combine_kernel``: merges the partials of each sequence (softmax mode: max/sum rescale,
  gives c and lse; sum mode: plain sum, used for dq̃ in the backward).
- ``_s2t_bwd_kernel``: one pass over the states: recomputes s_l, takes g_l = x_l·dc_h,
  ds_l = p_l (g_l − c_h·dc_h), accumulates dq̃_h partials Σ_l ds_l x_l and (optionally) writes
  dx_l = Σ_h p_l dc_h + ds_l q̃_h.
- ``_r2m_kernel``: fused reward: two dot products per token per head (q̃_h·x_l and u_h·x_l),
  online softmax of the first weighting the second; never materialises c. Partials
  (m, l, a) per work item, merged with a few tiny torch ops.

Work decomposition without host synchronisation: ``cu_seqlens`` stays on the device. With
``tpp`` tokens per program, sequence b needs ceil(len_b/tpp) work items; their prefix sum
``work_off[B+1]`` and the map work item -> sequence (``searchsorted``) are computed on the
device. The grid size is the host-known upper bound ``T_total // tpp + B`` (Σ ceil(len_b/tpp) ≤
T/tpp + B); programs past the last work item do nothing. ``tpp`` is a power of two chosen from
T_total and the SM count (about 8 programs per SM, between BLOCK_L and 1024 tokens), so the
fp32 workspace is ≤ (T/tpp + B)·H·D_p·4 bytes: ~1% of the states at the target shape
(docs/attention.md#speed-targets).
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
import triton
import triton.language as tl

from icrm_kernels._checks import reset_context
from icrm_kernels._layout import sanitize_offsets
from icrm_kernels.triton import cdiv, next_power_of_2
from icrm_kernels.triton._aot import AotSpec



@triton.jit
def _work_range(pid, B, cu_ptr, work_off_ptr, work_seq_ptr, tpp):
    seq = tl.load(work_seq_ptr + pid)
    live = seq < B
    seq = tl.maximum(tl.minimum(seq, B - 1), 0)
    # The launcher sanitizes cu (monotone, inside [0, T], cu[B] <= T); clamping again here keeps
    # every row index inside [0, cu[B]] even if a caller hands the kernel raw offsets.
    total = tl.maximum(tl.load(cu_ptr + B), 0)
    seq_start = tl.minimum(tl.maximum(tl.load(cu_ptr + seq), 0), total)
    seq_end = tl.minimum(tl.maximum(tl.load(cu_ptr + seq + 1), seq_start), total)
    chunk = tl.maximum(pid - tl.load(work_off_ptr + seq), 0)
    start = tl.minimum(seq_start + chunk * tpp, seq_end)
    end = tl.minimum(seq_end, start + tpp)
    end = tl.where(live, end, start)
    return seq, start, end


@triton.jit
def _online_softmax(m_i, l_i, s, valid):
    """One token block of the streaming softmax. s: scores [L] or [L, H]; valid broadcasts to s
    (invalid tokens get weight 0); m_i, l_i: running max and sum ([] or [H]). Returns the new
    max, the factor alpha that rescales the running sums, the block's weights p = exp(s - max)
    and the new sum l_i * alpha + Σ p."""
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf)
    alpha = tl.exp(m_i - m_safe)
    p = tl.where(valid, tl.exp(s - m_safe), 0.0)
    return m_new, alpha, p, l_i * alpha + tl.sum(p, axis=0)


@triton.jit
def _s2t_fwd_kernel(
    x_ptr, q_ptr, mask_ptr, cu_ptr, work_off_ptr, work_seq_ptr,
    m_ptr, l_ptr, acc_ptr,
    B, H, D, stride_x, tpp,
    HAS_MASK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    seq, start, end = _work_range(pid, B, cu_ptr, work_off_ptr, work_seq_ptr, tpp)
    offs_h = tl.arange(0, BLOCK_H)
    mh = offs_h < H
    q_base = q_ptr + seq * H * D
    acc_base = acc_ptr + pid * H * D
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    n_blocks = tl.cdiv(end - start, BLOCK_L)
    for i in range(0, n_blocks):
        offs_l = start + i * BLOCK_L + tl.arange(0, BLOCK_L)
        in_range = offs_l < end
        valid = in_range
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + offs_l, mask=in_range, other=1) == 0)
        # sweep 1: H scores per token; elementwise products accumulate in registers across the D
        # loop and are reduced once after it (one cross-warp reduction per token block, not per chunk)
        s3 = tl.zeros([BLOCK_L, BLOCK_H, BLOCK_D], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            md = offs_d < D
            x = tl.load(x_ptr + offs_l[:, None] * stride_x + offs_d[None, :],
                        mask=valid[:, None] & md[None, :], other=0.0).to(tl.float32)
            q = tl.load(q_base + offs_h[:, None] * D + offs_d[None, :], mask=mh[:, None] & md[None, :], other=0.0)
            s3 += x[:, None, :] * q[None, :, :]
        m_i, alpha, p, l_i = _online_softmax(m_i, l_i, tl.sum(s3, axis=2), valid[:, None])
        # sweep 2: the same tile again (cache hit), acc = acc·alpha + Σ_l p_l x_l. The partial acc
        # is read back from the workspace this program wrote in the previous block: the barrier
        # orders those stores before these loads whatever thread mapping the loads get.
        tl.debug_barrier()
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            md = offs_d < D
            x = tl.load(x_ptr + offs_l[:, None] * stride_x + offs_d[None, :],
                        mask=valid[:, None] & md[None, :], other=0.0).to(tl.float32)
            a_ptrs = acc_base + offs_h[:, None] * D + offs_d[None, :]
            am = mh[:, None] & md[None, :]
            a = tl.load(a_ptrs, mask=am & (i > 0), other=0.0)
            a = a * alpha[:, None] + tl.sum(p[:, :, None] * x[:, None, :], axis=0)
            tl.store(a_ptrs, a, mask=am)
    tl.store(m_ptr + pid * H + offs_h, m_i, mask=mh)
    tl.store(l_ptr + pid * H + offs_h, l_i, mask=mh)


@triton.jit
def _s2t_combine_kernel(
    m_ptr, l_ptr, acc_ptr, work_off_ptr, out_ptr, lse_ptr,
    H, D,
    SOFTMAX: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pd = tl.program_id(2)
    w0 = tl.load(work_off_ptr + b)
    w1 = tl.load(work_off_ptr + b + 1)
    offs_d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    out = tl.zeros([BLOCK_D], tl.float32)
    if SOFTMAX:
        big_m = tl.load(m_ptr + w0 * H + h, mask=w0 < w1, other=float("-inf"))
        for w in range(w0, w1):
            big_m = tl.maximum(big_m, tl.load(m_ptr + w * H + h))
        den = tl.sum(out, axis=0) * 0.0
        for w in range(w0, w1):
            mw = tl.load(m_ptr + w * H + h)
            wt = tl.exp(mw - tl.where(big_m == float("-inf"), 0.0, big_m))  # 0 for an all-masked partial
            den += wt * tl.load(l_ptr + w * H + h)
            a = tl.load(acc_ptr + (w * H + h) * D + offs_d, mask=md, other=0.0)
            out += wt * a
        # den == 0: no attended token (or only -inf scores: the op layer tells them apart from
        # the layout). A NaN den (NaN or inf scores) must stay NaN: `den > 0` would turn it
        # into an empty row's 0.
        empty = den == 0.0
        safe = tl.where(empty, 1.0, den)
        out = tl.where(empty, 0.0, out / safe)
        lse = tl.where(empty, float("-inf"), big_m + tl.log(safe))
        if pd == 0:
            tl.store(lse_ptr + b * H + h, lse)
    else:
        for w in range(w0, w1):
            out += tl.load(acc_ptr + (w * H + h) * D + offs_d, mask=md, other=0.0)
    tl.store(out_ptr + (b * H + h) * D + offs_d, out, mask=md)


@triton.jit
def _two_dots(x_ptr, a_ptr, b_ptr, offs_l, valid, stride_x, offs_h, mh, D,
              BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per token and head, (a_h·x_l, b_h·x_l) for a block of token rows x and two [H, D] fp32
    vectors a, b (generic kernels). Products accumulate elementwise over the D chunks and are
    reduced once at the end: one cross-warp reduction per token block, not one per chunk."""
    sa = tl.zeros([BLOCK_L, BLOCK_H, BLOCK_D], tl.float32)
    sb = tl.zeros([BLOCK_L, BLOCK_H, BLOCK_D], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        md = offs_d < D
        hm = mh[:, None] & md[None, :]
        x = tl.load(x_ptr + offs_l[:, None] * stride_x + offs_d[None, :],
                    mask=valid[:, None] & md[None, :], other=0.0).to(tl.float32)
        a = tl.load(a_ptr + offs_h[:, None] * D + offs_d[None, :], mask=hm, other=0.0)
        b = tl.load(b_ptr + offs_h[:, None] * D + offs_d[None, :], mask=hm, other=0.0)
        sa += x[:, None, :] * a[None, :, :]
        sb += x[:, None, :] * b[None, :, :]
    return tl.sum(sa, axis=2), tl.sum(sb, axis=2)


@triton.jit
def _s2t_bwd_kernel(
    x_ptr, q_ptr, dc_ptr, lse_ptr, delta_ptr, mask_ptr, cu_ptr, work_off_ptr, work_seq_ptr,
    dq_ptr, dx_ptr,
    B, H, D, stride_x, stride_dx, tpp,
    HAS_MASK: tl.constexpr, NEED_DX: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    seq, start, end = _work_range(pid, B, cu_ptr, work_off_ptr, work_seq_ptr, tpp)
    offs_h = tl.arange(0, BLOCK_H)
    mh = offs_h < H
    q_base = q_ptr + seq * H * D
    dc_base = dc_ptr + seq * H * D
    dq_base = dq_ptr + pid * H * D
    lse = tl.load(lse_ptr + seq * H + offs_h, mask=mh, other=float("-inf"))
    delta = tl.load(delta_ptr + seq * H + offs_h, mask=mh, other=0.0)
    has_mass = lse != float("-inf")  # a NaN lse propagates into p and the gradients
    lse_safe = tl.where(has_mass, lse, 0.0)
    n_blocks = tl.cdiv(end - start, BLOCK_L)
    for i in range(0, n_blocks):
        offs_l = start + i * BLOCK_L + tl.arange(0, BLOCK_L)
        in_range = offs_l < end
        valid = in_range
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + offs_l, mask=in_range, other=1) == 0)
        s, g = _two_dots(x_ptr, q_base, dc_base, offs_l, valid, stride_x, offs_h, mh, D,
                         BLOCK_L, BLOCK_H, BLOCK_D)
        keep = valid[:, None] & has_mass[None, :]
        p = tl.where(keep, tl.exp(s - lse_safe[None, :]), 0.0)
        ds = p * (g - delta[None, :])
        tl.debug_barrier()  # the dq partial written in the previous block is read back below
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            md = offs_d < D
            hm = mh[:, None] & md[None, :]
            x = tl.load(x_ptr + offs_l[:, None] * stride_x + offs_d[None, :],
                        mask=valid[:, None] & md[None, :], other=0.0).to(tl.float32)
            a_ptrs = dq_base + offs_h[:, None] * D + offs_d[None, :]
            a = tl.load(a_ptrs, mask=hm & (i > 0), other=0.0)
            tl.store(a_ptrs, a + tl.sum(ds[:, :, None] * x[:, None, :], axis=0), mask=hm)
            if NEED_DX:
                q = tl.load(q_base + offs_h[:, None] * D + offs_d[None, :], mask=hm, other=0.0)
                dc = tl.load(dc_base + offs_h[:, None] * D + offs_d[None, :], mask=hm, other=0.0)
                dx = tl.sum(p[:, :, None] * dc[None, :, :] + ds[:, :, None] * q[None, :, :], axis=1)
                tl.store(dx_ptr + offs_l[:, None] * stride_dx + offs_d[None, :],
                         dx.to(dx_ptr.dtype.element_ty), mask=in_range[:, None] & md[None, :])


@triton.jit
def _r2m_kernel(
    x_ptr, q_ptr, u_ptr, mask_ptr, cu_ptr, work_off_ptr, work_seq_ptr,
    m_ptr, l_ptr, a_ptr,
    B, H, D, stride_x, tpp,
    HAS_MASK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    seq, start, end = _work_range(pid, B, cu_ptr, work_off_ptr, work_seq_ptr, tpp)
    offs_h = tl.arange(0, BLOCK_H)
    mh = offs_h < H
    q_base = q_ptr + seq * H * D
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    a_i = tl.zeros([BLOCK_H], tl.float32)
    n_blocks = tl.cdiv(end - start, BLOCK_L)
    for i in range(0, n_blocks):
        offs_l = start + i * BLOCK_L + tl.arange(0, BLOCK_L)
        valid = offs_l < end
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + offs_l, mask=valid, other=1) == 0)
        s, v = _two_dots(x_ptr, q_base, u_ptr, offs_l, valid, stride_x, offs_h, mh, D,
                         BLOCK_L, BLOCK_H, BLOCK_D)
        m_i, alpha, p, l_i = _online_softmax(m_i, l_i, s, valid[:, None])
        a_i = a_i * alpha + tl.sum(p * v, axis=0)
    tl.store(m_ptr + pid * H + offs_h, m_i, mask=mh)
    tl.store(l_ptr + pid * H + offs_h, l_i, mask=mh)
    tl.store(a_ptr + pid * H + offs_h, a_i, mask=mh)


# ---------------------------------------------------------------- full-row kernels
# One program = one (work item, head); pid = work * H + head, so the heads of one work item run
# side by side and share the row tiles in L2. The whole row x[BLOCK_L, D_PAD] is loaded once per
# token block (each state byte read once from DRAM, never re-read), the per-head vectors (q̃, u,
# dc) and accumulators (acc, dq̃) stay in registers for the whole program, and the partial is
# stored once at the end: no workspace read-modify-write per block. The next token block's rows
# are loaded before the current one is reduced (register double buffer), so a program always has
# one tile in flight while it computes.
@triton.jit
def _add2(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def _load_rows(x_ptr, mask_ptr, row0, end, stride_x, offs_d, md, HAS_MASK: tl.constexpr, BLOCK_L: tl.constexpr):
    offs_l = row0 + tl.arange(0, BLOCK_L)
    in_range = offs_l < end
    valid = in_range
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + offs_l, mask=in_range, other=1) == 0)
    x = tl.load(x_ptr + offs_l[:, None] * stride_x + offs_d[None, :], mask=valid[:, None] & md[None, :], other=0.0)
    return x, valid


@triton.jit
def _row_program(pid, q_ptr, B, H, D, cu_ptr, work_off_ptr, work_seq_ptr, tpp, D_PAD: tl.constexpr):
    """What a full-row program works on: its head h (the heads of one work item are adjacent
    programs), its sequence and token range, the D_PAD lanes and the head's q̃ row in registers."""
    h = pid % H
    seq, start, end = _work_range(pid // H, B, cu_ptr, work_off_ptr, work_seq_ptr, tpp)
    offs_d = tl.arange(0, D_PAD)
    md = offs_d < D
    q = tl.load(q_ptr + (seq * H + h) * D + offs_d, mask=md, other=0.0)
    return h, seq, start, end, offs_d, md, q


@triton.jit
def _s2t_fwd_row_kernel(
    x_ptr, q_ptr, mask_ptr, cu_ptr, work_off_ptr, work_seq_ptr,
    m_ptr, l_ptr, acc_ptr,
    B, H, D, stride_x, tpp,
    HAS_MASK: tl.constexpr, BLOCK_L: tl.constexpr, D_PAD: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    h, seq, start, end, offs_d, md, q = _row_program(pid, q_ptr, B, H, D, cu_ptr, work_off_ptr, work_seq_ptr, tpp,
                                                     D_PAD)
    acc = tl.zeros([D_PAD], tl.float32)
    m_i = tl.max(acc, axis=0) * 0.0 + float("-inf")
    l_i = tl.sum(acc, axis=0)
    n_blocks = tl.cdiv(end - start, BLOCK_L)
    x_next, valid_next = _load_rows(x_ptr, mask_ptr, start, end, stride_x, offs_d, md, HAS_MASK, BLOCK_L)
    for i in range(0, n_blocks):
        x_raw = x_next
        valid = valid_next
        # issue the next block's loads before this block's tile is first used: two tiles in flight
        x_next, valid_next = _load_rows(x_ptr, mask_ptr, start + (i + 1) * BLOCK_L, end, stride_x, offs_d, md,
                                        HAS_MASK, BLOCK_L)
        x = x_raw.to(tl.float32)
        m_i, alpha, p, l_i = _online_softmax(m_i, l_i, tl.sum(x * q[None, :], axis=1), valid)
        acc = acc * alpha + tl.sum(p[:, None] * x, axis=0)
    tl.store(m_ptr + pid, m_i)
    tl.store(l_ptr + pid, l_i)
    tl.store(acc_ptr + pid * D + offs_d, acc, mask=md)


@triton.jit
def _s2t_bwd_row_kernel(
    x_ptr, q_ptr, dc_ptr, lse_ptr, delta_ptr, mask_ptr, cu_ptr, work_off_ptr, work_seq_ptr,
    dq_ptr, dx_ptr,
    B, H, D, stride_x, stride_dx, tpp,
    HAS_MASK: tl.constexpr, NEED_DX: tl.constexpr, BLOCK_L: tl.constexpr, D_PAD: tl.constexpr,
):
    """NEED_DX only with H == 1 (dx sums over heads; the launcher enforces it)."""
    pid = tl.program_id(0).to(tl.int64)
    h, seq, start, end, offs_d, md, q = _row_program(pid, q_ptr, B, H, D, cu_ptr, work_off_ptr, work_seq_ptr, tpp,
                                                     D_PAD)
    dc = tl.load(dc_ptr + (seq * H + h) * D + offs_d, mask=md, other=0.0)
    lse = tl.load(lse_ptr + seq * H + h)
    delta = tl.load(delta_ptr + seq * H + h)
    # 0 for a sequence with no attended token; a NaN lse propagates into p and the gradients
    mass = tl.where(lse != float("-inf"), 1.0, 0.0)
    lse_safe = tl.where(lse != float("-inf"), lse, 0.0)
    dq = tl.zeros([D_PAD], tl.float32)
    n_blocks = tl.cdiv(end - start, BLOCK_L)
    x_next, valid_next = _load_rows(x_ptr, mask_ptr, start, end, stride_x, offs_d, md, HAS_MASK, BLOCK_L)
    for i in range(0, n_blocks):
        x_raw = x_next
        valid = valid_next
        # issue the next block's loads before this block's tile is first used: two tiles in flight
        x_next, valid_next = _load_rows(x_ptr, mask_ptr, start + (i + 1) * BLOCK_L, end, stride_x, offs_d, md,
                                        HAS_MASK, BLOCK_L)
        x = x_raw.to(tl.float32)
        s, g = tl.reduce((x * q[None, :], x * dc[None, :]), 1, _add2)  # one cross-warp reduction for both
        p = tl.where(valid, tl.exp(s - lse_safe) * mass, 0.0)
        ds = p * (g - delta)
        dq += tl.sum(ds[:, None] * x, axis=0)
        if NEED_DX:
            offs_l = start + i * BLOCK_L + tl.arange(0, BLOCK_L)
            dx = p[:, None] * dc[None, :] + ds[:, None] * q[None, :]
            tl.store(dx_ptr + offs_l[:, None] * stride_dx + offs_d[None, :], dx.to(dx_ptr.dtype.element_ty),
                     mask=(offs_l < end)[:, None] & md[None, :])
    tl.store(dq_ptr + pid * D + offs_d, dq, mask=md)


@triton.jit
def _r2m_row_kernel(
    x_ptr, q_ptr, u_ptr, mask_ptr, cu_ptr, work_off_ptr, work_seq_ptr,
    m_ptr, l_ptr, a_ptr,
    B, H, D, stride_x, tpp,
    HAS_MASK: tl.constexpr, BLOCK_L: tl.constexpr, D_PAD: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    h, seq, start, end, offs_d, md, q = _row_program(pid, q_ptr, B, H, D, cu_ptr, work_off_ptr, work_seq_ptr, tpp,
                                                     D_PAD)
    u = tl.load(u_ptr + h * D + offs_d, mask=md, other=0.0)
    zero = tl.sum(q, axis=0) * 0.0
    m_i = zero + float("-inf")
    l_i = zero
    a_i = zero
    n_blocks = tl.cdiv(end - start, BLOCK_L)
    x_next, valid_next = _load_rows(x_ptr, mask_ptr, start, end, stride_x, offs_d, md, HAS_MASK, BLOCK_L)
    for i in range(0, n_blocks):
        x_raw = x_next
        valid = valid_next
        # issue the next block's loads before this block's tile is first used: two tiles in flight
        x_next, valid_next = _load_rows(x_ptr, mask_ptr, start + (i + 1) * BLOCK_L, end, stride_x, offs_d, md,
                                        HAS_MASK, BLOCK_L)
        x = x_raw.to(tl.float32)
        s, v = tl.reduce((x * q[None, :], x * u[None, :]), 1, _add2)  # one cross-warp reduction for both
        m_i, alpha, p, l_i = _online_softmax(m_i, l_i, s, valid)
        a_i = a_i * alpha + tl.sum(p * v, axis=0)
    tl.store(m_ptr + pid, m_i)
    tl.store(l_ptr + pid, l_i)
    tl.store(a_ptr + pid, a_i)


# ---------------------------------------------------------------- launchers
# Launch settings forced inside a launch_config() block (per context: threads and asyncio tasks
# each see their own), for tests and the launch-configuration sweeps.
_FORCED = contextvars.ContextVar("icrm_attention_launch_config", default={})


@contextlib.contextmanager
def launch_config(overrides=None, *, tokens_per_program=None, reset=False):
    """Inside the block, the attention launchers use these settings instead of their defaults.

    ``overrides``: ``{kind: {...}}`` per kernel kind ("fwd", "bwd", "r2m") with any of "variant"
    ("row" | "generic"), "BLOCK_L", "BLOCK_D" (generic only), "num_warps", "tpp" (tokens per
    program), "programs_per_sm" (used to derive tpp when "tpp" is absent).
    ``tokens_per_program``: every kind's work split (tests use tiny shares so that the interpreter
    exercises the cross-program combine). ``reset``: start from the defaults, not from an
    enclosing block's settings."""
    forced = {} if reset else dict(_FORCED.get())
    for kind, ov in (overrides or {}).items():
        forced[kind] = dict(ov)
    if tokens_per_program is not None:
        forced["tokens_per_program"] = int(tokens_per_program)
    token = _FORCED.set(forced)
    try:
        yield
    finally:
        reset_context(_FORCED, token, {})  # (a fixture may leave the block in another context)


# The full-row kernels keep a [D_PAD] fp32 vector per head operand in registers: used when the
# padded width fits (D_PAD <= ROW_MAX_DPAD) and for few heads (each head is its own program; the
# heads of one work item share the row tiles through L2). The states gradient sums over heads,
# so the row backward computes it only for one head.
ROW_MAX_DPAD = 8192
ROW_MAX_HEADS = 2


def _blocks(num_heads: int, d: int, elem_bytes: int):
    """(BLOCK_L, BLOCK_H, BLOCK_D) of the generic kernels. A token block's full row tile
    (BLOCK_L x D_p) is read twice (scores, then accumulation): keep it <= 64 KiB so the second
    sweep hits L1/L2 even with a few programs per SM (BLOCK_L = 8 for bf16 D_p = 4096). The
    [BLOCK_L, BLOCK_H, BLOCK_D] register accumulators hold <= 4096 fp32 values (32 per thread at
    4 warps)."""
    block_h = next_power_of_2(max(num_heads, 1))
    block_l = 16 if block_h <= 4 else 8
    while block_l > 4 and block_l * d * elem_bytes > 64 * 1024:
        block_l //= 2
    block_d = max(16, min(4096 // (block_l * block_h), 256, next_power_of_2(max(d, 1))))
    return block_l, block_h, block_d


def _config(kind: str, heads: int, d: int, elem_bytes: int, need_dx: bool = False) -> dict:
    ov = dict(_FORCED.get().get(kind) or {})
    d_pad = next_power_of_2(max(d, 1))
    row_ok = d_pad <= ROW_MAX_DPAD and not (kind == "bwd" and need_dx and heads > 1)
    variant = ov.pop("variant", "row" if (row_ok and heads <= ROW_MAX_HEADS) else "generic")
    if variant == "row" and not row_ok:
        variant = "generic"
    if variant == "row":
        # one token block = BLOCK_L x D_PAD fp32 values: 8192 (32 registers a thread at 8 warps),
        # plus the next block's tile in flight in the states' dtype
        # (fwd, r2m: 2 x 4096 at 8 warps, ~128 / ~95 registers: two programs per SM). The backward
        # holds three [D_PAD] vectors (q̃, dc, dq̃): 4 x 4096 at 16 warps (<= 128 registers).
        if kind == "bwd":
            cfg = dict(variant="row", BLOCK_L=max(1, min(16, 16384 // d_pad)), D_PAD=d_pad,
                       num_warps=min(16, max(4, d_pad // 256)))
        else:
            cfg = dict(variant="row", BLOCK_L=max(1, min(16, 8192 // d_pad)), D_PAD=d_pad,
                       num_warps=min(8, max(4, d_pad // 512)))
    else:
        block_l, block_h, block_d = _blocks(heads, d, elem_bytes)
        cfg = dict(variant="generic", BLOCK_L=block_l, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4)
    cfg.update(tpp=None, programs_per_sm=8)
    cfg.update(ov)
    return cfg


def _tokens_per_program(total_rows: int, device: torch.device, cfg: dict) -> int:
    forced = _FORCED.get().get("tokens_per_program")
    if forced is not None:
        return forced
    if cfg.get("tpp"):
        return int(cfg["tpp"])
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    target = cdiv(max(total_rows, 1), int(cfg["programs_per_sm"]) * n_sm)
    return max(cfg["BLOCK_L"], min(1024, next_power_of_2(target)))


class _Layout:
    """Rows of the states as a 2-D [rows, D_p] view plus device-side work decomposition."""

    def __init__(self, states, cu_seqlens, mask, cfg):
        if states.dim() == 3:
            b, length, d = states.shape
            cu = torch.arange(b + 1, device=states.device, dtype=torch.int64) * length
            x = states.reshape(b * length, d)
            self.mask = None if mask is None else mask.reshape(-1).to(torch.bool).contiguous().view(torch.uint8)
        else:
            x = states
            # contiguous, int64, clamped and monotone (the kernels read cu[b], cu[b+1] with unit
            # stride and trust them as row bounds): a strided or malformed cu_seqlens can neither
            # make a load or store leave the states nor break the grid bound below
            cu = sanitize_offsets(cu_seqlens, states.shape[0])
            b = cu.numel() - 1
            self.mask = None
        if x.stride(-1) != 1:
            x = x.contiguous()
        self.x, self.cu, self.B, self.D = x, cu, b, x.shape[-1]
        rows = x.shape[0]
        self.tpp = _tokens_per_program(rows, states.device, cfg)
        lengths = torch.diff(cu)  # cu[1:] - cu[:-1] in one call
        self.lengths = lengths
        work_off = torch.zeros(b + 1, dtype=torch.int64, device=states.device)
        ends = work_off[1:]
        torch.cumsum((lengths + (self.tpp - 1)) // self.tpp, 0, out=ends)
        self.work_off = work_off
        self.P = rows // self.tpp + b
        self.work_seq = torch.searchsorted(ends, torch.arange(self.P, device=states.device), right=True)

    @property
    def mask_arg(self):
        return self.mask if self.mask is not None else self.cu  # dummy pointer when HAS_MASK is off


def _check_shapes(q_tilde, states, cu_seqlens, key_padding_mask, **per_head):
    """The raw custom ops (torch.compile, direct calls) reach the launchers without the public
    checks; the kernels index q̃, u, dc, c and lse by the sequence count and width taken from
    the layout, so a mismatch would read or write out of bounds. Shapes only: no sync."""
    if q_tilde.dim() != 3:
        raise ValueError(f"q_tilde must be [B, H, D_p], got {tuple(q_tilde.shape)}")
    bsz, heads, d = q_tilde.shape
    if states.dim() not in (2, 3) or states.shape[-1] != d:
        raise ValueError(f"states must be [T, D_p={d}] or [B, L, D_p={d}], got {tuple(states.shape)}")
    if states.dim() == 2:
        if cu_seqlens is None or cu_seqlens.dim() != 1 or cu_seqlens.numel() != bsz + 1:
            raise ValueError(f"cu_seqlens must be [B+1={bsz + 1}] for packed states")
    else:
        if states.shape[0] != bsz:
            raise ValueError(f"states must be [B={bsz}, L, D_p], got {tuple(states.shape)}")
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != tuple(states.shape[:2]):
            raise ValueError(f"key_padding_mask must be {tuple(states.shape[:2])}, got {tuple(key_padding_mask.shape)}")
    for name, (t, shape) in per_head.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")


def _launch_kw(cfg: dict) -> dict:
    keys = ("BLOCK_L", "D_PAD") if cfg["variant"] == "row" else ("BLOCK_L", "BLOCK_H", "BLOCK_D")
    kw = {k: cfg[k] for k in keys}
    kw["num_warps"] = cfg["num_warps"]
    return kw


def _nonempty(lay, states, key_padding_mask, bsz):
    """bool[B] from the layout (never from the scores); packed: the lengths of the offsets the
    layout already sanitized, rather than a second sanitize of cu_seqlens."""
    if states.dim() == 3:
        from icrm_kernels.reference.attention import nonempty_rows

        return nonempty_rows(states, None, key_padding_mask, bsz)
    return lay.lengths > 0


def s2t_core_fwd(q_tilde, states, cu_seqlens, key_padding_mask):
    """(c[B, H, D_p] fp32, lse[B, H] fp32, nonempty[B] bool); q_tilde [B, H, D_p] any float dtype."""
    _check_shapes(q_tilde, states, cu_seqlens, key_padding_mask)
    bsz, heads, d = q_tilde.shape
    cfg = _config("fwd", heads, d, states.element_size())
    lay = _Layout(states, cu_seqlens, key_padding_mask, cfg)
    dev = q_tilde.device
    c = torch.empty(bsz, heads, d, device=dev, dtype=torch.float32)
    lse = torch.empty(bsz, heads, device=dev, dtype=torch.float32)
    nonempty = _nonempty(lay, states, key_padding_mask, bsz)
    if bsz == 0:
        return c, lse, nonempty
    q = q_tilde.to(torch.float32).contiguous()
    m = torch.empty(lay.P, heads, device=dev, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(lay.P, heads, d, device=dev, dtype=torch.float32)
    if cfg["variant"] == "row":
        _s2t_fwd_row_kernel[(lay.P * heads,)](
            lay.x, q, lay.mask_arg, lay.cu, lay.work_off, lay.work_seq, m, l, acc,
            bsz, heads, d, lay.x.stride(0), lay.tpp, HAS_MASK=lay.mask is not None, **_launch_kw(cfg),
        )
    else:
        _s2t_fwd_kernel[(lay.P,)](
            lay.x, q, lay.mask_arg, lay.cu, lay.work_off, lay.work_seq, m, l, acc,
            bsz, heads, d, lay.x.stride(0), lay.tpp, HAS_MASK=lay.mask is not None, **_launch_kw(cfg),
        )
    cb = min(1024, next_power_of_2(d))
    _s2t_combine_kernel[(bsz, heads, cdiv(d, cb))](
        m, l, acc, lay.work_off, c, lse, heads, d, SOFTMAX=True, BLOCK_D=cb, num_warps=4,
    )
    return c, lse, nonempty


def s2t_core_bwd(dc, q_tilde, states, cu_seqlens, key_padding_mask, c, lse, need_dstates):
    """(dq̃[B, H, D_p] fp32, d states in the states' dtype or None)."""
    bsz, heads, d = q_tilde.shape
    _check_shapes(q_tilde, states, cu_seqlens, key_padding_mask, dc=(dc, (bsz, heads, d)), c=(c, (bsz, heads, d)),
                  lse=(lse, (bsz, heads)))
    cfg = _config("bwd", heads, d, states.element_size(), need_dx=need_dstates)
    lay = _Layout(states, cu_seqlens, key_padding_mask, cfg)
    dev = q_tilde.device
    dq = torch.zeros(bsz, heads, d, device=dev, dtype=torch.float32)
    # zeros: rows outside every (sanitized) sequence are never written
    dx = torch.zeros(lay.x.shape, device=dev, dtype=states.dtype) if need_dstates else None
    if bsz == 0:
        return dq, (dx.view(states.shape) if need_dstates else None)
    q = q_tilde.to(torch.float32).contiguous()
    dc = dc.to(torch.float32).contiguous()
    delta = (c.to(torch.float32) * dc).sum(-1).contiguous()
    lse = lse.to(torch.float32).contiguous()
    part = torch.empty(lay.P, heads, d, device=dev, dtype=torch.float32)
    args = (lay.x, q, dc, lse, delta, lay.mask_arg, lay.cu, lay.work_off, lay.work_seq, part,
            dx if need_dstates else part, bsz, heads, d, lay.x.stride(0), d, lay.tpp)
    if cfg["variant"] == "row":
        _s2t_bwd_row_kernel[(lay.P * heads,)](
            *args, HAS_MASK=lay.mask is not None, NEED_DX=need_dstates, **_launch_kw(cfg))
    else:
        _s2t_bwd_kernel[(lay.P,)](*args, HAS_MASK=lay.mask is not None, NEED_DX=need_dstates, **_launch_kw(cfg))
    cb = min(1024, next_power_of_2(d))
    _s2t_combine_kernel[(bsz, heads, cdiv(d, cb))](
        part, part, part, lay.work_off, dq, lse, heads, d, SOFTMAX=False, BLOCK_D=cb, num_warps=4,
    )
    return dq, (dx.view(states.shape) if need_dstates else None)


def r2m_core(q_tilde, u, states, cu_seqlens, key_padding_mask):
    """(y[B, H] = Σ_l p_hl (u_h·x_l) fp32, nonempty[B] bool); u [H, D_p]."""
    bsz, heads, d = q_tilde.shape
    _check_shapes(q_tilde, states, cu_seqlens, key_padding_mask, u=(u, (heads, d)))
    cfg = _config("r2m", heads, d, states.element_size())
    lay = _Layout(states, cu_seqlens, key_padding_mask, cfg)
    dev = q_tilde.device
    m = torch.empty(lay.P, heads, device=dev, dtype=torch.float32)
    l = torch.empty_like(m)
    a = torch.empty_like(m)
    if bsz > 0:
        args = (lay.x, q_tilde.to(torch.float32).contiguous(), u.to(torch.float32).contiguous(), lay.mask_arg,
                lay.cu, lay.work_off, lay.work_seq, m, l, a, bsz, heads, d, lay.x.stride(0), lay.tpp)
        if cfg["variant"] == "row":
            _r2m_row_kernel[(lay.P * heads,)](*args, HAS_MASK=lay.mask is not None, **_launch_kw(cfg))
        else:
            _r2m_kernel[(lay.P,)](*args, HAS_MASK=lay.mask is not None, **_launch_kw(cfg))
    # merge the partials of each sequence in work order: the fwd combine with D = 1 (a is the
    # one-column accumulator). One launch, and deterministic, unlike a scatter_add of partials.
    y = torch.empty(bsz, heads, 1, device=dev, dtype=torch.float32)
    lse = torch.empty(bsz, heads, device=dev, dtype=torch.float32)
    if bsz > 0:
        _s2t_combine_kernel[(bsz, heads, 1)](m, l, a, lay.work_off, y, lse, heads, 1, SOFTMAX=True, BLOCK_D=2,
                                             num_warps=1)
    nonempty = _nonempty(lay, states, key_padding_mask, bsz)
    y = y.view(bsz, heads)
    # attended tokens but lse = -inf: every score -inf, softmax's NaN (not an empty row's 0)
    y = torch.where(nonempty[:, None] & (lse == float("-inf")), float("nan"), y)
    return y, nonempty


@triton.jit
def _head_gemv_kernel(w_ptr, v_ptr, out_ptr, R, HC, stride_w, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[h, r] = Σ_{c < HC} W[r, h·HC + c] · v[h, c], fp32 accumulate; grid (cdiv(R, BLOCK_R), H).
    W is read once in its own dtype; each program keeps a [BLOCK_R, BLOCK_C] partial tile and
    reduces it once at the end (fixed order: deterministic)."""
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = tl.program_id(1).to(tl.int64)
    mr = offs_r < R
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for c0 in range(0, HC, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < HC
        w = tl.load(w_ptr + offs_r[:, None] * stride_w + (h * HC + offs_c)[None, :],
                    mask=mr[:, None] & mc[None, :], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + h * HC + offs_c, mask=mc, other=0.0).to(tl.float32)
        acc += w * v[None, :]
    tl.store(out_ptr + h * R + offs_r, tl.sum(acc, axis=1), mask=mr)


_GEMV_BLOCKS = dict(BLOCK_R=8, BLOCK_C=512)  # R = 4096: 512 programs, 8-16 KB per load


def head_gemv(w, v):
    """out[H, R] fp32 with out[h, r] = Σ_c W[r, h·C/H + c] v[h, c]; W [R, C] (any float dtype, unit
    column stride), v [H, C/H]. What r2m_reward needs for z = W_o w_s and u_h = W_v,h z_h without
    an fp32 copy of the weight (target shape: 16 MB read instead of 16 MB read + 32 MB written
    + 32 MB read by torch's fp32 GEMV)."""
    if w.stride(-1) != 1:
        w = w.contiguous()
    heads, hc = v.shape
    rows = w.shape[0]
    out = torch.empty(heads, rows, device=w.device, dtype=torch.float32)
    if rows and heads:
        _head_gemv_kernel[(cdiv(rows, _GEMV_BLOCKS["BLOCK_R"]), heads)](
            w, v.to(torch.float32).contiguous(), out, rows, hc, w.stride(0), **_GEMV_BLOCKS, num_warps=4)
    return out


# ---------------------------------------------------------------- ahead-of-time compile specs
def _fwd_sig(dt):
    return {"x_ptr": f"*{dt}", "q_ptr": "*fp32", "mask_ptr": "*u8", "cu_ptr": "*i64", "work_off_ptr": "*i64",
            "work_seq_ptr": "*i64", "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32",
            "B": "i32", "H": "i32", "D": "i32", "stride_x": "i64", "tpp": "i32"}


def _bwd_sig(dt):
    return {"x_ptr": f"*{dt}", "q_ptr": "*fp32", "dc_ptr": "*fp32", "lse_ptr": "*fp32", "delta_ptr": "*fp32",
            "mask_ptr": "*u8", "cu_ptr": "*i64", "work_off_ptr": "*i64", "work_seq_ptr": "*i64",
            "dq_ptr": "*fp32", "dx_ptr": f"*{dt}", "B": "i32", "H": "i32", "D": "i32",
            "stride_x": "i64", "stride_dx": "i64", "tpp": "i32"}


def _r2m_sig(dt):
    return {"x_ptr": f"*{dt}", "q_ptr": "*fp32", "u_ptr": "*fp32", "mask_ptr": "*u8", "cu_ptr": "*i64",
            "work_off_ptr": "*i64", "work_seq_ptr": "*i64", "m_ptr": "*fp32", "l_ptr": "*fp32", "a_ptr": "*fp32",
            "B": "i32", "H": "i32", "D": "i32", "stride_x": "i64", "tpp": "i32"}


_COMBINE_SIG = {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32", "work_off_ptr": "*i64", "out_ptr": "*fp32",
                "lse_ptr": "*fp32", "H": "i32", "D": "i32"}

_GEMV_SIG = lambda dt: {"w_ptr": f"*{dt}", "v_ptr": "*fp32", "out_ptr": "*fp32", "R": "i32", "HC": "i32",  # noqa: E731
                        "stride_w": "i64"}

_B1 = dict(BLOCK_L=8, BLOCK_H=1, BLOCK_D=256)  # one head, bf16 D_p = 4096 (target shape)
_B1_F32 = dict(BLOCK_L=4, BLOCK_H=1, BLOCK_D=256)  # one head, fp32 D_p = 4096
_B8 = dict(BLOCK_L=8, BLOCK_H=8, BLOCK_D=64)  # eight heads, D_p <= 1024 (bf16) / 2048 (fp32)

# full-row kernels at the target shape of docs/attention.md#speed-targets (D_p = 4096 -> D_PAD = 4096)
# and the tuning sweep's corners
_R = lambda bl: dict(BLOCK_L=bl, D_PAD=4096)  # noqa: E731

AOT_SPECS = [
    AotSpec(_s2t_fwd_kernel, _fwd_sig("bf16"), dict(HAS_MASK=False, **_B1), label="bf16,packed,H=1"),
    AotSpec(_s2t_fwd_kernel, _fwd_sig("fp32"), dict(HAS_MASK=True, **_B1_F32), label="fp32,padded,H=1"),
    AotSpec(_s2t_fwd_kernel, _fwd_sig("bf16"), dict(HAS_MASK=False, **_B8), label="bf16,packed,H=8"),
    AotSpec(_s2t_combine_kernel, _COMBINE_SIG, dict(SOFTMAX=True, BLOCK_D=1024), label="softmax"),
    AotSpec(_s2t_combine_kernel, _COMBINE_SIG, dict(SOFTMAX=False, BLOCK_D=1024), label="sum"),
    AotSpec(_s2t_bwd_kernel, _bwd_sig("bf16"), dict(HAS_MASK=False, NEED_DX=False, **_B1), label="bf16,no dx,H=1"),
    AotSpec(_s2t_bwd_kernel, _bwd_sig("bf16"), dict(HAS_MASK=True, NEED_DX=True, **_B1), label="bf16,dx,H=1"),
    AotSpec(_s2t_bwd_kernel, _bwd_sig("fp32"), dict(HAS_MASK=False, NEED_DX=True, **_B8), label="fp32,dx,H=8"),
    AotSpec(_r2m_kernel, _r2m_sig("bf16"), dict(HAS_MASK=False, **_B1), label="bf16,H=1"),
    AotSpec(_r2m_kernel, _r2m_sig("fp32"), dict(HAS_MASK=True, **_B8), label="fp32,H=8"),
    AotSpec(_r2m_kernel, _r2m_sig("fp32"), dict(HAS_MASK=False, **_B1_F32), label="fp32,H=1"),
    AotSpec(_s2t_fwd_row_kernel, _fwd_sig("bf16"), dict(HAS_MASK=False, **_R(2)), num_warps=8, label="bf16,L2,w8"),
    AotSpec(_s2t_fwd_row_kernel, _fwd_sig("bf16"), dict(HAS_MASK=False, **_R(4)), num_warps=8, label="bf16,L4,w8"),
    AotSpec(_s2t_fwd_row_kernel, _fwd_sig("bf16"), dict(HAS_MASK=False, **_R(1)), num_warps=4, label="bf16,L1,w4"),
    AotSpec(_s2t_fwd_row_kernel, _fwd_sig("bf16"), dict(HAS_MASK=False, **_R(4)), num_warps=16, label="bf16,L4,w16"),
    AotSpec(_s2t_fwd_row_kernel, _fwd_sig("fp32"), dict(HAS_MASK=True, **_R(2)), num_warps=8, label="fp32,mask,L2,w8"),
    AotSpec(_s2t_bwd_row_kernel, _bwd_sig("bf16"), dict(HAS_MASK=False, NEED_DX=False, **_R(2)), num_warps=8,
            label="bf16,no dx,L2,w8"),
    AotSpec(_s2t_bwd_row_kernel, _bwd_sig("bf16"), dict(HAS_MASK=False, NEED_DX=False, **_R(4)), num_warps=8,
            label="bf16,no dx,L4,w8"),
    AotSpec(_s2t_bwd_row_kernel, _bwd_sig("bf16"), dict(HAS_MASK=False, NEED_DX=False, **_R(4)), num_warps=16,
            label="bf16,no dx,L4,w16"),
    AotSpec(_s2t_bwd_row_kernel, _bwd_sig("bf16"), dict(HAS_MASK=False, NEED_DX=False, **_R(2)), num_warps=16,
            label="bf16,no dx,L2,w16"),
    AotSpec(_s2t_bwd_row_kernel, _bwd_sig("bf16"), dict(HAS_MASK=True, NEED_DX=True, **_R(2)), num_warps=8,
            label="bf16,dx,L2,w8"),
    AotSpec(_s2t_bwd_row_kernel, _bwd_sig("bf16"), dict(HAS_MASK=False, NEED_DX=True, **_R(4)), num_warps=16,
            label="bf16,dx,L4,w16"),
    AotSpec(_r2m_row_kernel, _r2m_sig("bf16"), dict(HAS_MASK=False, **_R(2)), num_warps=8, label="bf16,L2,w8"),
    AotSpec(_r2m_row_kernel, _r2m_sig("bf16"), dict(HAS_MASK=False, **_R(4)), num_warps=8, label="bf16,L4,w8"),
    AotSpec(_r2m_row_kernel, _r2m_sig("bf16"), dict(HAS_MASK=False, **_R(4)), num_warps=16, label="bf16,L4,w16"),
    AotSpec(_r2m_row_kernel, _r2m_sig("fp32"), dict(HAS_MASK=True, **_R(2)), num_warps=8, label="fp32,mask,L2,w8"),
    AotSpec(_s2t_combine_kernel, _COMBINE_SIG, dict(SOFTMAX=True, BLOCK_D=2), num_warps=1, label="r2m merge"),
    AotSpec(_head_gemv_kernel, _GEMV_SIG("bf16"), _GEMV_BLOCKS, label="bf16"),
    AotSpec(_head_gemv_kernel, _GEMV_SIG("fp32"), _GEMV_BLOCKS, label="fp32"),
]
