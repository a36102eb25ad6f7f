"""``group_advantages``: grouped reward normalization for GRPO, RLOO, Dr. GRPO, REINFORCE++,
DLER, BNPO and the verl / TRL / OpenRLHF conventions (docs/advantages.md#formula-and-options;
presets: docs/advantages.md#presets).

Public API: :func:`group_advantages` (the torch.library op), :func:`group_advantages_direct`
(thin launcher, no checks), :data:`PRESETS`.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Optional, Tuple

import torch

from icrm_kernels import _backend, _op
from icrm_kernels._checks import (
    check_choice,
    check_finite_float,
    check_same_device,
    check_tensor,
    compiling,
    unchecked,
    value_checks_enabled,
)
from icrm_kernels._layout import check_groups
from icrm_kernels.reference import advantages as ref
from icrm_kernels.reference.advantages import PRESETS, resolve_options
from icrm_kernels import vocab
from icrm_kernels.profiling import ranged

__all__ = ["group_advantages", "group_advantages_direct", "PRESETS"]

# option -> {value: code} of the C++ op (code = position in the vocabulary, icrm_kernels/vocab.py)
_CPP_CODES = {kind: vocab.codes(vocab.VOCABULARIES[kind])
              for kind in ("baseline", "scale", "whiten", "singleton", "whiten_std")}


# ------------------------------------------------------------------------ kernels: one component
def _layout(n, device, group_size, cu_groups, group_index, backend="triton"):
    """(group_size or None, cu int64 or None, order or None, number of group slots)."""
    if group_size:
        return group_size, None, None, n // group_size
    from icrm_kernels._layout import sort_index

    if cu_groups is not None:
        cu = cu_groups.to(torch.int64).contiguous()
        return None, cu, None, cu.numel() - 1
    if backend == "cpp" and _backend.has_cpp_op("group_order"):  # counting sort in C++ (CPU only)
        cu, order = torch.ops.icrm_cpu.group_order(group_index)
        return None, cu, order, cu.numel() - 1
    order, cu, _ = sort_index(group_index, n)  # on the GPU: no host sync, N group slots
    return None, cu, order, n


def _core(backend, r, lay, o, *, baseline, scale, whiten, eps, whiten_eps, whiten_std, omit, mask, whiten_weights,
          out_dtype, process_group=None):
    """One component through the C++ or Triton kernels."""
    G, cu, order, slots = lay
    if backend == "triton":
        from icrm_kernels.triton.advantages import group_advantages_core

        return group_advantages_core(
            r.contiguous(), group_size=G, cu=cu, order=order, num_slots=slots, baseline=baseline, scale=scale,
            whiten=whiten, eps=eps, std_unbiased=o["std_unbiased"], singleton=o["singleton"], omit=omit,
            whiten_eps=whiten_eps, whiten_std=whiten_std, whiten_weights=whiten_weights, mask=mask,
            out_dtype=out_dtype, bnpo_bounds=o["bnpo_bounds"], process_group=process_group)
    work = r if r.dtype in (torch.float32, torch.float64) else r.float()
    options = _cpp_options(o, baseline, scale, whiten, eps, omit, whiten_eps, whiten_std)
    if G and cu is None and order is None and whiten_weights is None and _FIXED_CPU is not None:
        A = _FIXED_CPU(work, G, *options)
    else:
        A = torch.ops.icrm_cpu.group_advantages.default(work.contiguous(), cu, order, G or 0, whiten_weights, *options)
    if mask is not None:
        return (A.unsqueeze(1) * mask.to(A.dtype)).to(out_dtype)
    return A if A.dtype == out_dtype else A.to(out_dtype)  # (a no-op .to costs ~1 µs)


def _cpp_options(o, baseline, scale, whiten, eps, omit, whiten_eps, whiten_std):
    """The option arguments of ``icrm_cpu::group_advantages``, after the tensors and G."""
    return (_CPP_CODES["baseline"][baseline], _CPP_CODES["scale"][scale], _CPP_CODES["whiten"][whiten], float(eps),
            bool(o["std_unbiased"]), _CPP_CODES["singleton"][o["singleton"]], bool(omit), float(whiten_eps),
            _CPP_CODES["whiten_std"][whiten_std], float(o["bnpo_bounds"][0]), float(o["bnpo_bounds"][1]))


# ------------------------------------------------------------------------ the preset fast path
# preset -> (options, _core's keyword arguments, the C++ option arguments), or False for a
# preset the fast path leaves to the general one (token whitening needs a response_mask)
_PRESET_PLANS = {}


def _preset_plan(preset):
    plan = _PRESET_PLANS.get(preset)
    if plan is None:
        o = _options(preset, *_NO_OPTIONS)
        plan = False
        if o["whiten"] != "token" and o["nan_policy"] != "raise":
            kw = dict(baseline=o["baseline"], scale=o["scale"], whiten=o["whiten"], eps=o["eps"],
                      omit=o["nan_policy"] == "omit", whiten_eps=o["whiten_eps"], whiten_std=o["whiten_std"])
            plan = (o, kw, _cpp_options(o, **kw))
        _PRESET_PLANS[preset] = plan
    return plan


def _preset_call(rewards, group_size, preset):
    """``group_advantages(rewards, group_size=G, preset=P)`` with nothing else given, the call
    of most training loops: the same ``_core`` (or C++ op) call as the general path with the
    preset's arguments prepared once. None when the call needs the general path (other dtypes
    or shapes, a gradient, tracing, the reference backend, a bad argument: its checks raise)."""
    if (type(rewards) is not torch.Tensor or rewards.dim() != 1 or rewards.dtype not in _FAST_DTYPES
            or type(group_size) is not int or group_size <= 0 or rewards.shape[0] % group_size
            or (rewards.requires_grad and torch.is_grad_enabled()) or type(preset) is not str
            or preset not in PRESETS):
        return None
    plan = _preset_plan(preset)
    if not plan or not _backend._eager_mode((rewards,)):
        return None
    o, kw, cpp_options = plan
    # (select()'s answer for CPU tensors when the extension, hence its op, is there)
    if rewards.is_cpu and _FIXED_CPU is not None and _backend.current_backend() in _CPP_OR_AUTO:
        return _FIXED_CPU(rewards, group_size, *cpp_options)
    backend = _backend.select(rewards.device, cpp_op="group_advantages")
    if backend == "cpp":
        return torch.ops.icrm_cpu.group_advantages.default(rewards.contiguous(), None, None, group_size, None,
                                                           *cpp_options)
    if backend == "triton":
        return _core("triton", rewards, (group_size, None, None, rewards.shape[0] // group_size), o, mask=None,
                     whiten_weights=None, out_dtype=rewards.dtype, **kw)
    return None


_FAST_DTYPES = (torch.float32, torch.float64)
# icrm_cpu::group_advantages called from C with the fixed layout (csrc/module.cpp): the same op
# through the same dispatcher (the profiler records it alike), without torch.ops' boxing of its
# 16 arguments (~3 µs a call)
_FIXED_CPU = getattr(_backend._C, "group_advantages_fixed", None)
_CPP_OR_AUTO = ("auto", "cpp")


def _fast(backend, rewards, group_size, cu_groups, group_index, weights, mask, o, process_group=None):
    """Kernel path: aggregation and multi-component composition around the one-component kernel."""
    # one component: no [N, 1] view and no column slice (each torch view op costs µs of host time)
    R = rewards
    N, K = (rewards.shape[0], 1) if rewards.dim() == 1 else rewards.shape
    out_dtype = rewards.dtype
    lay = _layout(N, R.device, group_size, cu_groups, group_index, backend)
    omit = o["nan_policy"] == "omit"
    tok_w = None
    if o["whiten"] == "token":
        tok_w = mask.sum(1, dtype=torch.float64 if R.dtype == torch.float64 else torch.float32)
    common = dict(eps=o["eps"], whiten_eps=o["whiten_eps"], whiten_std=o["whiten_std"], omit=omit,
                  process_group=process_group)
    if o["scale"] == "bnpo" and K > 1:  # each component separately, then the weighted mean
        acc = torch.float64 if R.dtype == torch.float64 else torch.float32
        w = weights.to(acc) if weights is not None else torch.ones(K, dtype=acc, device=R.device)
        A = sum(w[k] * _core(backend, R[:, k].contiguous(), lay, o, baseline=o["baseline"], scale="bnpo",
                             whiten="none", mask=None, whiten_weights=None, out_dtype=acc, **common)
                for k in range(K)) / w.sum()
        # omitted rows (every component NaN) already hold 0; they leave the whitening by weight.
        # Omitting by "A is NaN" instead would also drop singleton="nan" rows, which the
        # reference keeps (a NaN advantage propagates: it is not a NaN reward)
        return _core(backend, A, lay, o, baseline="none", scale="none", whiten=o["whiten"], mask=mask,
                     whiten_weights=_keep_weights(R, omit, tok_w, o), out_dtype=out_dtype,
                     **dict(common, eps=0.0, omit=False))
    if K == 1 or o["aggregation"] == "sum_then_normalize":
        if K == 1:
            r = R if R.dim() == 1 else R[:, 0]
            if weights is not None and o["scale"] != "bnpo":  # (bnpo: a weighted mean of one component)
                r = r * weights.to(r.dtype)[0]
        else:
            w = weights.to(R.dtype) if weights is not None else torch.ones(K, dtype=R.dtype, device=R.device)
            Rw = R.float() * w.float() if R.dtype in (torch.float16, torch.bfloat16) else R * w
            r = Rw.nansum(1) if omit else Rw.sum(1)
            if omit:
                r = torch.where(torch.isnan(R).all(1), torch.full_like(r, math.nan), r)
        return _core(backend, r, lay, o, baseline=o["baseline"], scale=o["scale"], whiten=o["whiten"], mask=mask,
                     whiten_weights=tok_w, out_dtype=out_dtype, **common)
    # normalize_then_sum: each component in its group, weighted sum, batch normalization, whitening
    acc = torch.float64 if R.dtype == torch.float64 else torch.float32
    w = weights.to(acc) if weights is not None else torch.ones(K, dtype=acc, device=R.device)
    S = None
    for k in range(K):
        a = _core(backend, R[:, k].contiguous(), lay, o, baseline=o["baseline"], scale=o["scale"], whiten="none",
                  mask=None, whiten_weights=None, out_dtype=acc, **common)
        S = a * w[k] if S is None else S + a * w[k]
    # omitted rows (every component NaN) hold 0 in S and leave the batch statistics by weight,
    # as in the reference; a NaN in S from singleton="nan" stays in them and propagates
    keep = _keep_weights(R, omit, None, o) if omit else None
    last = o["whiten"] == "none"
    A = _core(backend, S, lay, o, baseline="none", scale="none", whiten="sample", eps=0.0, whiten_eps=o["eps"],
              whiten_std="std_eps", omit=False, mask=mask if last else None, whiten_weights=keep,
              out_dtype=out_dtype if last else acc, process_group=process_group)
    if last:
        return A
    return _core(backend, A, lay, o, baseline="none", scale="none", whiten=o["whiten"], mask=mask,
                 whiten_weights=_keep_weights(R, omit, tok_w, o), out_dtype=out_dtype,
                 **dict(common, eps=0.0, omit=False))


def _keep_weights(R, omit, tok_w, o):
    """Whitening weights of a composed advantage: the token counts (whiten="token"), times 0 for
    the rows nan_policy="omit" leaves out (every component NaN); None when all weights are 1."""
    if not omit:
        return tok_w
    acc = torch.float64 if R.dtype == torch.float64 else torch.float32
    keep = (~torch.isnan(R).all(1)).to(acc) if R.dim() == 2 else (~torch.isnan(R)).to(acc)
    return keep if tok_w is None else keep * tok_w


def _reference(rewards, group_size, cu_groups, group_index, weights, mask, o, process_group=None):
    """The float64 reference on the rewards' device, cast back."""
    out = ref.group_advantages_reference(
        rewards.double(), group_size=group_size or None, cu_groups=cu_groups, group_index=group_index,
        reward_weights=None if weights is None else weights.double(), response_mask=mask,
        process_group=process_group, **{k: v for k, v in o.items()})
    return out.to(rewards.dtype)


