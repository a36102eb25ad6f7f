"""The self-check: every kernel path once, on fresh random inputs, against its float64 reference.

``icrm-kernels selfcheck`` (``icrm_kernels/cli.py``) prints :func:`run`'s results; the test suite
runs it on every backend (``tests/test_selfcheck.py``); ``bench/gpu_check.sh`` runs it under
compute-sanitizer, so each case is small (N in the thousands at most).

:data:`CASES` is one table: a small case per kernel path (op, layout or variant, forward and,
for differentiable ops, backward), each through the PUBLIC API (``icrm_kernels.<op>``, looked up
at each call) and compared by :func:`icrm_kernels.testing.assert_matches_reference` with the
float64 reference of ``icrm_kernels/reference``. So there is one tolerance policy, the test
suite's: ``testing.TOLERANCES[dtype]`` (float32: atol 2e-5, rtol 2e-4, the same for outputs and
gradients; float16/bfloat16 would get flash-attention's rule, ``assert_close_to_reference``), and
one error metric: the largest error as a fraction of that tolerance, max |out - ref| /
(atol + rtol |ref|) over every output and gradient of the case (``testing.tolerance_ratio``);
a case passes when assert_matches_reference does, i.e. when that number is <= 1.

The backend of each result is what ``_backend.select`` resolves for the case's device and the
C++ op its CPU path calls: Triton on CUDA, the C++ kernels on the CPU (the torch reference where
the extension lacks the op); ``use_backend(...)`` or ``ICRM_BACKEND`` force one (Triton on the CPU
needs ``TRITON_INTERPRET=1``). On the Triton path the attention cases run both kernel families
(full-row and generic) inside ``icrm_kernels.triton.attention.launch_config(...)``, the launch
settings ``bench/tune_attention.py`` sweeps.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

import icrm_kernels as ik
from icrm_kernels import _backend, testing
from icrm_kernels.reference import advantages as ref_adv
from icrm_kernels.reference import attention as ref_attn
from icrm_kernels.reference import beta as ref_beta
from icrm_kernels.reference import pairwise as ref_pair
from icrm_kernels.reference import special as ref_special

# the families of `icrm-kernels selfcheck --family` (those of `bench`; the special functions are
# part of the Beta family, as in icrm_kernels/__init__.py)
from icrm_kernels._op import FAMILIES  # noqa: E402  (the one family list)

DTYPE = torch.float32  # the inputs' dtype: floating inputs are made in float64, then cast


@dataclass(frozen=True)
class Case:
    """One self-check case. ``inputs(gen)`` makes the inputs on the CPU from the generator
    (floating tensors in float64; :func:`run` casts them to :data:`DTYPE` and moves every tensor
    to the device); ``op(**inputs)`` calls the public op, ``reference(**inputs)`` its float64
    reference; ``grad`` names the inputs to back-propagate a random cotangent to."""

    name: str
    family: str
    cpp_op: str  # the icrm_cpu op the CPU path calls: the backend is _backend.select(device, cpp_op)
    op: Callable
    reference: Callable
    inputs: Callable[[torch.Generator], Dict]
    grad: Tuple[str, ...] = ()
    backends: Optional[Tuple[str, ...]] = None  # only where one of these is selected (None: any)
    attention_variant: Optional[str] = None  # Triton attention kernel family forced: "row" | "generic"

    @property
    def label(self) -> str:
        """The name, tagged fwd+bwd when gradients are compared too."""
        if not self.grad:
            return self.name
        return self.name[:-1] + ",fwd+bwd]" if self.name.endswith("]") else self.name + "[fwd+bwd]"


class Result(NamedTuple):
    name: str
    ok: bool
    err: float  # max error / tolerance over the case's outputs and gradients (<= 1 passes)
    backend: str
    detail: str = ""  # why it failed (the first line of the assertion, with the seed)


# ---------------------------------------------------------------------------- inputs
def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _rand(gen, *shape):
    return torch.rand(*shape, generator=gen, dtype=torch.float64)


def _log_uniform(gen, n, lo, hi):
    return torch.exp(torch.empty(n, dtype=torch.float64).uniform_(lo, hi, generator=gen))


def _ragged_offsets(gen, n, groups):
    """cu[groups+1] over n rows from random cut points: some groups empty or of one row."""
    cuts = torch.randint(0, n + 1, (groups - 1,), generator=gen).sort().values
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])])
    cu[2] = cu[1] + 1  # one singleton group, one empty group at least
    cu[3] = cu[2]
    return cu.clamp(max=n).cummax(0).values.to(torch.int64)


# ---------------------------------------------------------------------------- advantages
def _advantage_case(name, n=1024, *, binary=False, layout="fixed", mask=False, **kw):
    def inputs(gen):
        r = (_rand(gen, n) > 0.5).double() if binary else _randn(gen, n)
        d = dict(rewards=r, **kw)
        if layout == "ragged":
            d["cu_groups"] = _ragged_offsets(gen, n, n // 8)
        elif layout == "index":
            d["group_index"] = torch.randint(0, n // 8, (n,), generator=gen)
        if mask:
            d["response_mask"] = torch.rand(n, 16, generator=gen) > 0.3
        return d

    return Case(f"group_advantages[{name}]", "advantages", "group_advantages",
                lambda **k: ik.group_advantages(**k), ref_adv.group_advantages_reference, inputs, grad=("rewards",))


ADVANTAGES = [
    _advantage_case("verl_grpo,G=8", group_size=8, preset="verl_grpo"),
    _advantage_case("trl_batch,ragged", layout="ragged", preset="trl_batch"),
    _advantage_case("verl_rloo,index", layout="index", preset="verl_rloo"),
    _advantage_case("reinforce_pp,tokens", group_size=4, mask=True, preset="verl_reinforce_pp_baseline"),
    _advantage_case("dler,G=4", group_size=4, preset="dler"),
    _advantage_case("bnpo,G=8", group_size=8, binary=True, preset="bnpo"),
    # the thin launcher for hot loops: the same kernels without checks, dispatcher or autograd
    Case("group_advantages_direct[verl_grpo,ragged]", "advantages", "group_advantages",
         lambda **k: ik.group_advantages_direct(**k), ref_adv.group_advantages_reference,
         lambda gen: dict(rewards=_randn(gen, 1024), cu_groups=_ragged_offsets(gen, 1024, 128), preset="verl_grpo")),
]


# ---------------------------------------------------------------------------- pairwise
def _pairwise_layout(gen, n, layout):
    if layout == "ragged":
        return dict(cu_groups=_ragged_offsets(gen, n, n // 8))
    if layout == "index":
        return dict(group_index=torch.randint(0, n // 8, (n,), generator=gen))
    return dict(group_size=int(layout.split("=")[1]))


def _win_rate_case(layout, temperature, n=240):
    def inputs(gen):
        return dict(scores=_randn(gen, n), temperature=temperature, **_pairwise_layout(gen, n, layout))

    hard = temperature is None  # hard wins are piecewise constant: no gradient to check
    return Case(f"group_win_rate[{layout},{'hard' if hard else 'soft'}]", "pairwise", "pairwise_win_rate",
                lambda **k: ik.group_win_rate(**k), ref_pair.group_win_rate, inputs, grad=() if hard else ("scores",))


def _grebt_case(layout, n=240):
    def inputs(gen):
        return dict(rewards=_randn(gen, n), **_pairwise_layout(gen, n, layout))

    # reduction "sum": per-row gradients O(1) (the mean's are ~1/groups, near TOLERANCES' atol)
    return Case(f"grebt_loss[{layout},sum]", "pairwise", "pairwise_grebt",
                lambda **k: ik.grebt_loss(**k, reduction="sum"),
                lambda **k: ref_pair.grebt_loss(**k, reduction="sum"), inputs, grad=("rewards",))


PAIRWISE = [
    # G=6: several groups per program; G=24 and the index layout: one program per group
    *(_win_rate_case(layout, t) for layout in ("G=6", "G=24", "index") for t in (None, 0.7)),
    *(_grebt_case(layout) for layout in ("G=6", "ragged", "index")),
]


# ---------------------------------------------------------------------------- attention
def _attention_inputs(gen, *, packed, num_heads, d_r=12, d_p=10, d=8, batch=6, max_len=40):
    inp = dict(query=_randn(gen, batch, d_r), w_q=_randn(gen, d_r, d, scale=d_r ** -0.5),
               w_k=_randn(gen, d_p, d, scale=d_p ** -0.5), w_v=_randn(gen, d_p, d, scale=d_p ** -0.5),
               w_o=_randn(gen, d, d_r, scale=d ** -0.5), b_q=_randn(gen, d, scale=0.1), b_k=_randn(gen, d, scale=0.1),
               b_v=_randn(gen, d, scale=0.1), b_o=_randn(gen, d_r, scale=0.1), num_heads=num_heads)
    lens = torch.randint(0, max_len + 1, (batch,), generator=gen)
    lens[1], lens[3] = 0, 1  # an empty row (output 0) and a one-token row
    if packed:
        inp["states"] = _randn(gen, int(lens.sum()), d_p)
        inp["cu_seqlens"] = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)]).to(torch.int32)
    else:
        length = int(lens.max())
        inp["states"] = _randn(gen, batch, length, d_p)
        mask = torch.arange(length)[None, :] >= lens[:, None]  # True = ignore
        mask |= torch.rand(batch, length, generator=gen) < 0.2  # and holes inside the rows
        inp["key_padding_mask"] = mask
    return inp


def _attention_cases(packed, num_heads, variant=None):
    layout = "packed" if packed else "padded"
    tag = f"{layout},H={num_heads}" + ("" if variant is None else f",{variant}")
    backends = ("triton",) if variant is not None else ("cpp", "reference")
    # packed: the states require grad (the backward writes d states); padded: they are detached
    grads = ("query", "w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o") + (("states",) if packed else ())

    def attn_inputs(gen):
        return _attention_inputs(gen, packed=packed, num_heads=num_heads)

    def reward_inputs(gen):
        inp = _attention_inputs(gen, packed=packed, num_heads=num_heads)
        return dict(inp, score_weight=_randn(gen, inp["query"].shape[1]), score_bias=0.25, omega=0.7)

    return [
        Case(f"seq_to_token_attention[{tag}]", "attention", "s2t_attention_core",
             lambda **k: ik.seq_to_token_attention(**k), ref_attn.seq_to_token_attention, attn_inputs, grad=grads,
             backends=backends, attention_variant=variant),
        # forward only: r2m_reward runs under no_grad (train through seq_to_token_attention)
        Case(f"r2m_reward[{tag}]", "attention", "s2t_attention_core", lambda **k: ik.r2m_reward(**k),
             ref_attn.r2m_reward, reward_inputs, backends=backends, attention_variant=variant),
    ]


ATTENTION = [
    # C++ and torch paths: one kernel each for both layouts
    *_attention_cases(True, 2), *_attention_cases(False, 2),
    # Triton: both kernel families for both layouts (several heads with d states take the generic backward)
    *_attention_cases(True, 1, "row"), *_attention_cases(False, 2, "row"),
    *_attention_cases(True, 2, "generic"), *_attention_cases(False, 1, "generic"),
]


# ---------------------------------------------------------------------------- special, beta
def _special_case(name, grad):
    fn = {"digamma": ref_special.digamma, "trigamma": ref_special.trigamma, "lgamma": ref_special.lgamma}[name]

    def inputs(gen):  # x in [1e-4, 1e6], log-uniform: the documented fp32 range
        return dict(x=_log_uniform(gen, 4096, -9.2, 13.8))

    return Case(name, "beta", "special_unary", lambda **k: getattr(ik, name)(**k), fn, inputs, grad=grad)


def _ab(gen, n, lo=-1.0, hi=8.0):
    """alpha, beta log-uniform in [0.37, 3000]. Below ~0.3 the gradients are sums of terms ~1/a^2
    that cancel: fp32 loses more than TOLERANCES' atol there (alpha ~ 0.05 failed beta_stats on
    1.5% of seeds, the ELBO on 0.5%), an error of the dtype, not of a kernel. The special-function
    cases cover the building blocks down to 1e-4."""
    return dict(alpha=_log_uniform(gen, n, lo, hi), beta=_log_uniform(gen, n, lo, hi))


def _logits(gen, n):
    return dict(mean_logit=_randn(gen, n, scale=3.0), conc_logit=_randn(gen, n, scale=3.0))


def _elbo_logits(gen, n):
    """Logits whose alpha = sigmoid(m) tau, beta = sigmoid(-m) tau stay above ~0.15 (see _ab):
    m uniform in [-2, 2], tau = softplus(c) + tau_min with c uniform in [1, 8]."""
    return dict(mean_logit=torch.empty(n, dtype=torch.float64).uniform_(-2, 2, generator=gen),
                conc_logit=torch.empty(n, dtype=torch.float64).uniform_(1, 8, generator=gen))


_ELBO = dict(prior_alpha=1.5, prior_beta=0.7, kl_weight=0.5)

BETA = [
    _special_case("digamma", ("x",)),  # backward: the trigamma kernel
    _special_case("trigamma", ()),  # backward: torch.polygamma(2, x), no kernel
    _special_case("lgamma", ("x",)),  # backward: the digamma kernel
    Case("betaln", "beta", "special_unary", lambda **k: ik.betaln(**k), ref_special.betaln,
         lambda gen: dict(a=_log_uniform(gen, 2048, -9.2, 13.8), b=_log_uniform(gen, 2048, -9.2, 13.8)),
         grad=("a", "b")),
    Case("beta_elbo_loss[sum]", "beta", "beta_elbo",
         lambda **k: ik.beta_elbo_loss(**k, **_ELBO, reduction="sum"),
         lambda **k: ref_beta.beta_elbo_loss(**k, **_ELBO, reduction="sum"),
         lambda gen: dict(_ab(gen, 3000), labels=_rand(gen, 3000), weights=2 * _rand(gen, 3000)),
         grad=("alpha", "beta")),
    Case("beta_elbo_loss_from_logits[sum]", "beta", "beta_elbo",
         lambda **k: ik.beta_elbo_loss_from_logits(**k, tau_min=0.02, reduction="sum"),
         lambda **k: ref_beta.beta_elbo_loss_from_logits(**k, tau_min=0.02, reduction="sum"),
         lambda gen: dict(_elbo_logits(gen, 3000), labels=_rand(gen, 3000)), grad=("mean_logit", "conc_logit")),
    Case("beta_kl", "beta", "beta_elbo", lambda **k: ik.beta_kl(**k, prior_alpha=2.0, prior_beta=0.5),
         lambda **k: ref_beta.beta_kl(**k, prior_alpha=2.0, prior_beta=0.5), lambda gen: _ab(gen, 3000),
         grad=("alpha", "beta")),
    Case("beta_from_logits", "beta", "beta_from_logits", lambda **k: ik.beta_from_logits(**k, tau_min=0.02),
         lambda **k: ref_beta.beta_from_logits(**k, tau_min=0.02), lambda gen: _logits(gen, 3000),
         grad=("mean_logit", "conc_logit")),
    Case("beta_stats", "beta", "beta_stats", lambda **k: tuple(ik.beta_stats(**k)),
         lambda **k: tuple(ref_beta.beta_stats(**k)), lambda gen: _ab(gen, 3000), grad=("alpha", "beta")),
    # forward only (no gradient is defined); the reference is a Python loop: M = 2000
    Case("beta_posterior[index]", "beta", "beta_posterior",
         lambda **k: ik.beta_posterior(**k, num_segments=64, discount=0.97),
         lambda **k: ref_beta.beta_posterior(**k, num_segments=64, discount=0.97),
         lambda gen: dict(outcomes=_rand(gen, 2000), segment_index=torch.randint(0, 64, (2000,), generator=gen))),
    Case("beta_posterior[ragged,weights]", "beta", "beta_posterior",
         lambda **k: ik.beta_posterior(**k, prior_alpha=2.0, prior_beta=0.5),
         lambda **k: ref_beta.beta_posterior(**k, prior_alpha=2.0, prior_beta=0.5),
         lambda gen: dict(outcomes=_rand(gen, 2000), cu_segments=_ragged_offsets(gen, 2000, 64),
                          weights=_rand(gen, 2000))),
]

CASES: List[Case] = ADVANTAGES + PAIRWISE + ATTENTION + BETA


# ---------------------------------------------------------------------------- running
def _place(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=DTYPE) if value.is_floating_point() else value.to(device)
    return value


@contextlib.contextmanager
def _attention_variant(variant):
    """Force the Triton attention kernel family for the block."""
    if variant is None:
        yield
        return
    from icrm_kernels.triton import attention as tri

    with tri.launch_config({kind: {"variant": variant} for kind in ("fwd", "bwd", "r2m")}):
        yield


def check(case: Case, device, seed: Optional[int] = None, backend: Optional[str] = None) -> Result:
    """Run one case: fresh inputs from ``seed`` (a new one when None), compared by
    ``testing.assert_matches_reference``; any exception is a failed case, not an abort."""
    seed = testing.fresh_seed() if seed is None else seed
    device = torch.device(device)
    record: List[Tuple[str, float]] = []
    ok, detail = True, ""
    try:
        backend = backend or _backend.select(device, cpp_op=case.cpp_op)
        gen = torch.Generator().manual_seed(seed)
        inputs = {k: _place(v, device) for k, v in case.inputs(gen).items()}
        with _attention_variant(case.attention_variant if backend == "triton" else None):
            testing.assert_matches_reference(case.op, case.reference, inputs, grad=case.grad, seed=seed,
                                             record=record)
    except Exception as exc:  # noqa: BLE001 - a kernel that raises fails its case; the others still run
        first = (str(exc).strip().splitlines() or [""])[0]
        ok, detail = False, first if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {first}"
    err = max((r for _, r in record), default=0.0)
    if not ok:
        if not record or err <= 1:  # failed before or outside a comparison (an exception, a count)
            err = math.inf
        if f"seed {seed}" not in detail:  # assert_matches_reference's messages name it already
            detail = f"{detail} (seed {seed})"
    return Result(case.label, ok, err, backend or "?", detail)


def cases_for(device, families: Optional[Sequence[str]] = None) -> List[Tuple[Case, str]]:
    """The cases that apply on ``device`` with the backends selected now, each with its backend."""
    device = torch.device(device)
    if families is not None:
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"families must be among {FAMILIES}, got {unknown}")
    out = []
    for case in CASES:
        if families is not None and case.family not in families:
            continue
        try:
            backend = _backend.select(device, cpp_op=case.cpp_op)
        except RuntimeError:  # a forced backend that cannot run here: check() reports it as failed
            backend = None
        if case.backends is not None and backend is not None and backend not in case.backends:
            continue
        out.append((case, backend))
    return out


def run(device, families: Optional[Sequence[str]] = None, *, seed: Optional[int] = None,
        on_result: Optional[Callable[[Result], None]] = None) -> List[Result]:
    """Every case of :data:`CASES` that applies on ``device`` (optionally only ``families``), on
    fresh random inputs (each case its own seed; pass ``seed`` to give every case that seed, e.g.
    the one a failure printed). ``on_result`` is called with each result as it comes (the CLI
    prints it, so a crash under compute-sanitizer shows which case was running)."""
    results = []
    for case, backend in cases_for(device, families):
        res = check(case, device, seed=seed, backend=backend)
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results


def format_result(res: Result) -> str:
    line = f"  {'ok  ' if res.ok else 'FAIL'} {res.name:50s} backend={res.backend:9s} max err/tol {res.err:.2e}"
    return line + (f"\n       {res.detail}" if res.detail else "")
