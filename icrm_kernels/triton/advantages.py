"""Triton kernels of ``group_advantages`` (one reward component, already aggregated).

Launches per call (no host synchronisation, no float atomics, fixed reduction order, so the
result is bitwise reproducible):

- group-level options only (baseline none/group_mean/leave_one_out, scale none/group_std, no
  whitening; every verl/TRL-group/OpenRLHF group preset): **1 launch** of ``_group_kernel``, with
  the token broadcast ``A[i,t] = A_i * mask[i,t]`` fused into its store.
- batch_mean / batch_std: +1 launch before it (``_moments_kernel``: per-program partial
  moments, which every program of the next launch merges in the same fixed order).
- whitening: +2 launches after it (``_moments_kernel`` over A, then ``_whiten_kernel``, which
  also does the token broadcast); whiten="token" adds ``mask.sum(1)`` (one torch launch).

Layouts: fixed G (one program = a 2-D tile of BLOCK_B groups x BLOCK_L rows), ragged (``cu``),
index (``cu`` over sorted rows plus ``order``, gathered/scattered inside the kernel). Every mean
is shifted by a member of its set, so identical rewards give exactly 0. Offsets are int64.
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl

from icrm_kernels.triton import cdiv, next_power_of_2
import icrm_kernels.vocab as V
from icrm_kernels.triton._aot import AotSpec

# option -> code tables of the launcher (icrm_kernels/vocab.py; csrc/advantages.cpp and
# ops/advantages.py use the same codes). Kernels compare codes with the named constants V.*.
BASELINE = V.codes(V.BASELINES)
SCALE = V.codes(V.SCALES)
WHITEN = V.codes(V.WHITENS)
SINGLETON = V.codes(V.SINGLETONS)
WHITEN_STD = V.codes(V.WHITEN_STDS)


@triton.jit
def _acc(x, F64: tl.constexpr):
    """x in the accumulation dtype: fp64 for fp64 inputs, else fp32 (bf16/fp16 are upcast)."""
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _split(m, F64: tl.constexpr):
    """A float64 batch mean as hi + lo in the accumulation dtype: a row is centred as
    (x - hi) - lo, so that a value next to a large mean keeps its accuracy (fp64: lo = 0)."""
    if F64:
        return m, tl.zeros((), dtype=tl.float64)
    else:
        hi = m.to(tl.float32)
        return hi, (m - hi.to(tl.float64)).to(tl.float32)


@triton.jit
def _merge(Wa, ma, Ma, Wb, mb, Mb):
    """Chan's exact merge of two (W, mean, M2) summaries; an empty side changes nothing."""
    W = Wa + Wb
    safe = tl.where(W > 0, W, 1.0)
    delta = mb - ma
    frac = Wb / safe
    mean = tl.where(Wa > 0, ma + delta * frac, mb)
    mean = tl.where(Wb > 0, mean, ma)
    M2 = Ma + Mb + tl.where((Wa > 0) & (Wb > 0), delta * delta * Wa * frac, 0.0)
    return W, mean, M2


@triton.jit
def _reduce_parts(part_ptr, P, BLOCK_P: tl.constexpr):
    """Merge P partial summaries (stored W, mean, M2, float64 for every input dtype) in one fixed
    order, in float64; exact for equal means."""
    p = tl.arange(0, BLOCK_P)
    pm = p < P
    W = tl.load(part_ptr + p * 3, mask=pm, other=0.0).to(tl.float64)
    m = tl.load(part_ptr + p * 3 + 1, mask=pm, other=0.0).to(tl.float64)
    M2 = tl.load(part_ptr + p * 3 + 2, mask=pm, other=0.0).to(tl.float64)
    used = W > 0
    pivot = tl.max(tl.where(used, m, float("-inf")), axis=0)
    Wt = tl.sum(W, axis=0)
    pivot = tl.where(Wt > 0, pivot, 0.0)
    safe = tl.where(Wt > 0, Wt, 1.0)
    mean = pivot + tl.sum(tl.where(used, W * (m - pivot), 0.0), axis=0) / safe
    dm = tl.where(used, m - mean, 0.0)
    M2t = tl.sum(M2, axis=0) + tl.sum(W * dm * dm, axis=0)
    return Wt, mean, M2t