# ------------------------------------------------------------------------ options
def _validated_options(preset, baseline, scale, whiten, eps, std_unbiased, singleton, nan_policy, aggregation,
                       bnpo_bounds, whiten_eps, whiten_std) -> dict:
    """The preset applied, explicit keywords over it, every option checked (no tensor values)."""
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    o = resolve_options(preset, baseline=baseline, scale=scale, whiten=whiten, eps=eps, std_unbiased=std_unbiased,
                        singleton=singleton, nan_policy=nan_policy, aggregation=aggregation,
                        bnpo_bounds=bnpo_bounds, whiten_eps=whiten_eps, whiten_std=whiten_std)
    check_choice(o["baseline"], "baseline", vocab.BASELINES)
    check_choice(o["scale"], "scale", vocab.SCALES)
    check_choice(o["whiten"], "whiten", vocab.WHITENS)
    check_choice(o["singleton"], "singleton", vocab.SINGLETONS)
    check_choice(o["nan_policy"], "nan_policy", vocab.NAN_POLICIES)
    check_choice(o["aggregation"], "aggregation", vocab.AGGREGATIONS)
    check_choice(o["whiten_std"], "whiten_std", vocab.WHITEN_STDS)
    b = o["bnpo_bounds"]
    if isinstance(b, (str, bytes)) or not hasattr(b, "__len__") or len(b) != 2:
        raise ValueError(f"bnpo_bounds must be a (low, high) pair of numbers, got {b!r}")
    o["eps"] = check_finite_float(o["eps"], "eps", low=0.0)
    o["whiten_eps"] = check_finite_float(o["whiten_eps"], "whiten_eps", low=0.0)
    if not isinstance(o["std_unbiased"], bool):
        raise TypeError(f"std_unbiased must be a bool, got {type(o['std_unbiased']).__name__}")
    if o["scale"] == "bnpo" and o["baseline"] != "group_mean":
        raise ValueError(f"scale='bnpo' needs baseline='group_mean' (A = w_g (s_i - p_g)), got {o['baseline']!r}")
    lo, hi = o["bnpo_bounds"]
    lo = check_finite_float(lo, "bnpo_bounds[0]")
    hi = check_finite_float(hi, "bnpo_bounds[1]")
    if not hi > lo:
        raise ValueError(f"bnpo_bounds must be (low, high) with high > low, got {o['bnpo_bounds']}")
    o["bnpo_bounds"] = (lo, hi)
    return o


