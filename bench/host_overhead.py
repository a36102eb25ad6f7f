"""Host (Python) time of each op's Triton path, with every kernel launch replaced by a no-op.

Eager calls of the small ops cost far more on the host than on the GPU (bench/NOTES.md: a
group_advantages call at N = 64K is ~7 µs of device time and ~95 µs eager). This script
measures the package's own share of that host time on any machine, GPU or not: it runs the
Triton path on CPU tensors under Triton's interpreter with each ``*_kernel`` of
``icrm_kernels.triton.*`` swapped for a launch that does nothing, so what is timed is the op's
validation, layout, allocation and dispatch code. Triton's own launcher cost (per launch, on
top) and the CUDA launch latency are not included. Outputs are garbage: timing only.

    python bench/host_overhead.py            # median µs per call, one line per op
"""
import os
import statistics
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
# time the checkout this script lives in, not whatever icrm_kernels the environment installed
# (``python bench/host_overhead.py`` puts bench/, not the repository root, first on sys.path)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import icrm_kernels as ik  # noqa: E402
from icrm_kernels import _checks  # noqa: E402


class _NullLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _null_kernels():
    import importlib

    from icrm_kernels.triton import KERNEL_MODULES

    for fam in KERNEL_MODULES:
        mod = importlib.import_module(f"icrm_kernels.triton.{fam}")
        for name in dir(mod):
            if name.endswith("_kernel"):
                setattr(mod, name, _NullLaunch())


def _median_us(fn, repeats=2000, warmup=50):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def cases():
    g = torch.Generator().manual_seed(0)
    n = 4096
    r = torch.randn(n, generator=g)
    mask = torch.rand(n // 8, 16, generator=g) > 0.2
    a = torch.rand(n, generator=g) + 0.5
    b = torch.rand(n, generator=g) + 0.5
    y = torch.rand(n, generator=g)
    cu = torch.arange(0, n + 1, 64)
    d_r, d_p, d = 16, 32, 16
    lens = torch.tensor([0, 40, 70, 100, 128])
    attn = dict(query=torch.randn(4, d_r), states=torch.randn(128, d_p), w_q=torch.randn(d_r, d),
                w_k=torch.randn(d_p, d), w_v=torch.randn(d_p, d), w_o=torch.randn(d, d_r), cu_seqlens=lens)
    sw = torch.randn(d_r)
    ag, bg, rg = a.clone().requires_grad_(True), b.clone().requires_grad_(True), r.clone().requires_grad_(True)
    qg = attn["query"].clone().requires_grad_(True)
    attn_g = dict(attn, query=qg)

    def fwd_bwd(loss_fn, leaves):
        return lambda: torch.autograd.grad(loss_fn(), leaves)

    return {
        "group_advantages verl_grpo": lambda: ik.group_advantages(r, group_size=8, preset="verl_grpo"),
        "group_advantages trl_batch": lambda: ik.group_advantages(r, group_size=8, preset="trl_batch"),
        "group_advantages tokens": lambda: ik.group_advantages(r[: n // 8], group_size=8, preset="verl_grpo",
                                                                response_mask=mask),
        "group_win_rate soft": lambda: ik.group_win_rate(r, group_size=8, temperature=1.0),
        "grebt_loss (fwd)": lambda: ik.grebt_loss(r, group_size=8),
        "beta_elbo_loss (fwd)": lambda: ik.beta_elbo_loss(a, b, y),
        "beta_posterior": lambda: ik.beta_posterior(y, cu_segments=cu, discount=0.9),
        "beta_stats": lambda: ik.beta_stats(a, b),
        "digamma": lambda: ik.digamma(a),
        "betaln": lambda: ik.betaln(a, b),
        "beta_from_logits": lambda: ik.beta_from_logits(y, r),
        "seq_to_token_attention (fwd)": lambda: ik.seq_to_token_attention(**attn),
        "r2m_reward": lambda: ik.r2m_reward(**attn, score_weight=sw, omega=0.6),
        "beta_elbo_loss fwd+bwd": fwd_bwd(lambda: ik.beta_elbo_loss(ag, bg, y), (ag, bg)),
        "grebt_loss fwd+bwd": fwd_bwd(lambda: ik.grebt_loss(rg, group_size=8), (rg,)),
        "seq_to_token_attention fwd+bwd": fwd_bwd(lambda: ik.seq_to_token_attention(**attn_g).sum(), (qg,)),
    }


class _BareFunction(torch.autograd.Function):
    """The least an eager fwd+bwd through one Python autograd node costs: a forward that
    returns a ready 0-d tensor and saves one gradient per input, a backward of one multiply
    per input. The ELBO and GREBT eager paths have this shape (one node, gradients saved in
    forward); their host time cannot go below this line on the same machine."""

    @staticmethod
    def forward(ctx, *args):  # args: the inputs, then (ready total, saved gradients)
        total, grads = args[-1]
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad):
        return tuple(g * grad for g in ctx.saved_tensors) + (None,)


def floors():
    """Torch's own autograd cost for the fwd+bwd cases' shapes (no package code)."""
    a = torch.rand(4096).requires_grad_(True)
    b = torch.rand(4096).requires_grad_(True)
    ga, gb, total = torch.rand(4096), torch.rand(4096), torch.zeros(())
    return {
        "bare Function, 1 input": lambda: torch.autograd.grad(_BareFunction.apply(a, (total, (ga,))), (a,)),
        "bare Function, 2 inputs": lambda: torch.autograd.grad(_BareFunction.apply(a, b, (total, (ga, gb))), (a, b)),
        "grad(a.sum())": lambda: torch.autograd.grad(a.sum(), (a,)),
        "grad((a * b).sum())": lambda: torch.autograd.grad((a * b).sum(), (a, b)),
    }


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2000, help="timed calls per op (default 2000)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    _null_kernels()
    print(f"host time per call, kernels replaced by no-ops (torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs); median of {args.repeats} calls")
    warmup = min(50, args.repeats)
    with ik.use_backend("triton"):
        for name, fn in cases().items():
            checked = _median_us(fn, args.repeats, warmup)
            with _checks.unchecked():
                quiet = _median_us(fn, args.repeats, warmup)
            print(f"  {name:32s} {checked:7.1f} µs   unchecked() {quiet:7.1f} µs")
    print("autograd floor (torch only, same machine): fwd+bwd through torch.autograd.grad")
    for name, fn in floors().items():
        print(f"  {name:32s} {_median_us(fn, args.repeats, warmup):7.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
