"""Triton kernels of the pairwise group ops: Pref-GRPO win rate and R2M's GREBT loss.

Fixed small groups (``group_size`` <= 16 for the win rate, <= 256 for GREBT): R whole groups per
program in one [R, BG] tile, loaded once (``_*_fixed_kernel``). Otherwise one program per group,
for every layout: ``group_size``, ``cu`` offsets (ragged), and ``cu`` + ``order`` (the unsorted
``group_index`` layout resolved without a host sync; row = order[cu[g] + position]); groups larger
than the block are walked tile by tile, so no launch needs the largest group size on the host.
fp32 arithmetic for fp16/bf16/fp32 inputs; no atomics, so results are deterministic; one launch
per op (forward), one for the win-rate backward, none for the GREBT backward (a torch multiply).

Kernels (the fixed variants compute the same)
- ``_win_rate_fwd_kernel``: w_i = 1/(n−1) Σ_{j≠i} P(i ≻ j), O(n²) per group in [BLOCK, BLOCK] tiles.
- ``_win_rate_bwd_kernel``: ds_k = 1/(T(n−1)) Σ_{j≠k} σ'(x_kj)(g_k − g_j) (soft version only).
- ``_grebt_kernel``: per-group loss AND the per-row gradient dL_g/dr_i in the same launch
  (four passes over the group's rows, which stay in L1/L2 after the first).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from icrm_kernels.triton import cdiv, next_power_of_2
from icrm_kernels.triton._aot import AotSpec


@triton.jit
def _group_bounds(g, cu_ptr, group_size, n_rows, HAS_CU: tl.constexpr):
    if HAS_CU:  # clamped: malformed offsets (value checks off) stay in bounds
        start = tl.minimum(tl.maximum(tl.load(cu_ptr + g), 0), n_rows)
        end = tl.minimum(tl.maximum(tl.load(cu_ptr + g + 1), start), n_rows)
    else:
        start = g * group_size
        end = start + group_size
    return start, end


@triton.jit
def _rows(start, pos, mask, order_ptr, n_rows, HAS_ORDER: tl.constexpr):
    """Original row of each position of the group (int64). ``order`` is clamped into the rows
    like the offsets: the direct launchers take it from the caller unchecked."""
    if HAS_ORDER:
        row = tl.load(order_ptr + start + pos, mask=mask, other=0).to(tl.int64)
        row = tl.minimum(tl.maximum(row, 0), n_rows - 1)
    else:
        row = start + pos
    return row


@triton.jit
def _group_scores(s_ptr, order_ptr, start, pos, n, n_rows, HAS_ORDER: tl.constexpr):
    """Positions ``pos`` of the group that starts at ``start`` (n rows): (in-group mask,
    original rows, scores in fp32)."""
    mask = pos < n
    row = _rows(start, pos, mask, order_ptr, n_rows, HAS_ORDER)
    return mask, row, tl.load(s_ptr + row, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _win_rate_fwd_kernel(
    s_ptr, w_ptr, cu_ptr, order_ptr, group_size, n_rows, inv_t,
    HARD: tl.constexpr, HAS_CU: tl.constexpr, HAS_ORDER: tl.constexpr, BLOCK: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    start, end = _group_bounds(g, cu_ptr, group_size, n_rows, HAS_CU)
    n = end - start
    inv_pairs = 1.0 / tl.maximum(n - 1, 1).to(tl.float32)
    offs = tl.arange(0, BLOCK).to(tl.int64)
    for i0 in range(0, n, BLOCK):
        pi = i0 + offs
        mi, ri, si = _group_scores(s_ptr, order_ptr, start, pi, n, n_rows, HAS_ORDER)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j0 in range(0, n, BLOCK):
            pj = j0 + offs
            mj, rj, sj = _group_scores(s_ptr, order_ptr, start, pj, n, n_rows, HAS_ORDER)
            a = si[:, None]
            b = sj[None, :]
            if HARD:  # 1 win, 1/2 tie, 0 loss; NaN stays NaN (a - b)
                p = tl.where(a > b, 1.0, tl.where(a < b, 0.0, tl.where(a == b, 0.5, a - b)))
            else:  # Bradley-Terry sigma((a - b) / T)
                p = 1.0 / (1.0 + tl.exp((b - a) * inv_t))
            keep = mj[None, :] & (pi[:, None] != pj[None, :])
            acc += tl.sum(tl.where(keep, p, 0.0), axis=1)
        w = tl.where(n > 1, acc * inv_pairs, 0.5)
        tl.store(w_ptr + ri, w.to(w_ptr.dtype.element_ty), mask=mi)


@triton.jit
def _win_rate_bwd_kernel(
    s_ptr, dw_ptr, ds_ptr, cu_ptr, order_ptr, group_size, n_rows, inv_t,
    HAS_CU: tl.constexpr, HAS_ORDER: tl.constexpr, BLOCK: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    start, end = _group_bounds(g, cu_ptr, group_size, n_rows, HAS_CU)
    n = end - start
    scale = inv_t / tl.maximum(n - 1, 1).to(tl.float32)
    offs = tl.arange(0, BLOCK).to(tl.int64)
    for i0 in range(0, n, BLOCK):
        pi = i0 + offs
        mi, ri, si = _group_scores(s_ptr, order_ptr, start, pi, n, n_rows, HAS_ORDER)
        gi = tl.load(dw_ptr + ri, mask=mi, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j0 in range(0, n, BLOCK):
            pj = j0 + offs
            mj, rj, sj = _group_scores(s_ptr, order_ptr, start, pj, n, n_rows, HAS_ORDER)
            gj = tl.load(dw_ptr + rj, mask=mj, other=0.0).to(tl.float32)
            p = 1.0 / (1.0 + tl.exp((sj[None, :] - si[:, None]) * inv_t))
            keep = mj[None, :] & (pi[:, None] != pj[None, :])
            acc += tl.sum(tl.where(keep, p * (1.0 - p) * (gi[:, None] - gj[None, :]), 0.0), axis=1)
        ds = tl.where(n > 1, acc * scale, 0.0)
        tl.store(ds_ptr + ri, ds.to(ds_ptr.dtype.element_ty), mask=mi)


@triton.jit
def _load_tile(r_ptr, sel_ptr, order_ptr, start, pos, n, r0, n_rows, HAS_SELECT: tl.constexpr,
               HAS_ORDER: tl.constexpr):
    """Rewards shifted by the group's first one (the loss is shift-invariant; r - r0 is exact for
    nearby values, so r - mean keeps its digits when the group's spread is tiny next to |r|)."""
    mask = pos < n
    row = _rows(start, pos, mask, order_ptr, n_rows, HAS_ORDER)
    r_raw = tl.load(r_ptr + row, mask=mask, other=0.0).to(tl.float32)
    if HAS_SELECT:
        sel = tl.load(sel_ptr + row, mask=mask, other=0.0).to(tl.float32)
    else:
        sel = r_raw
    r = tl.where(mask, r_raw - r0, 0.0)
    return mask, row, r, sel