_NO_OPTIONS = (None,) * 11  # every keyword option of _validated_options left out
_PRESET_ONLY = {}  # preset name -> its validated options (at most one entry per preset)


@functools.lru_cache(maxsize=256)
def _validated_options_cached(key) -> tuple:
    return tuple(_validated_options(*key[0]).items())


def _options(*args) -> dict:
    """:func:`_validated_options`, cached: a training loop calls the op with the same options
    every step, and resolving and checking them is a fair share of a small call's host time.
    The key holds each value's type (True, 1 and 1.0 hash alike but do not validate alike).
    Under torch.compile the options are validated uncached: Dynamo before torch 2.13 cannot
    trace ``hash`` of a tuple, and the check runs once, at trace time, anyway."""
    if compiling():
        return _validated_options(*args)
    preset = args[0]
    try:  # the usual call, a preset alone: one dict lookup by its name (~1 µs less than the key below)
        preset_only = type(preset) is str and args[1:] == _NO_OPTIONS
    except Exception:  # an option whose == raises (an array): the checks below say what is wrong
        preset_only = False
    if preset_only:
        o = _PRESET_ONLY.get(preset)
        if o is None:
            o = _PRESET_ONLY[preset] = _validated_options(*args)  # (an unknown preset raises here)
        return o.copy()
    key = (args, tuple(map(type, args)))  # (a flat pair: cheaper to build than (type, v) pairs)
    try:
        hash(key)
    except TypeError:  # e.g. bnpo_bounds given as a list
        return _validated_options(*args)
    return dict(_validated_options_cached(key))