@triton.jit
def _moments_kernel(x_ptr, w_ptr, ref_ptr, part_ptr, n, iters,
                    HAS_W: tl.constexpr, OMIT: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    """Program p summarises blocks p*iters .. p*iters+iters-1 of x (weights w; rows whose ref is
    NaN left out when OMIT) into part[p] = (W, mean, M2), stored in float64 whatever x's dtype: a
    float32 mean would carry its rounding, ulp(mean), into every row centred on it (1e5 ulps of
    A for rewards 1000 +- 1e-3). Per block the sums run in x's accumulation dtype around the
    block's pivot; the block summaries merge in float64."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    zero = tl.zeros((), dtype=tl.float64)
    W = zero
    mean = zero
    M2 = zero
    for it in range(0, iters):
        offs = (pid * iters + it) * BLOCK + cols
        inb = offs < n
        x = _acc(tl.load(x_ptr + offs, mask=inb, other=0.0), F64)
        valid = inb
        if HAS_W:
            w = tl.load(w_ptr + offs, mask=inb, other=0.0).to(x.dtype)
            valid = valid & (w > 0)
        else:
            w = tl.where(inb, 1.0, 0.0).to(x.dtype)
        if OMIT:
            rr = tl.load(ref_ptr + offs, mask=inb, other=0.0)
            valid = valid & (rr == rr)
        wv = tl.where(valid, w, 0.0)
        Wb = tl.sum(wv, axis=0)
        pivot = tl.max(tl.where(valid, x, float("-inf")), axis=0)
        pivot = tl.where(Wb > 0, pivot, 0.0)
        safe = tl.where(Wb > 0, Wb, 1.0)
        c = tl.sum(wv * tl.where(valid, x - pivot, 0.0), axis=0) / safe  # block mean - pivot
        dev = tl.where(valid, (x - pivot) - c, 0.0)  # (not x - (pivot + c): that sum is rounded)
        Mb = tl.sum(wv * dev * dev, axis=0)
        mb = pivot.to(tl.float64) + c.to(tl.float64)
        W, mean, M2 = _merge(W, mean, M2, Wb.to(tl.float64), mb, Mb.to(tl.float64))
    tl.store(part_ptr + pid * 3, W)
    tl.store(part_ptr + pid * 3 + 1, mean)
    tl.store(part_ptr + pid * 3 + 2, M2)


@triton.jit
def _load_rows(r_ptr, order_ptr, start, length, c, cols, n_rows,
               HAS_ORDER: tl.constexpr, OMIT: tl.constexpr, F64: tl.constexpr):
    pos = start[:, None] + c + cols[None, :]
    inb = (c + cols)[None, :] < length[:, None]
    if HAS_ORDER:
        # clamped like the offsets: whatever order holds, the gather stays inside r
        rows = tl.minimum(tl.maximum(tl.load(order_ptr + pos, mask=inb, other=0).to(tl.int64), 0), n_rows - 1)
    else:
        rows = pos
    x = _acc(tl.load(r_ptr + rows, mask=inb, other=0.0), F64)
    valid = inb
    if OMIT:
        valid = inb & (x == x)
    return rows, inb, x, valid


@triton.jit
def _pow2_floor(v, F64: tl.constexpr):
    """The largest power of two <= v (its exponent bits), or 1 where v is 0, subnormal, inf or
    NaN (no scaling there)."""
    if F64:
        p = (v.to(tl.int64, bitcast=True) & 0x7FF0000000000000).to(tl.float64, bitcast=True)
    else:
        p = (v.to(tl.float32).to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    return tl.where((p > 0) & (p < float("inf")), p, 1.0).to(v.dtype)


@triton.jit
def _token_range(T, BLOCK_T: tl.constexpr):
    """The tokens [t_lo, t_hi) of this program: axis 1 of the grid splits T into equal chunks."""
    per = tl.cdiv(tl.cdiv(T, tl.num_programs(1)), BLOCK_T) * BLOCK_T
    t_lo = tl.program_id(1).to(tl.int64) * per
    t_hi = tl.minimum(t_lo + per, T)
    return t_lo, t_hi


@triton.jit
def _group_block(cu_ptr, num_groups, G, n_rows, FIXED: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's BLOCK_B groups: ids, mask, first row and length of each (int64), longest.

    Offsets are clamped into [0, n_rows] and made non-decreasing per group: inside unchecked(),
    torch.compile or group_advantages_direct they arrive unvalidated, and malformed ones
    (cu = [0, 4, 10**9], decreasing, negative) must give garbage values, never an access outside
    the buffers nor a loop over 10**9 rows."""
    pid = tl.program_id(0).to(tl.int64)
    gb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    gmask = gb < num_groups
    if FIXED:
        start = gb * G
        length = tl.where(gmask, G, 0).to(tl.int64)
    else:
        start = tl.load(cu_ptr + gb, mask=gmask, other=0).to(tl.int64)
        start = tl.minimum(tl.maximum(start, 0), n_rows)
        end = tl.load(cu_ptr + gb + 1, mask=gmask, other=0).to(tl.int64)
        end = tl.minimum(tl.maximum(end, start), n_rows)
        length = tl.where(gmask, end - start, 0)
    return gb, gmask, start, length, tl.max(length, axis=0)


@triton.jit
def _store_tile(a, rows, inb, out_ptr, mask_ptr, stride_mask, T, TOKENS: tl.constexpr, BLOCK_T: tl.constexpr):
    """Writes a [R, G] tile of advantages: A[i] per row, or with TOKENS the token-level
    A[i, t] = A_i * mask[i, t] over this program's share of the T tokens (same launch)."""
    if TOKENS:
        t_lo, t_hi = _token_range(T, BLOCK_T)
        for t0 in range(t_lo, t_hi, BLOCK_T):
            tt = t0 + tl.arange(0, BLOCK_T)
            m3 = inb[:, :, None] & (tt[None, None, :] < t_hi)
            mk = tl.load(mask_ptr + rows[:, :, None] * stride_mask + tt[None, None, :], mask=m3, other=0)
            val = a[:, :, None] * mk.to(a.dtype)
            tl.store(out_ptr + rows[:, :, None] * T + tt[None, None, :], val.to(out_ptr.dtype.element_ty), mask=m3)
    else:
        tl.store(out_ptr + rows, a.to(out_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _singleton_rule(a, single, SINGLETON: tl.constexpr):
    """A of the rows of one-row groups: 0, NaN, or (SINGLETON_RAW) left as computed."""
    if SINGLETON == V.SINGLETON_ZERO:
        a = tl.where(single[:, None], 0.0, a)
    elif SINGLETON == V.SINGLETON_NAN:
        a = tl.where(single[:, None], float("nan"), a)
    return a


@triton.jit
def _write_chunk(x, rows, inb, valid, pivot, shift, raw_single, single, loo, bm_hi, bm_lo, denom, out_ptr, mask_ptr,
                 stride_mask, T, BASELINE: tl.constexpr, SCALE: tl.constexpr, SINGLETON: tl.constexpr,
                 TOKENS: tl.constexpr, BLOCK_T: tl.constexpr):
    """A of one [BLOCK_B, BLOCK_L] chunk from its group statistics, stored (with the token broadcast)."""
    d = x - pivot[:, None] - shift[:, None]
    if BASELINE == V.BASELINE_GROUP_MEAN:
        cen = tl.where(raw_single[:, None], x, d)
    elif BASELINE == V.BASELINE_LEAVE_ONE_OUT:
        cen = tl.where(raw_single[:, None], x, d * loo[:, None])
    elif BASELINE == V.BASELINE_BATCH_MEAN:
        cen = (x - bm_hi) - bm_lo
    else:
        cen = x
    a = cen / denom[:, None]
    # a group-level statistic: singleton rule
    if BASELINE == V.BASELINE_GROUP_MEAN or BASELINE == V.BASELINE_LEAVE_ONE_OUT or SCALE == V.SCALE_GROUP_STD:
        a = _singleton_rule(a, single, SINGLETON)
    a = tl.where(valid, a, 0.0)
    _store_tile(a, rows, inb, out_ptr, mask_ptr, stride_mask, T, TOKENS, BLOCK_T)


@triton.jit
def _group_kernel(r_ptr, out_ptr, cu_ptr, order_ptr, part_ptr, mask_ptr,
                  num_groups, G, n_rows, P, T, stride_mask, eps,
                  FIXED: tl.constexpr, HAS_ORDER: tl.constexpr, BASELINE: tl.constexpr, SCALE: tl.constexpr,
                  SINGLETON: tl.constexpr, OMIT: tl.constexpr, UNBIASED: tl.constexpr, TOKENS: tl.constexpr,
                  F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_P: tl.constexpr, ONE_CHUNK: tl.constexpr = False):
    """One program normalizes BLOCK_B groups; rows in chunks of BLOCK_L.

    ONE_CHUNK (the launcher sets it for fixed G <= BLOCK_L): every group is one [BLOCK_B, BLOCK_L]
    tile, loaded once and kept in registers for the three passes, so each reward is read from
    memory once. Otherwise each pass re-loads its chunks (from L1/L2 for short groups)."""
    gb, gmask, start, length, maxlen = _group_block(cu_ptr, num_groups, G, n_rows, FIXED, BLOCK_B)
    cols = tl.arange(0, BLOCK_L)

    # batch statistics of the raw rewards (partials of the previous launch, fixed order)
    bm_hi = 0.0
    bm_lo = 0.0
    bstd = 1.0
    if BASELINE == V.BASELINE_BATCH_MEAN or SCALE == V.SCALE_BATCH_STD:
        bW, bm, bM2 = _reduce_parts(part_ptr, P, BLOCK_P)
        if UNBIASED:
            bstd = _acc(tl.sqrt(bM2 / (bW - 1.0)), F64)
        else:
            bstd = _acc(tl.sqrt(bM2 / bW), F64)
        bm_hi, bm_lo = _split(bm, F64)

    # pass 1: pivot (a member of the group), count, shifted sum
    rows, inb, x, valid = _load_rows(r_ptr, order_ptr, start, length, 0, cols, n_rows, HAS_ORDER, OMIT, F64)
    pivot = tl.max(tl.where(valid, x, float("-inf")), axis=1)
    pivot = tl.where(pivot == float("-inf"), 0.0, pivot)
    low = tl.min(tl.where(valid, x, float("inf")), axis=1)
    n = tl.sum(tl.where(valid, 1.0, 0.0).to(x.dtype), axis=1)
    S1 = tl.sum(tl.where(valid, x - pivot[:, None], 0.0), axis=1)
    if not ONE_CHUNK:
        for c in range(BLOCK_L, maxlen, BLOCK_L):
            rows, inb, x, valid = _load_rows(r_ptr, order_ptr, start, length, c, cols, n_rows, HAS_ORDER, OMIT,
                                             F64)
            low = tl.minimum(low, tl.min(tl.where(valid, x, float("inf")), axis=1))
            n += tl.sum(tl.where(valid, 1.0, 0.0).to(x.dtype), axis=1)
            S1 += tl.sum(tl.where(valid, x - pivot[:, None], 0.0), axis=1)
    nsafe = tl.where(n > 0, n, 1.0)
    shift = S1 / nsafe  # mean = pivot + shift
    # a group holding +-inf has no finite mean: all its A are NaN, wherever the inf sits (a -inf
    # leaves the max pivot finite and S1 = -inf; singletons keep their rule in _write_chunk)
    shift = tl.where(tl.abs(shift) < float("inf"), shift, float("nan"))
    single = n == 1.0
    raw_single = single & (SINGLETON == V.SINGLETON_RAW)

    s = tl.where(n > 0, 1.0, 1.0).to(x.dtype)
    if SCALE == V.SCALE_GROUP_STD:
        # Deviations are divided by a power of two near the group's range before squaring: in
        # fp32 a spread beyond ~1e19 overflowed d * d (std inf, A = 0: rewards of 1e30 gave 0
        # where C++ and the reference give the right answer). A power of two scales exactly, so
        # results are bitwise the unscaled ones wherever those neither overflowed nor underflowed.
        sc = _pow2_floor(pivot - low, F64)
        if ONE_CHUNK:
            dev = tl.where(valid, (x - pivot[:, None] - shift[:, None]) / sc[:, None], 0.0)
            M2 = tl.sum(dev * dev, axis=1)
        else:
            M2 = tl.zeros_like(S1)
            for c in range(0, maxlen, BLOCK_L):
                rows, inb, x, valid = _load_rows(r_ptr, order_ptr, start, length, c, cols, n_rows, HAS_ORDER,
                                                 OMIT, F64)
                dev = tl.where(valid, (x - pivot[:, None] - shift[:, None]) / sc[:, None], 0.0)
                M2 += tl.sum(dev * dev, axis=1)
        if UNBIASED:
            var = M2 / tl.where(n > 1, n - 1.0, 1.0)
        else:
            var = M2 / nsafe
        s = tl.where(raw_single, 1.0, tl.sqrt(var) * sc)
    elif SCALE == V.SCALE_BATCH_STD:
        s = s * bstd
    denom = s + eps
    loo = n / tl.where(n > 1, n - 1.0, 1.0)

    # pass 2: write A (and the token broadcast)
    if ONE_CHUNK:
        _write_chunk(x, rows, inb, valid, pivot, shift, raw_single, single, loo, bm_hi, bm_lo, denom, out_ptr, mask_ptr,
                     stride_mask, T, BASELINE, SCALE, SINGLETON, TOKENS, BLOCK_T)
    else:
        for c in range(0, maxlen, BLOCK_L):
            rows, inb, x, valid = _load_rows(r_ptr, order_ptr, start, length, c, cols, n_rows, HAS_ORDER, OMIT,
                                             F64)
            _write_chunk(x, rows, inb, valid, pivot, shift, raw_single, single, loo, bm_hi, bm_lo, denom, out_ptr,
                         mask_ptr, stride_mask, T, BASELINE, SCALE, SINGLETON, TOKENS, BLOCK_T)


@triton.jit
def _whiten_kernel(a_ptr, w_ptr, ref_ptr, part_ptr, out_ptr, mask_ptr, n, P, T, stride_mask, weps,
                   FORM: tl.constexpr, UNBIASED: tl.constexpr, HAS_W: tl.constexpr, OMIT: tl.constexpr,
                   TOKENS: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_P: tl.constexpr):
    """A <- (A - mean) * spread over the batch (moments from the previous launch); rows with
    weight 0 (omitted, or no valid token) keep 0. Writes [N] or the token broadcast [N, T]."""
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < n
    W, mean, M2 = _reduce_parts(part_ptr, P, BLOCK_P)
    if UNBIASED:
        var = M2 / (W - 1.0)
    else:
        var = M2 / W
    if FORM == V.WHITEN_STD_STD_EPS:
        mul = 1.0 / (tl.sqrt(var) + weps)
    elif FORM == V.WHITEN_STD_RSQRT_EPS:
        mul = 1.0 / tl.sqrt(var + weps)
    else:  # V.WHITEN_STD_RSQRT_CLAMP
        mul = 1.0 / tl.sqrt(tl.maximum(var, weps))
    m_hi, m_lo = _split(mean, F64)
    mul = _acc(mul, F64)
    a = _acc(tl.load(a_ptr + rows, mask=rm, other=0.0), F64)
    keep = rm
    if HAS_W:
        keep = keep & (tl.load(w_ptr + rows, mask=rm, other=0.0) > 0)
    if OMIT:
        rr = tl.load(ref_ptr + rows, mask=rm, other=0.0)
        keep = keep & (rr == rr)
    res = tl.where(keep, ((a - m_hi) - m_lo) * mul, tl.where(a == a, 0.0, a))
    if TOKENS:
        t_lo, t_hi = _token_range(T, BLOCK_T)
        for t0 in range(t_lo, t_hi, BLOCK_T):
            tt = t0 + tl.arange(0, BLOCK_T)
            m2 = rm[:, None] & (tt[None, :] < t_hi)
            mk = tl.load(mask_ptr + rows[:, None] * stride_mask + tt[None, :], mask=m2, other=0)
            val = res[:, None] * mk.to(res.dtype)
            tl.store(out_ptr + rows[:, None] * T + tt[None, :], val.to(out_ptr.dtype.element_ty), mask=m2)
    else:
        tl.store(out_ptr + rows, res.to(out_ptr.dtype.element_ty), mask=rm)


@triton.jit
def _lgamma_ge1(x):
    """log Gamma(x) for x >= 1 in plain tl: shift to x >= 8, then Stirling's series (|err| < 1e-9)."""
    z = x
    prod = x * 0.0 + 1.0
    for _ in tl.static_range(8):
        small = z < 8.0
        prod = tl.where(small, prod * z, prod)
        z = tl.where(small, z + 1.0, z)
    zi = 1.0 / z
    zi2 = zi * zi
    series = zi * (1.0 / 12.0 - zi2 * (1.0 / 360.0 - zi2 * (1.0 / 1260.0)))
    return (z - 0.5) * tl.log(z) - z + 0.91893853320467274178 + series - tl.log(prod)


@triton.jit
def _bnpo_scaled(x, lo, inv_range):
    s = tl.minimum(tl.maximum((x - lo) * inv_range, 0.0), 1.0)
    return tl.where(x == x, s, x)  # keep NaN (max/min drop it)


@triton.jit
def _bnpo_kernel(r_ptr, out_ptr, cu_ptr, order_ptr, part_ptr, mask_ptr, pbuf_ptr, nbuf_ptr, wbuf_ptr,
                 num_groups, G, n_rows, P, T, stride_mask, lo, inv_range,
                 FIXED: tl.constexpr, HAS_ORDER: tl.constexpr, PHASE: tl.constexpr, SINGLETON: tl.constexpr,
                 OMIT: tl.constexpr, TOKENS: tl.constexpr, F64: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """BNPO. PHASE 1: p_g (group mean of the min-max scaled rewards), n_g and the weight of the
    group in the over-group moments. PHASE 2: Beta(alpha, beta) from those moments, then
    A_i = clamp(1 / BetaPDF(p_g), 0, 1e6) * (s_i - p_g)."""
    gb, gmask, start, length, maxlen = _group_block(cu_ptr, num_groups, G, n_rows, FIXED, BLOCK_B)
    cols = tl.arange(0, BLOCK_L)
    if PHASE == 1:
        rows, inb, x, valid = _load_rows(r_ptr, order_ptr, start, length, 0, cols, n_rows, HAS_ORDER, OMIT, F64)
        sv = _bnpo_scaled(x, lo, inv_range)
        pivot = tl.max(tl.where(valid, sv, float("-inf")), axis=1)
        pivot = tl.where(pivot == float("-inf"), 0.0, pivot)
        n = tl.sum(tl.where(valid, 1.0, 0.0).to(x.dtype), axis=1)
        S1 = tl.sum(tl.where(valid, sv - pivot[:, None], 0.0), axis=1)
        for c in range(BLOCK_L, maxlen, BLOCK_L):
            rows, inb, x, valid = _load_rows(r_ptr, order_ptr, start, length, c, cols, n_rows, HAS_ORDER, OMIT, F64)
            sv = _bnpo_scaled(x, lo, inv_range)
            n += tl.sum(tl.where(valid, 1.0, 0.0).to(x.dtype), axis=1)
            S1 += tl.sum(tl.where(valid, sv - pivot[:, None], 0.0), axis=1)
        p = pivot + S1 / tl.where(n > 0, n, 1.0)
        single = n == 1.0
        if SINGLETON == V.SINGLETON_RAW:  # the original code: p = 0 for a singleton, which stays in the moments
            p = tl.where(single, 0.0, p)
            in_stats = n > 0
        else:
            in_stats = (n > 0) & (n != 1.0)
        p = tl.where(in_stats, p, 0.0)
        tl.store(pbuf_ptr + gb, p, mask=gmask)
        tl.store(nbuf_ptr + gb, n, mask=gmask)
        tl.store(wbuf_ptr + gb, tl.where(in_stats, 1.0, 0.0).to(x.dtype), mask=gmask)
    else:
        W, m, M2 = _reduce_parts(part_ptr, P, BLOCK_P)
        W = _acc(W, F64)
        m = _acc(m, F64)
        M2 = _acc(M2, F64)
        one = W <= 1.0
        mean = tl.where(one, 0.0, m)
        v = tl.where(one, 1.0, M2 / tl.where(one, 1.0, W - 1.0))
        c = mean * (1.0 - mean) / v - 1.0
        a_raw = 1.0 + c * mean / 3.0
        b_raw = 1.0 + c * (1.0 - mean) / 3.0
        alpha = tl.where(a_raw != a_raw, a_raw, tl.maximum(a_raw, 1.0))
        beta = tl.where(b_raw != b_raw, b_raw, tl.maximum(b_raw, 1.0))
        # guard "v = 0", decided as in csrc/advantages.cpp (bnpo_degenerate) and the reference:
        # p_g carry rounding noise, so v = 0 exactly misses equal success rates
        degenerate = v <= 1e-12 * (mean * (1.0 - mean))
        alpha = tl.where(degenerate, 1.0, alpha)  # uniform weights instead of NaN
        beta = tl.where(degenerate, 1.0, beta)
        lnB = _lgamma_ge1(alpha) + _lgamma_ge1(beta) - _lgamma_ge1(alpha + beta)
        p = tl.load(pbuf_ptr + gb, mask=gmask, other=0.0)
        n = tl.load(nbuf_ptr + gb, mask=gmask, other=0.0)
        xa = tl.where(alpha == 1.0, 0.0, (alpha - 1.0) * tl.log(p))
        xb = tl.where(beta == 1.0, 0.0, (beta - 1.0) * tl.log(1.0 - p))
        w = tl.exp(lnB - xa - xb)
        w = tl.where(w == w, tl.minimum(w, 1e6), w)  # minimum drops NaN: a NaN batch must stay NaN
        single = n == 1.0
        for c0 in range(0, maxlen, BLOCK_L):
            rows, inb, x, valid = _load_rows(r_ptr, order_ptr, start, length, c0, cols, n_rows, HAS_ORDER, OMIT, F64)
            sv = _bnpo_scaled(x, lo, inv_range)
            a = w[:, None] * (sv - p[:, None])
            a = tl.where(valid, _singleton_rule(a, single, SINGLETON), 0.0)
            _store_tile(a, rows, inb, out_ptr, mask_ptr, stride_mask, T, TOKENS, BLOCK_T)


# ------------------------------------------------------------------------ launchers
_MOMENT_BLOCK = 1024
_MAX_PARTS = 256


def merge_parts(parts):
    """Merge summaries [P, 3] (W, mean, M2) into one [3] with torch ops (exact for equal means)."""
    import torch

    W, m, M2 = parts[:, 0], parts[:, 1], parts[:, 2]
    used = W > 0
    Wt = W.sum()
    pivot = torch.where(used, m, torch.full_like(m, float("-inf"))).amax()
    pivot = torch.where(Wt > 0, pivot, torch.zeros_like(pivot))
    mean = pivot + torch.where(used, W * (m - pivot), torch.zeros_like(m)).sum() / torch.where(Wt > 0, Wt, 1.0)
    dm = torch.where(used, m - mean, torch.zeros_like(m))
    return torch.stack([Wt, mean, M2.sum() + (W * dm * dm).sum()])


def _all_reduce_parts(parts, P, process_group):
    """Local partials -> one summary, all-gathered and merged in rank order: P = 1 afterwards."""
    import torch
    import torch.distributed as dist

    local = merge_parts(parts.view(P, 3))
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(gathered, local, group=process_group)
    return merge_parts(torch.stack(gathered)).contiguous(), 1


def _moments(x, w, ref, omit, f64, process_group=None):
    import torch

    n = x.numel()
    blocks = cdiv(max(n, 1), _MOMENT_BLOCK)
    P = min(blocks, _MAX_PARTS)
    iters = cdiv(blocks, P)
    parts = torch.empty(P * 3, dtype=torch.float64, device=x.device)  # float64 for every dtype
    _moments_kernel[(P,)](x, w if w is not None else x, ref if ref is not None else x, parts, n, iters,
                          HAS_W=w is not None, OMIT=bool(omit), F64=f64, BLOCK=_MOMENT_BLOCK)
    if process_group is not None:
        return _all_reduce_parts(parts, P, process_group)
    return parts, P


def _bnpo(r, out, cu, order, mask, num_groups, group_size, bounds, singleton, omit, f64, fixed, block_b, block_l,
          block_t, grid, process_group=None):
    """BNPO: phase 1 (p_g, n_g), moments of p_g over the groups, phase 2 (weights and A): 3 launches."""
    import torch

    acc = torch.float64 if f64 else torch.float32
    slots = max(num_groups, 1)
    pbuf = torch.empty(slots, dtype=acc, device=r.device)
    nbuf = torch.empty(slots, dtype=acc, device=r.device)
    wbuf = torch.zeros(slots, dtype=acc, device=r.device)
    lo, hi = float(bounds[0]), float(bounds[1])
    args = dict(FIXED=fixed, HAS_ORDER=order is not None, SINGLETON=SINGLETON[singleton], OMIT=bool(omit),
                TOKENS=mask is not None, F64=f64, BLOCK_B=block_b, BLOCK_L=block_l, BLOCK_T=block_t,
                num_warps=8 if block_b * block_l * block_t >= 2048 else 4)
    common = (cu if cu is not None else r, order if order is not None else r)
    tail = (num_groups, group_size or 0, r.numel())
    _bnpo_kernel[grid[:1]](r, out, *common, pbuf, mask if mask is not None else r, pbuf, nbuf, wbuf, *tail, 1, 0, 0,
                       lo, 1.0 / (hi - lo), PHASE=1, BLOCK_P=2, **args)
    parts, P = _moments(pbuf, wbuf, None, False, f64, process_group)
    T = mask.shape[1] if mask is not None else 0
    _bnpo_kernel[grid](r, out, *common, parts, mask if mask is not None else r, pbuf, nbuf, wbuf, *tail, P, T,
                       mask.stride(0) if mask is not None else 0, lo, 1.0 / (hi - lo), PHASE=2,
                       BLOCK_P=next_power_of_2(P), **args)


@functools.lru_cache(maxsize=1024)
def _group_plan(n, group_size, num_slots, n_cu, has_order, T, tokens_here):
    """(num_groups, BLOCK_B, BLOCK_L, BLOCK_T, grid, ONE_CHUNK, num_warps) of the group kernel;
    cached: a training loop
    asks for the same shapes every step, and the arithmetic is ~2 µs of host time a call."""
    if group_size is not None:
        block_l = min(max(next_power_of_2(group_size), 2), 256)
        num_groups = n // group_size
    else:
        num_groups = num_slots
        avg = n // max(1, n_cu - 1) if not has_order else 16
        block_l = min(max(next_power_of_2(max(avg, 1)), 16), 256)
    # Launch shapes measured on the H100 (bench/tune_gpu.py, bench/NOTES.md §6). One value per
    # row: about 512 programs (4 per SM) of 128 to 2048 rows. N = 64K, G = 8: 128-row programs
    # take 5.0 µs, 2048-row ones 6.8 µs (32 programs left most SMs idle); N = 1M: 2048 rows
    # 12.7 µs, 128 rows 14.0 µs. Token broadcast: 8 rows x 256 tokens a step, two steps a
    # program (32M tokens: 85% of copy bandwidth, against 73% for 16 rows x 128 tokens).
    if tokens_here:
        block_b = max(1, 8 // block_l)
        block_t = min(max(next_power_of_2(max(T, 1)), 16), 256, max(16, 4096 // (block_b * block_l)))
    elif group_size is not None and group_size <= block_l:
        # one chunk (rewards kept in registers, one read each): 128-256 rows a program, the
        # H100 sweep of 2026-11-26 (evening; NOTES §7.7): N = 64K 128 rows 4.6 µs; N = 1M 256 rows
        # and 2 warps 8.3 µs, where 2048 rows and 8 warps took 10.8 (the three-pass body 17.9)
        rows = max(block_l, 256 if n >= (1 << 18) else 128)
        block_b = max(1, rows // block_l)
        block_t = 1
    else:
        rows = min(2048, max(128, next_power_of_2(cdiv(max(num_groups, 1) * block_l, 512))))
        block_b = max(1, rows // block_l)
        block_t = 1
    # tokens: axis 1 splits T (each program recomputes its groups' statistics: G rows, cheap)
    t_splits = cdiv(T, 2 * block_t) if tokens_here and T > 0 else 1
    # warps: one per 128 rows for the one-chunk body (measured best at 128 and 256 rows), else 8
    # from 2048 values up
    one_chunk = group_size is not None and group_size <= block_l
    elems = block_b * block_l * block_t
    warps = min(8, max(1, elems // 128)) if one_chunk else (8 if elems >= 2048 else 4)
    return num_groups, block_b, block_l, block_t, (cdiv(max(num_groups, 1), block_b), t_splits), one_chunk, warps


def group_advantages_core(r, *, group_size, cu, order, num_slots, baseline, scale, whiten, eps, std_unbiased,
                          singleton, omit, whiten_eps, whiten_std, whiten_weights=None, mask=None,
                          out_dtype=None, bnpo_bounds=(0.0, 1.0), process_group=None):
    """A[N] (or A[N, T] with ``mask``) of one component ``r`` (contiguous, float). See module doc.

    ``process_group``: every batch summary is merged over the ranks (all-gather of one
    (W, mean, M2) per rank, merged in rank order) before the launch that consumes it.
    """
    import torch

    n = r.numel()
    f64 = r.dtype == torch.float64
    out_dtype = out_dtype or r.dtype
    T = mask.shape[1] if mask is not None else 0
    if mask is not None:
        mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
        if mask.stride(1) != 1:
            mask = mask.contiguous()
    out_shape = (n, T) if mask is not None else (n,)
    # ragged offsets that skip rows (malformed, value checks off) leave those rows 0, not
    # uninitialised memory; fixed and index layouts cover every row
    ragged = group_size is None and order is None
    out = (torch.zeros if ragged else torch.empty)(out_shape, dtype=out_dtype, device=r.device)
    if n == 0:
        return out
    b, s, wcode = BASELINE[baseline], SCALE[scale], WHITEN[whiten]
    parts, P = (r, 1)
    if b == V.BASELINE_BATCH_MEAN or s == V.SCALE_BATCH_STD:
        parts, P = _moments(r, None, r if omit else None, omit, f64, process_group)
    fixed = group_size is not None
    tokens_here = mask is not None and wcode == V.WHITEN_NONE
    num_groups, block_b, block_l, block_t, grid, one_chunk, warps = _group_plan(
        n, group_size, num_slots, cu.numel() if cu is not None and order is None else 0, order is not None, T,
        tokens_here)
    a_buf = out if wcode == V.WHITEN_NONE else (torch.zeros if ragged else torch.empty)(
        n, dtype=torch.float64 if f64 else torch.float32, device=r.device)
    dummy = r
    if s == V.SCALE_BNPO:
        _bnpo(r, a_buf, cu, order, mask if tokens_here else None, num_groups, group_size, bnpo_bounds, singleton,
              omit, f64, fixed, block_b, block_l, block_t, grid, process_group)
    else:
        _group_kernel[grid](
            r, a_buf, cu if cu is not None else dummy, order if order is not None else dummy, parts,
            mask if tokens_here else dummy, num_groups, group_size or 0, n, P, T,
            mask.stride(0) if tokens_here else 0, float(eps),
            FIXED=fixed, HAS_ORDER=order is not None, BASELINE=b, SCALE=s, SINGLETON=SINGLETON[singleton],
            OMIT=bool(omit), UNBIASED=bool(std_unbiased), TOKENS=tokens_here, F64=f64,
            BLOCK_B=block_b, BLOCK_L=block_l, BLOCK_T=block_t, BLOCK_P=next_power_of_2(P),
            ONE_CHUNK=one_chunk, num_warps=warps,
        )
    if wcode == V.WHITEN_NONE:
        return out
    parts2, P2 = _moments(a_buf, whiten_weights, r if omit else None, omit, f64, process_group)
    block_t = min(max(next_power_of_2(max(T, 1)), 16), 128) if mask is not None else 1
    block_r = max(1, 2048 // block_t) if mask is not None else 1024
    t_splits = cdiv(T, 2 * block_t) if mask is not None and T > 0 else 1
    _whiten_kernel[(cdiv(n, block_r), t_splits)](
        a_buf, whiten_weights if whiten_weights is not None else a_buf, r, parts2, out,
        mask if mask is not None else a_buf, n, P2, T, mask.stride(0) if mask is not None else 0, float(whiten_eps),
        FORM=WHITEN_STD[whiten_std], UNBIASED=bool(std_unbiased), HAS_W=whiten_weights is not None,
        OMIT=bool(omit), TOKENS=mask is not None, F64=f64, BLOCK_R=block_r, BLOCK_T=block_t,
        BLOCK_P=next_power_of_2(P2), num_warps=8 if block_r * block_t >= 2048 else 4,
    )
    return out


# ------------------------------------------------------------------------ AOT specs
def _group_spec(dt, label, fixed=True, order=False, baseline=V.BASELINE_GROUP_MEAN, scale=V.SCALE_GROUP_STD,
                tokens=False, omit=False, block_b=16, block_l=8, block_t=1, num_warps=4, f64=False):
    return AotSpec(
        _group_kernel,
        signature={"r_ptr": f"*{dt}", "out_ptr": f"*{dt}", "cu_ptr": "*i64", "order_ptr": "*i64",
                   "part_ptr": "*fp64", "mask_ptr": "*u8", "num_groups": "i64", "G": "i64",
                   "n_rows": "i64", "P": "i32",
                   "T": "i64", "stride_mask": "i64", "eps": "fp32"},
        constexprs={"FIXED": fixed, "HAS_ORDER": order, "BASELINE": baseline, "SCALE": scale,
                    "SINGLETON": V.SINGLETON_RAW, "OMIT": omit, "UNBIASED": True, "TOKENS": tokens, "F64": f64,
                    "BLOCK_B": block_b, "BLOCK_L": block_l, "BLOCK_T": block_t, "BLOCK_P": 256, "ONE_CHUNK": fixed},
        num_warps=num_warps, label=label,
    )


AOT_SPECS = [
    _group_spec("bf16", "fixed G=8 grpo bf16 (int64 offsets)"),
    _group_spec("fp32", "fixed G=8 grpo fp32"),
    _group_spec("fp32", "fixed G=8 rloo fp32 omit", baseline=V.BASELINE_LEAVE_ONE_OUT,
                scale=V.SCALE_NONE, omit=True),
    _group_spec("fp32", "ragged batch_std fp32", fixed=False, scale=V.SCALE_BATCH_STD, block_b=2, block_l=64),
    _group_spec("fp32", "ragged G~8 fp32", fixed=False, block_b=8, block_l=16),
    _group_spec("bf16", "index order bf16", fixed=False, order=True, block_b=8, block_l=16),
    _group_spec("bf16", "fixed G=8 tokens bf16", tokens=True, block_b=1, block_l=8, block_t=256, num_warps=8),
    _group_spec("fp64", "ragged batch_mean fp64", fixed=False, baseline=V.BASELINE_BATCH_MEAN,
                scale=V.SCALE_GROUP_STD, block_b=8, block_l=16, f64=True),
    *[AotSpec(_bnpo_kernel,
              signature={"r_ptr": "*bf16", "out_ptr": "*bf16", "cu_ptr": "*i64", "order_ptr": "*i64",
                         "part_ptr": "*fp64", "mask_ptr": "*u8", "pbuf_ptr": "*fp32", "nbuf_ptr": "*fp32",
                         "wbuf_ptr": "*fp32", "num_groups": "i64", "G": "i64", "n_rows": "i64", "P": "i32", "T": "i64",
                         "stride_mask": "i64", "lo": "fp32", "inv_range": "fp32"},
              constexprs={"FIXED": True, "HAS_ORDER": False, "PHASE": phase, "SINGLETON": V.SINGLETON_RAW,
                          "OMIT": False, "TOKENS": False, "F64": False, "BLOCK_B": 16, "BLOCK_L": 8, "BLOCK_T": 1,
                          "BLOCK_P": 256 if phase == 2 else 2},
              num_warps=4, label=f"phase {phase} fixed G=8 bf16") for phase in (1, 2)],
    AotSpec(_moments_kernel,
            signature={"x_ptr": "*fp32", "w_ptr": "*fp32", "ref_ptr": "*fp32", "part_ptr": "*fp64", "n": "i64",
                       "iters": "i32"},
            constexprs={"HAS_W": True, "OMIT": True, "F64": False, "BLOCK": 1024}, num_warps=4, label="fp32"),
    AotSpec(_whiten_kernel,
            signature={"a_ptr": "*fp32", "w_ptr": "*fp32", "ref_ptr": "*bf16", "part_ptr": "*fp64",
                       "out_ptr": "*bf16", "mask_ptr": "*u8", "n": "i64", "P": "i32", "T": "i64",
                       "stride_mask": "i64", "weps": "fp32"},
            constexprs={"FORM": V.WHITEN_STD_RSQRT_EPS, "UNBIASED": True, "HAS_W": True, "OMIT": False,
                        "TOKENS": True, "F64": False, "BLOCK_R": 16, "BLOCK_T": 128, "BLOCK_P": 256},
            num_warps=8, label="tokens bf16"),
    AotSpec(_whiten_kernel,
            signature={"a_ptr": "*fp32", "w_ptr": "*fp32", "ref_ptr": "*fp32", "part_ptr": "*fp64",
                       "out_ptr": "*fp32", "mask_ptr": "*u8", "n": "i64", "P": "i32", "T": "i64",
                       "stride_mask": "i64", "weps": "fp32"},
            constexprs={"FORM": V.WHITEN_STD_STD_EPS, "UNBIASED": True, "HAS_W": False, "OMIT": True,
                        "TOKENS": False, "F64": False, "BLOCK_R": 1024, "BLOCK_T": 1, "BLOCK_P": 256},
            num_warps=4, label="sample fp32"),
]