@triton.jit
def _grebt_kernel(
    r_ptr, sel_ptr, loss_ptr, drow_ptr, cu_ptr, order_ptr, group_size, n_rows, alpha, eps,
    HAS_SELECT: tl.constexpr, HAS_CU: tl.constexpr, HAS_ORDER: tl.constexpr, BLOCK: tl.constexpr, scale=1.0,
    loss_scale=1.0,
):
    g = tl.program_id(0).to(tl.int64)
    start, end = _group_bounds(g, cu_ptr, group_size, n_rows, HAS_CU)
    n = end - start
    nf = tl.maximum(n, 1).to(tl.float32)
    offs = tl.arange(0, BLOCK).to(tl.int64)

    first = offs < tl.minimum(n, 1)  # lane 0 of a non-empty group
    row0 = _rows(start, offs, first, order_ptr, n_rows, HAS_ORDER)
    r0 = tl.sum(tl.load(r_ptr + row0, mask=first, other=0.0).to(tl.float32), axis=0)

    # pass 1: sum, max, NaN count of select, lane-wise first argmax / argmin of select
    mask, row, r, sel = _load_tile(r_ptr, sel_ptr, order_ptr, start, offs, n, r0, n_rows, HAS_SELECT, HAS_ORDER)
    r_sum = tl.where(mask, r, 0.0)
    r_max = tl.where(mask, r, float("-inf"))
    nan_sel = tl.where(mask & (sel != sel), 1.0, 0.0)
    hi = tl.where(mask, sel, float("-inf"))
    lo = tl.where(mask, sel, float("inf"))
    hi_pos = offs
    lo_pos = offs
    hi_r = r
    lo_r = r
    for p0 in range(BLOCK, n, BLOCK):
        pos = p0 + offs
        mask, row, r, sel = _load_tile(r_ptr, sel_ptr, order_ptr, start, pos, n, r0, n_rows, HAS_SELECT, HAS_ORDER)
        r_sum += tl.where(mask, r, 0.0)
        r_max = tl.maximum(r_max, tl.where(mask, r, float("-inf")))
        nan_sel += tl.where(mask & (sel != sel), 1.0, 0.0)
        up = mask & (sel > hi)  # strict: the earlier position wins ties
        hi = tl.where(up, sel, hi)
        hi_pos = tl.where(up, pos, hi_pos)
        hi_r = tl.where(up, r, hi_r)
        dn = mask & (sel < lo)
        lo = tl.where(dn, sel, lo)
        lo_pos = tl.where(dn, pos, lo_pos)
        lo_r = tl.where(dn, r, lo_r)
    # a NaN in select poisons the group like a NaN reward
    poison = tl.where(tl.sum(nan_sel, axis=0) > 0, float("nan"), 0.0)
    hi_max = tl.max(hi, axis=0)
    w_pos = tl.min(tl.where(hi == hi_max, hi_pos, n), axis=0)
    lo_min = tl.min(lo, axis=0)
    l_pos = tl.min(tl.where(lo == lo_min, lo_pos, n), axis=0)
    r_w = tl.sum(tl.where(hi_pos == w_pos, hi_r, 0.0), axis=0) + poison
    r_l = tl.sum(tl.where(lo_pos == l_pos, lo_r, 0.0), axis=0) + poison
    mu = tl.sum(r_sum, axis=0) / nf + poison
    z_max_r = tl.max(r_max, axis=0) + poison

    # pass 2: population variance around the mean (two-pass: exact 0 for identical rewards)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, n, BLOCK):
        mask, row, r, sel = _load_tile(r_ptr, sel_ptr, order_ptr, start, p0 + offs, n, r0, n_rows, HAS_SELECT,
                                       HAS_ORDER)
        c = r + poison - mu
        acc += tl.where(mask, c * c, 0.0)
    sigma = tl.sqrt(tl.sum(acc, axis=0) / nf)
    s = sigma + eps
    inv_s = tl.where(s > 0, 1.0 / s, 0.0)
    z_max = (z_max_r - mu) * inv_s

    # pass 3: softmax statistics of z = (r - mu) / (sigma + eps)
    e_sum = tl.zeros([BLOCK], dtype=tl.float32)
    ez_sum = tl.zeros([BLOCK], dtype=tl.float32)
    ezz_sum = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, n, BLOCK):
        mask, row, r, sel = _load_tile(r_ptr, sel_ptr, order_ptr, start, p0 + offs, n, r0, n_rows, HAS_SELECT,
                                       HAS_ORDER)
        z = (r + poison - mu) * inv_s
        e = tl.where(mask, tl.exp(z - z_max), 0.0)
        e_sum += e
        ez_sum += e * z
        ezz_sum += e * z * z
    big_s = tl.sum(e_sum, axis=0)
    z_bar = tl.sum(ez_sum, axis=0) / big_s
    var_p = tl.maximum(tl.sum(ezz_sum, axis=0) / big_s - z_bar * z_bar, 0.0)
    loss_gre = z_max + tl.log(big_s) - z_bar  # -sum p log p = logsumexp(z) - E_p[z]

    # Bradley-Terry: -log sigma(r_w - r_l) = softplus(x), x = r_l - r_w, in a stable form
    x = r_l - r_w
    t = tl.exp(-tl.abs(x))
    log1p_t = tl.where(t < 1e-4, t * (1.0 - 0.5 * t), tl.log(1.0 + t))
    loss_bt = tl.maximum(x, 0.0) + log1p_t
    valid = n >= 2
    loss = (1.0 - alpha) * loss_bt + alpha * loss_gre
    tl.store(loss_ptr + g, tl.where(valid, loss * loss_scale, float("nan")).to(loss_ptr.dtype.element_ty))

    # pass 4: dL/dr_i = alpha * [inv_s * g_i + var_p * inv_s / (n sigma) * c_i] + BT terms,
    # with g_i = dH/dz_i = -p_i (z_i - z_bar) (its sum over the group is 0)
    d_bt = (1.0 - alpha) / (1.0 + tl.exp(-x))  # (1 - alpha) * sigma(r_l - r_w)
    coef = tl.where(sigma > 0, var_p * inv_s / (nf * sigma), 0.0)
    inv_big_s = 1.0 / big_s
    for p0 in range(0, n, BLOCK):
        pos = p0 + offs
        mask, row, r, sel = _load_tile(r_ptr, sel_ptr, order_ptr, start, pos, n, r0, n_rows, HAS_SELECT, HAS_ORDER)
        c = r + poison - mu
        z = c * inv_s
        p = tl.exp(z - z_max) * inv_big_s
        d = alpha * (inv_s * (-p * (z - z_bar)) + coef * c)
        d += tl.where(pos == w_pos, -d_bt, 0.0) + tl.where(pos == l_pos, d_bt, 0.0)
        d = tl.where(valid, d, 0.0) * scale  # scale: see grebt_forward
        tl.store(drow_ptr + row, d.to(drow_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------- fixed small groups: R groups per program
# With group_size = G known and small, one program per group would launch N/G tiny programs.
# These kernels hold R whole groups in one [R, BG] tile (BG = next power of two >= G), so every
# statistic is a reduction along the last axis, computed from registers after a single load.
@triton.jit
def _win_rate_fixed_kernel(
    s_ptr, w_ptr, n_groups, group_size, inv_t,
    HARD: tl.constexpr, BG: tl.constexpr, R: tl.constexpr,
):
    gi = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)
    cols = tl.arange(0, BG)
    cmask = cols < group_size
    mask = (gi < n_groups)[:, None] & cmask[None, :]
    offs = gi[:, None] * group_size + cols[None, :]
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = s[:, :, None]
    b = s[:, None, :]
    if HARD:
        p = tl.where(a > b, 1.0, tl.where(a < b, 0.0, tl.where(a == b, 0.5, a - b)))
    else:
        p = 1.0 / (1.0 + tl.exp((b - a) * inv_t))
    keep = cmask[None, :] & (cols[:, None] != cols[None, :])
    acc = tl.sum(tl.where(keep[None, :, :], p, 0.0), axis=2)
    w = tl.where(group_size > 1, acc / tl.maximum(group_size - 1, 1).to(tl.float32), 0.5)
    tl.store(w_ptr + offs, w.to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _win_rate_fixed_bwd_kernel(
    s_ptr, dw_ptr, ds_ptr, n_groups, group_size, inv_t,
    BG: tl.constexpr, R: tl.constexpr,
):
    gi = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)
    cols = tl.arange(0, BG)
    cmask = cols < group_size
    mask = (gi < n_groups)[:, None] & cmask[None, :]
    offs = gi[:, None] * group_size + cols[None, :]
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(dw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = 1.0 / (1.0 + tl.exp((s[:, None, :] - s[:, :, None]) * inv_t))
    keep = cmask[None, :] & (cols[:, None] != cols[None, :])
    terms = tl.where(keep[None, :, :], p * (1.0 - p) * (g[:, :, None] - g[:, None, :]), 0.0)
    scale = inv_t / tl.maximum(group_size - 1, 1).to(tl.float32)
    ds = tl.where(group_size > 1, tl.sum(terms, axis=2) * scale, 0.0)
    tl.store(ds_ptr + offs, ds.to(ds_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grebt_fixed_kernel(
    r_ptr, sel_ptr, loss_ptr, drow_ptr, n_groups, group_size, alpha, eps,
    HAS_SELECT: tl.constexpr, BG: tl.constexpr, R: tl.constexpr, scale=1.0, loss_scale=1.0,
):
    gi = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)
    gmask = gi < n_groups
    cols = tl.arange(0, BG)
    cmask = cols < group_size
    mask = gmask[:, None] & cmask[None, :]
    offs = gi[:, None] * group_size + cols[None, :]
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SELECT:
        sel = tl.load(sel_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        sel = r
    # shift by the group's first reward (shift-invariant loss; keeps r - mean accurate)
    r = tl.where(mask, r - tl.sum(tl.where(cols[None, :] == 0, r, 0.0), axis=1)[:, None], 0.0)
    nf = tl.maximum(group_size, 1).to(tl.float32)
    # a NaN in select poisons the group like a NaN reward
    poison = tl.where(tl.sum(tl.where(mask & (sel != sel), 1.0, 0.0), axis=1) > 0, float("nan"), 0.0)
    # first argmax / argmin of select (padding columns sort last: they lie past the group)
    hi = tl.where(mask, sel, float("-inf"))
    w_pos = tl.min(tl.where(hi == tl.max(hi, axis=1)[:, None], cols[None, :], BG), axis=1)
    lo = tl.where(mask, sel, float("inf"))
    l_pos = tl.min(tl.where(lo == tl.min(lo, axis=1)[:, None], cols[None, :], BG), axis=1)
    is_w = cols[None, :] == w_pos[:, None]
    is_l = cols[None, :] == l_pos[:, None]
    r = r + poison[:, None]
    x = tl.sum(tl.where(is_l, r, 0.0), axis=1) - tl.sum(tl.where(is_w, r, 0.0), axis=1)  # r_l - r_w

    mu = tl.sum(tl.where(mask, r, 0.0), axis=1) / nf
    c = tl.where(mask, r - mu[:, None], 0.0)
    sigma = tl.sqrt(tl.sum(c * c, axis=1) / nf)
    s = sigma + eps
    inv_s = tl.where(s > 0, 1.0 / s, 0.0)
    z = c * inv_s[:, None]
    z_max = tl.max(tl.where(mask, z, float("-inf")), axis=1)
    e = tl.where(mask, tl.exp(z - z_max[:, None]), 0.0)
    big_s = tl.sum(e, axis=1)
    z_bar = tl.sum(e * z, axis=1) / big_s
    var_p = tl.maximum(tl.sum(e * z * z, axis=1) / big_s - z_bar * z_bar, 0.0)
    loss_gre = z_max + tl.log(big_s) - z_bar

    t = tl.exp(-tl.abs(x))
    loss_bt = tl.maximum(x, 0.0) + tl.where(t < 1e-4, t * (1.0 - 0.5 * t), tl.log(1.0 + t))
    valid = group_size >= 2
    loss = (1.0 - alpha) * loss_bt + alpha * loss_gre
    tl.store(loss_ptr + gi, tl.where(valid, loss * loss_scale, float("nan")).to(loss_ptr.dtype.element_ty), mask=gmask)

    d_bt = (1.0 - alpha) / (1.0 + tl.exp(-x))
    coef = tl.where(sigma > 0, var_p * inv_s / (nf * sigma), 0.0)
    p = e / big_s[:, None]
    d = alpha * (inv_s[:, None] * (-p * (z - z_bar[:, None])) + coef[:, None] * c)
    d += tl.where(is_w, -d_bt[:, None], 0.0) + tl.where(is_l, d_bt[:, None], 0.0)
    d = tl.where(valid, d, 0.0) * scale  # scale: see grebt_forward
    tl.store(drow_ptr + offs, d.to(drow_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------- launchers
def _contig(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _layout_args(x, cu, order, group_size):
    """(grid size, cu pointer, order pointer, HAS_CU, HAS_ORDER) for one of the three layouts."""
    if cu is None:
        groups = x.numel() // group_size if group_size > 0 else 0
        return groups, x, x, False, False
    return cu.numel() - 1, cu, (x if order is None else order), True, order is not None


_FIXED_WIN_MAX = 16  # win rate: [R, BG, BG] pair tiles of 2048 terms
_FIXED_GREBT_MAX = 256  # GREBT: [R, BG] tiles of 1024 rows


def _fixed_win_tile(group_size):
    bg = max(next_power_of_2(group_size), 2)
    return bg, max(1, 2048 // (bg * bg))


def _win_block(cu, group_size):
    if cu is None:
        return min(max(next_power_of_2(group_size), 2), 64)
    return 32


def _warps_2d(block):
    # about 16 pair terms per thread: a 64 x 64 tile with 4 warps needs ~220 registers on sm_80
    tile = block * block
    return 1 if tile <= 256 else (2 if tile <= 1024 else (4 if tile <= 2048 else 8))


def win_rate_forward(scores, cu, order, group_size: int, temperature):
    """w[N] in scores' dtype. ``temperature`` None or <= 0 gives hard wins."""
    scores, cu, order = _contig(scores, cu, order)
    out = torch.empty_like(scores) if cu is None else torch.zeros_like(scores)  # rows no group covers: 0
    groups, cu_arg, order_arg, has_cu, has_order = _layout_args(scores, cu, order, group_size)
    if scores.numel() == 0 or groups == 0:
        return out
    hard = temperature is None or temperature <= 0
    inv_t = 0.0 if hard else 1.0 / float(temperature)
    if cu is None and group_size <= _FIXED_WIN_MAX:
        bg, r = _fixed_win_tile(group_size)
        _win_rate_fixed_kernel[(cdiv(groups, r),)](
            scores, out, groups, group_size, inv_t, HARD=hard, BG=bg, R=r, num_warps=4,
        )
        return out
    block = _win_block(cu, group_size)
    _win_rate_fwd_kernel[(groups,)](
        scores, out, cu_arg, order_arg, group_size, scores.numel(), 0.0 if hard else 1.0 / float(temperature),
        HARD=hard, HAS_CU=has_cu, HAS_ORDER=has_order, BLOCK=block, num_warps=_warps_2d(block),
    )
    return out


def win_rate_backward(grad_w, scores, cu, order, group_size: int, temperature: float):
    """d loss / d scores for the soft (Bradley-Terry) win rate."""
    grad_w, scores, cu, order = _contig(grad_w, scores, cu, order)
    out = torch.empty_like(scores) if cu is None else torch.zeros_like(scores)
    groups, cu_arg, order_arg, has_cu, has_order = _layout_args(scores, cu, order, group_size)
    if scores.numel() == 0 or groups == 0:
        return out
    if cu is None and group_size <= _FIXED_WIN_MAX:
        bg, r = _fixed_win_tile(group_size)
        _win_rate_fixed_bwd_kernel[(cdiv(groups, r),)](
            scores, grad_w, out, groups, group_size, 1.0 / float(temperature), BG=bg, R=r, num_warps=4,
        )
        return out
    block = _win_block(cu, group_size)
    _win_rate_bwd_kernel[(groups,)](
        scores, grad_w, out, cu_arg, order_arg, group_size, scores.numel(), 1.0 / float(temperature),
        HAS_CU=has_cu, HAS_ORDER=has_order, BLOCK=block, num_warps=_warps_2d(block),
    )
    return out


def grebt_forward(rewards, select, cu, order, group_size: int, alpha: float, eps: float, scale: float = 1.0,
                  loss_scale: float = 1.0):
    """(losses[groups] fp32, NaN for groups of < 2 rows; dloss_g/dr_i [N] fp32), one launch.
    ``scale`` multiplies the row gradients, ``loss_scale`` the valid groups' losses (a mean's
    1/groups, applied in the kernel instead of by one more torch op on the host each)."""
    rewards, select, cu, order = _contig(rewards, select, cu, order)
    n = rewards.numel()
    groups, cu_arg, order_arg, has_cu, has_order = _layout_args(rewards, cu, order, group_size)
    losses = torch.empty(groups, dtype=torch.float32, device=rewards.device)
    drow = (torch.empty if cu is None else torch.zeros)(n, dtype=torch.float32, device=rewards.device)
    if groups == 0:
        return losses, drow
    if n == 0:
        return losses.fill_(float("nan")), drow
    if cu is None and group_size <= _FIXED_GREBT_MAX:
        bg = next_power_of_2(group_size)
        r = max(1, 1024 // bg)
        _grebt_fixed_kernel[(cdiv(groups, r),)](
            rewards, rewards if select is None else select, losses, drow, groups, group_size, float(alpha), float(eps),
            HAS_SELECT=select is not None, BG=bg, R=r, scale=float(scale),
            loss_scale=float(loss_scale), num_warps=8,
        )
        return losses, drow
    block = min(max(next_power_of_2(group_size), 16), 1024) if cu is None else 128
    _grebt_kernel[(groups,)](
        rewards, rewards if select is None else select, losses, drow, cu_arg, order_arg, group_size, n,
        float(alpha), float(eps),
        HAS_SELECT=select is not None, HAS_CU=has_cu, HAS_ORDER=has_order, BLOCK=block, scale=float(scale),
        loss_scale=float(loss_scale),
        num_warps=1 if block <= 256 else (2 if block <= 512 else 4),
    )
    return losses, drow


# ------------------------------------------------------------------------- AOT compile check
def _aot_specs():
    specs = []
    for dt in ("bf16", "fp32"):
        for hard in (True, False):
            specs.append(AotSpec(
                _win_rate_fwd_kernel,
                signature={"s_ptr": f"*{dt}", "w_ptr": f"*{dt}", "cu_ptr": "*i64", "order_ptr": "*i64",
                           "group_size": "i32", "n_rows": "i64", "inv_t": "fp32"},
                constexprs={"HARD": hard, "HAS_CU": False, "HAS_ORDER": False, "BLOCK": 8},
                num_warps=1, label=f"{dt},{'hard' if hard else 'soft'},G=8",
            ))
    specs.append(AotSpec(
        _win_rate_fwd_kernel,
        signature={"s_ptr": "*bf16", "w_ptr": "*bf16", "cu_ptr": "*i64", "order_ptr": "*i64",
                   "group_size": "i32", "n_rows": "i64", "inv_t": "fp32"},
        constexprs={"HARD": False, "HAS_CU": True, "HAS_ORDER": True, "BLOCK": 32},
        num_warps=2, label="bf16,soft,index,B=32",
    ))
    specs.append(AotSpec(
        _win_rate_fwd_kernel,
        signature={"s_ptr": "*fp32", "w_ptr": "*fp32", "cu_ptr": "*i64", "order_ptr": "*i64",
                   "group_size": "i32", "n_rows": "i64", "inv_t": "fp32"},
        constexprs={"HARD": False, "HAS_CU": False, "HAS_ORDER": False, "BLOCK": 64},
        num_warps=8, label="fp32,soft,G=64",
    ))
    for dt, blk, warps, cu in (("bf16", 8, 1, False), ("fp32", 64, 8, False), ("bf16", 32, 2, True)):
        specs.append(AotSpec(
            _win_rate_bwd_kernel,
            signature={"s_ptr": f"*{dt}", "dw_ptr": f"*{dt}", "ds_ptr": f"*{dt}", "cu_ptr": "*i64",
                       "order_ptr": "*i64", "group_size": "i32", "n_rows": "i64", "inv_t": "fp32"},
            constexprs={"HAS_CU": cu, "HAS_ORDER": cu, "BLOCK": blk},
            num_warps=warps, label=f"{dt},{'index' if cu else 'fixed'},B={blk}",
        ))
    for dt, blk, cu, sel in (("bf16", 16, False, False), ("fp32", 16, False, True), ("bf16", 128, True, False),
                             ("fp32", 1024, False, False)):
        specs.append(AotSpec(
            _grebt_kernel,
            signature={"r_ptr": f"*{dt}", "sel_ptr": f"*{dt}", "loss_ptr": "*fp32", "drow_ptr": "*fp32",
                       "cu_ptr": "*i64", "order_ptr": "*i64", "group_size": "i32", "n_rows": "i64", "alpha": "fp32", "eps": "fp32",
                       "scale": "fp32", "loss_scale": "fp32"},
            constexprs={"HAS_SELECT": sel, "HAS_CU": cu, "HAS_ORDER": cu, "BLOCK": blk},
            num_warps=1 if blk <= 256 else 4,
            label=f"{dt},{'index' if cu else 'fixed'},{'select,' if sel else ''}B={blk}",
        ))
    for dt, g, hard in (("bf16", 8, False), ("fp32", 8, True), ("bf16", 16, False)):
        bg, r = _fixed_win_tile(g)
        specs.append(AotSpec(
            _win_rate_fixed_kernel,
            signature={"s_ptr": f"*{dt}", "w_ptr": f"*{dt}", "n_groups": "i32", "group_size": "i32", "inv_t": "fp32"},
            constexprs={"HARD": hard, "BG": bg, "R": r}, num_warps=4,
            label=f"{dt},{'hard' if hard else 'soft'},BG={bg},R={r}",
        ))
        if not hard:
            specs.append(AotSpec(
                _win_rate_fixed_bwd_kernel,
                signature={"s_ptr": f"*{dt}", "dw_ptr": f"*{dt}", "ds_ptr": f"*{dt}", "n_groups": "i32",
                           "group_size": "i32", "inv_t": "fp32"},
                constexprs={"BG": bg, "R": r}, num_warps=4, label=f"{dt},BG={bg},R={r}",
            ))
    for dt, bg, sel in (("bf16", 8, False), ("fp32", 8, True), ("bf16", 64, False), ("fp32", 256, False)):
        specs.append(AotSpec(
            _grebt_fixed_kernel,
            signature={"r_ptr": f"*{dt}", "sel_ptr": f"*{dt}", "loss_ptr": "*fp32", "drow_ptr": "*fp32",
                       "n_groups": "i32", "group_size": "i32", "alpha": "fp32", "eps": "fp32",
                       "scale": "fp32", "loss_scale": "fp32"},
            constexprs={"HAS_SELECT": sel, "BG": bg, "R": max(1, 1024 // bg)}, num_warps=8,
            label=f"{dt},{'select,' if sel else ''}BG={bg},R={max(1, 1024 // bg)}",
        ))
    return specs


AOT_SPECS = _aot_specs()