# ------------------------------------------------------------------------ custom op
def _opts(baseline, scale, whiten, eps, std_unbiased, singleton, nan_policy, aggregation, bnpo_low, bnpo_high,
          whiten_eps, whiten_std):
    return dict(baseline=baseline, scale=scale, whiten=whiten, eps=eps, std_unbiased=std_unbiased,
                singleton=singleton, nan_policy=nan_policy, aggregation=aggregation,
                bnpo_bounds=(bnpo_low, bnpo_high), whiten_eps=whiten_eps, whiten_std=whiten_std)


# The op's implementations take its flat arguments (rewards, group_size or 0, cu_groups,
# group_index, reward_weights, response_mask, then the options in _opts' order) and return A in
# the rewards' dtype, [N] or [N, T] with a response mask.
def _advantages_triton(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, *options):
    return _fast("triton", rewards, group_size or None, cu_groups, group_index, reward_weights, response_mask,
                 _opts(*options))


def _advantages_cpp(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, *options):
    return _fast("cpp", rewards, group_size or None, cu_groups, group_index, reward_weights, response_mask,
                 _opts(*options))


def _advantages_reference(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, *options):
    return _reference(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, _opts(*options))


def _advantages_fake(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, *args):
    n = rewards.shape[0]
    if response_mask is not None:
        return rewards.new_empty((n, response_mask.shape[1]))
    return rewards.new_empty((n,))


def _setup_context(ctx, inputs, output):
    rewards, group_size, cu, gi, w, mask = inputs[:6]
    ctx.save_for_backward(rewards, cu, gi, w, mask)
    ctx.group_size = group_size
    ctx.scalars = inputs[6:]


def _backward(ctx, grad):
    """Recomputes the float64 reference with autograd (advantages are rarely differentiated)."""
    rewards, cu, gi, w, mask = ctx.saved_tensors
    o = _opts(*ctx.scalars)
    with torch.enable_grad():
        r = rewards.detach().double().requires_grad_(True)
        out = ref.group_advantages_reference(
            r, group_size=ctx.group_size or None, cu_groups=cu, group_index=gi,
            reward_weights=None if w is None else w.double(), response_mask=mask, **o)
        (g,) = torch.autograd.grad(out, r, grad.double())
    return (g.to(rewards.dtype),) + (None,) * 17


ADVANTAGES = _op.define(_op.OpRecord(
    name="group_advantages", family="advantages",
    schema="(Tensor rewards, int group_size, Tensor? cu_groups, Tensor? group_index, Tensor? reward_weights, "
           "Tensor? response_mask, str baseline, str scale, str whiten, float eps, bool std_unbiased, "
           "str singleton, str nan_policy, str aggregation, float bnpo_low, float bnpo_high, float whiten_eps, "
           "str whiten_std) -> Tensor",
    fake=_advantages_fake, triton=_advantages_triton, cpp=_advantages_cpp, cpp_op="group_advantages",
    reference=_advantages_reference, float64_triton=True, backward=_backward, setup_context=_setup_context,
    differentiable=1))


def _run_eager(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, o):
    """What ADVANTAGES.run does, minus the options' round trip through the op's flat schema (``o``
    already holds _opts' keys and values): the direct launcher calls it; group_advantages'
    eager path without a gradient runs the same lines inlined."""
    backend = ADVANTAGES.backend(rewards)
    if backend == "reference":
        return _reference(rewards, group_size or 0, cu_groups, group_index, reward_weights, response_mask, o)
    return _fast(backend, rewards, group_size or None, cu_groups, group_index, reward_weights, response_mask, o)


# ------------------------------------------------------------------------ public function
@ranged("group_advantages")
def group_advantages(
    rewards: torch.Tensor,
    *,
    group_size: Optional[int] = None,
    cu_groups: Optional[torch.Tensor] = None,
    group_index: Optional[torch.Tensor] = None,
    baseline: Optional[str] = None,
    scale: Optional[str] = None,
    whiten: Optional[str] = None,
    eps: Optional[float] = None,
    std_unbiased: Optional[bool] = None,
    singleton: Optional[str] = None,
    nan_policy: Optional[str] = None,
    reward_weights: Optional[torch.Tensor] = None,
    aggregation: Optional[str] = None,
    response_mask: Optional[torch.Tensor] = None,
    process_group=None,
    preset: Optional[str] = None,
    bnpo_bounds: Optional[Tuple[float, float]] = None,
    whiten_eps: Optional[float] = None,
    whiten_std: Optional[str] = None,
) -> torch.Tensor:
    r"""Group-relative advantages: ``A_i = (r_i - b_i) / (s_i + eps)``, optionally whitened.

    Shapes and dtypes: ``rewards`` is ``[N]`` or ``[N, K]`` (K reward components), float16 /
    bfloat16 / float32 / float64 (statistics accumulate in fp32, fp64 for fp64 inputs). Returns
    ``[N]`` in ``rewards.dtype``, or ``[N, T]`` token-level advantages ``A_i * mask[i, t]`` when
    ``response_mask[N, T]`` (bool or float) is given.

    Layout (exactly one): ``group_size=G`` (N = B*G contiguous), ``cu_groups[B+1]`` (ragged
    offsets, int32/int64) or ``group_index[N]`` (integer ids in any order, verl's ``uid``).

    Options (defaults: ``preset`` if given, else group_mean / group_std / eps 1e-6 / unbiased /
    singleton "zero" / nan_policy "propagate"; **explicit keywords override the preset**):

    - ``baseline``: ``"none"`` | ``"group_mean"`` | ``"leave_one_out"`` ((sum_g r - r_i)/(n_g-1))
      | ``"batch_mean"``.
    - ``scale``: ``"none"`` (s = 1 and eps = 0) | ``"group_std"`` | ``"batch_std"`` (std of the
      raw rewards over the batch, TRL's scale_rewards="batch") | ``"bnpo"`` (needs
      baseline="group_mean": A_i = w_g (s_i - p_g) with Beta weights, ``bnpo_bounds=(lo, hi)``
      min-max scaling, default (0, 1); guard v = 0 -> alpha = beta = 1; one group -> m=0, v=1).
    - ``whiten``: ``"none"`` | ``"sample"`` (A <- (A - mean)/(std + whiten_eps) over the batch)
      | ``"token"`` (each sample weighted by its valid tokens in ``response_mask``, verl's
      masked_whiten: (A - mean) * rsqrt(var + 1e-8)). ``whiten_std`` picks the spread form:
      ``"std_eps"`` (sample default), ``"rsqrt_eps"`` (token default) or ``"rsqrt_clamp"``
      (rsqrt(max(var, whiten_eps)), OpenRLHF); ``whiten_eps`` defaults to eps (sample) or
      1e-8 (token).
    - ``std_unbiased``: n-1 (default) or n, for every std/variance, whitening included.
    - ``singleton`` (groups with one valid row; applies when a group-level statistic is used):
      ``"zero"`` (A = 0) | ``"raw"`` (the group's mean is 0 and its std 1, as verl's loop:
      A = r / (1 + eps) with group_std, A = r without scale; BNPO: p = 0) | ``"nan"``.
    - ``nan_policy``: ``"propagate"`` (a NaN poisons its group, and the batch for batch
      statistics) | ``"omit"`` (NaN rows leave every statistic and get A = 0; with K > 1 a row
      is NaN only when all its components are, components are nansum'd) | ``"raise"``
      (ValueError; inside ``unchecked()`` or torch.compile it behaves as "propagate").
    - ``reward_weights[K]`` and ``aggregation``: ``"sum_then_normalize"`` (weighted sum, then
      normalize; TRL default) or ``"normalize_then_sum"`` (normalize each component in its group,
      weighted sum, then (A - mean)/(std + eps) over the batch; TRL GDPO). With scale="bnpo"
      each component is normalized separately and A is the weighted mean of the K advantages.
    - ``process_group``: batch statistics (batch mean/std, whitening, BNPO's over-group moments)
      are merged over the ranks (all-gather of (count, mean, M2), merged in rank order). Groups
      must not straddle ranks. On the GPU the kernels run with each batch summary all-gathered
      between launches; on the CPU the float64 torch reference runs. Options without batch
      statistics ignore ``process_group``. Not traced by torch.compile.
    - ``preset``: one of :data:`PRESETS` (see docs/advantages.md for the peer functions).

    Identical rewards in a group give exactly 0: every mean is computed shifted by a member of
    its group. Gradients (w.r.t. ``rewards`` only) recompute the float64 reference with autograd.
    N = 0 returns an empty tensor.

    CUDA graphs: inside ``unchecked()`` no layout or option reads a value back to the host
    (the GPU index layout launches over N group slots; tests/test_graph_safety.py). On the CPU
    the C++ index layout sizes its offsets by the number of groups (CPU tensors are never
    graph-captured).
    """
    if (preset is not None and group_size is not None and cu_groups is None and group_index is None
            and baseline is None and scale is None and whiten is None and eps is None and std_unbiased is None
            and singleton is None and nan_policy is None and reward_weights is None and aggregation is None
            and response_mask is None and process_group is None and bnpo_bounds is None and whiten_eps is None
            and whiten_std is None):
        out = _preset_call(rewards, group_size, preset)
        if out is not None:
            return out
    check_tensor(rewards, "rewards", ndim=(1, 2), floating=True)
    if rewards.dim() == 2 and rewards.shape[1] == 0:
        raise ValueError(f"rewards must have at least one reward component, got shape {tuple(rewards.shape)}")
    _check_process_group(process_group)
    device = check_same_device(rewards=rewards, cu_groups=cu_groups, group_index=group_index,
                               reward_weights=reward_weights, response_mask=response_mask)
    o = _options(preset, baseline, scale, whiten, eps, std_unbiased, singleton, nan_policy, aggregation, bnpo_bounds,
                 whiten_eps, whiten_std)
    lo, hi = o["bnpo_bounds"]
    n = rewards.shape[0]
    K = rewards.shape[1] if rewards.dim() == 2 else 1
    check_groups(n, device, group_size=group_size, cu_groups=cu_groups, group_index=group_index)
    if reward_weights is not None:
        check_tensor(reward_weights, "reward_weights", ndim=1, floating=True)
        if reward_weights.numel() != K:
            raise ValueError(f"reward_weights must have one weight per reward component ({K}), "
                             f"got {reward_weights.numel()}")
        if value_checks_enabled() and not bool(((reward_weights >= 0) & torch.isfinite(reward_weights)).all()):
            raise ValueError(f"reward_weights must be finite and >= 0, got {reward_weights.tolist()}")
    if response_mask is not None:
        check_tensor(response_mask, "response_mask", ndim=2)
        if response_mask.dtype.is_complex:
            raise TypeError(f"response_mask must be a bool or real tensor, got {response_mask.dtype}")
        if response_mask.shape[0] != n:
            raise ValueError(f"response_mask must have one row per reward ({n}), "
                             f"got shape {tuple(response_mask.shape)}")
        if (value_checks_enabled() and response_mask.dtype != torch.bool and response_mask.numel()
                and not bool(((response_mask >= 0) & (response_mask == response_mask)).all())):
            raise ValueError("response_mask must hold weights >= 0 (bool, 0/1 or non-negative floats); "
                             "got a negative or NaN entry")
    if o["whiten"] == "token" and response_mask is None:
        raise ValueError("whiten='token' needs response_mask[N, T] (each sample is weighted by its valid tokens)")
    if o["nan_policy"] == "raise" and value_checks_enabled() and n and bool(torch.isnan(rewards).any()):
        raise ValueError("rewards contain NaN and nan_policy='raise'")
    if o["nan_policy"] == "raise":
        o["nan_policy"] = "propagate"

    batch_stats = (o["baseline"] == "batch_mean" or o["scale"] in ("batch_std", "bnpo") or o["whiten"] != "none"
                   or (K > 1 and o["aggregation"] == "normalize_then_sum"))
    if process_group is not None and batch_stats:
        # the kernels, with each batch summary all-gathered between launches (Triton); the C++
        # kernels cannot all-reduce, so CPU tensors run the reference
        if ADVANTAGES.backend(rewards) == "triton":
            return _fast("triton", rewards, group_size, cu_groups, group_index, reward_weights, response_mask, o,
                         process_group=process_group)
        return _reference(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, o,
                          process_group=process_group)
    tensors = (rewards, cu_groups, group_index, reward_weights, response_mask)
    if _backend._eager_mode(tensors) and not _backend._needs_grad(tensors):
        # _run_eager, inlined (two Python calls less on every eager call); float64_triton: the
        # record's backend is select's
        backend = _backend.select(device, cpp_op="group_advantages")
        if backend == "reference":
            return _reference(rewards, group_size or 0, cu_groups, group_index, reward_weights, response_mask, o)
        return _fast(backend, rewards, group_size or None, cu_groups, group_index, reward_weights, response_mask, o)
    return ADVANTAGES(
        rewards, group_size or 0, cu_groups, group_index, reward_weights, response_mask, o["baseline"], o["scale"],
        o["whiten"], o["eps"], o["std_unbiased"], o["singleton"], o["nan_policy"], o["aggregation"], lo, hi,
        o["whiten_eps"], o["whiten_std"])


# the option keywords in the positional order of _validated_options (after the preset)
_OPTION_ORDER = tuple(inspect.signature(_validated_options).parameters)[1:]


@ranged("group_advantages_direct")
def group_advantages_direct(rewards, *, group_size=None, cu_groups=None, group_index=None, reward_weights=None,
                            response_mask=None, preset=None, **options):
    """Thin launcher for hot loops: :func:`group_advantages` without the tensor value checks,
    without the torch.library dispatcher and without autograd (the result never requires grad).
    Same options, validated as by the op (cached: a misspelled or invalid option raises
    TypeError/ValueError). Malformed tensor values (offsets, ids) give unspecified results but
    never an access outside the buffers. Not for torch.compile (use the op).
    """
    if (not options and preset is not None and group_size is not None and cu_groups is None and group_index is None
            and reward_weights is None and response_mask is None):
        out = _preset_call(rewards, group_size, preset)  # (None: not a call it takes, e.g. a gradient)
        if out is not None:
            return out
    unknown = sorted(set(options) - set(_OPTION_ORDER))
    if unknown:  # silently ignoring a misspelled option would run different math than asked
        raise TypeError(f"group_advantages_direct got unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"valid options: {list(_OPTION_ORDER)}")
    o = _options(preset, *(options.get(k) for k in _OPTION_ORDER))
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0
                                   or rewards.shape[0] % group_size):
        raise ValueError(f"group_size={group_size!r} must be a positive int dividing the number of rows of "
                         f"rewards ({rewards.shape[0]})")
    if o["nan_policy"] == "raise":
        o["nan_policy"] = "propagate"
    with torch.no_grad(), unchecked():  # value checks off on every path (the reference's too): one contract
        return _run_eager(rewards, group_size, cu_groups, group_index, reward_weights, response_mask, o)


def _check_process_group(process_group) -> None:
    if process_group is None:
        return
    try:
        from torch.distributed import ProcessGroup
    except ImportError:  # torch built without distributed: nothing can be a process group
        ProcessGroup = ()
    if not isinstance(process_group, ProcessGroup):
        raise TypeError(f"process_group must be a torch.distributed.ProcessGroup or None, "
                        f"got {type(process_group).__name__}")
