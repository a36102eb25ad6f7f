"""Where does beta_elbo_loss fwd+bwd spend its time on the GPU? (bench/NOTES.md §7.2: the H100 run
of 2026-11-26 measured ~0.5 ms a call at N = 1M and ~0.44 ms at 4M: a size-independent ~0.4 ms.)

    python3 bench/profile_elbo.py            # on a GPU: N = 1M, 4M, 16M
    python3 bench/profile_elbo.py --quick    # CPU smoke test at a tiny N

For each form (direct parameters, from logits) and N, prints on one line:
- ``kernel``: device time of the fused ELBO kernel alone (CUDA-graph replay, L2 flushed);
- ``call``: median CUDA-event time of one eager fwd+bwd call under ``unchecked()`` (the
  benchmark's ``median`` column), and ``loop``: wall time per call of 50 back-to-back calls;
then a torch.profiler table of 5 calls at N = 1M per form (the top CPU and CUDA entries), so a
fixed cost shows as a named op or a gap.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icrm_kernels import _checks  # noqa: E402
from icrm_kernels.benchmarks import harness  # noqa: E402
from icrm_kernels.ops.beta import _lnbeta, beta_elbo_loss, beta_elbo_loss_from_logits  # noqa: E402


def _inputs(n, device, logits):
    if logits:
        x1 = torch.randn(n, device=device).requires_grad_()
        x2 = (torch.randn(n, device=device) * 2 + 3).requires_grad_()
    else:
        x1 = torch.exp(torch.empty(n, device=device).uniform_(-2, 6)).requires_grad_()
        x2 = torch.exp(torch.empty(n, device=device).uniform_(-2, 6)).requires_grad_()
    return x1, x2, torch.rand(n, device=device)


def _call(x1, x2, y, logits):
    op = beta_elbo_loss_from_logits if logits else beta_elbo_loss

    def run():
        with _checks.unchecked():
            loss = op(x1, x2, y)
        return torch.autograd.grad(loss, (x1, x2))

    return run


def _event_median(fn, reps=30):
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    return statistics.median(times)


def _loop(fn, device, reps=50):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def _kernel_only(x1, x2, y, logits, device):
    from icrm_kernels.triton import beta as tri

    a, b = x1.detach(), x2.detach()
    n = a.numel()
    fn = lambda: tri.elbo(a, b, y, None, 1.0, 1.0, _lnbeta(1.0, 1.0), 1.0, 1e-2, logits, True, True,  # noqa: E731
                          1.0 / n, 1.0 / n)
    fn()
    flush = torch.empty(64 << 20, dtype=torch.int32, device=device)
    return harness._time_cuda_graph(fn, 30, flush)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    sizes = [1 << 20, 1 << 22, 1 << 24] if on_gpu and not args.quick else [4096]
    print(f"profile_elbo on {harness.device_name(str(device))}; {harness.library_versions()}")
    print(f"{'form':12s} {'N':>9s} {'kernel us':>10s} {'call us':>9s} {'loop us':>9s}")
    for logits in (False, True):
        for n in sizes:
            x1, x2, y = _inputs(n, device, logits)
            fn = _call(x1, x2, y, logits)
            fn()
            kern = _kernel_only(x1, x2, y, logits, device) if on_gpu else float("nan")
            call = _event_median(fn) if on_gpu else float("nan")
            loop = _loop(fn, device)
            print(f"{'logits' if logits else 'direct':12s} {n:9d} {kern * 1e6:10.1f} {call * 1e6:9.1f} "
                  f"{loop * 1e6:9.1f}", flush=True)
    # host time per layer (wall time per call of back-to-back calls: host-bound at these sizes)
    x1, x2, y = _inputs(sizes[0], device, False)
    from icrm_kernels.triton import beta as tri

    a, b = x1.detach(), x2.detach()
    n = a.numel()
    lnb = _lnbeta(1.0, 1.0)
    layers = [
        ("torch.empty x3", lambda: (torch.empty(n, device=device), torch.empty(n, device=device),
                                    torch.empty(n, device=device))),
        ("triton launcher: tri.elbo", None if not on_gpu else lambda: tri.elbo(a, b, y, None, 1.0, 1.0, lnb, 1.0, 1e-2, False, True, True,
                                                       1.0 / n, 1.0 / n)),
        ("op forward, no grad", lambda: beta_elbo_loss(a, b, y)),
        ("op forward, grad", lambda: beta_elbo_loss(x1, x2, y)),
        ("op fwd+bwd", _call(x1, x2, y, False)),
        ("torch (x1*x2).sum() fwd+bwd", lambda: torch.autograd.grad((x1 * x2).sum(), (x1, x2))),
    ]
    print("\nhost time per call (loop, unchecked, N = %d)" % n)
    for label, fn in layers:
        if fn is None:
            continue
        with _checks.unchecked():
            print(f"  {label:32s} {_loop(fn, device, reps=200) * 1e6:8.1f} us", flush=True)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    for logits in (False, True):
        x1, x2, y = _inputs(sizes[0], device, logits)
        fn = _call(x1, x2, y, logits)
        for _ in range(3):
            fn()
        if on_gpu:
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(5):
                fn()
            if on_gpu:
                torch.cuda.synchronize()
        ka = prof.key_averages()
        print(f"\n== {'logits' if logits else 'direct'} N={sizes[0]}, 5 calls: by CPU total")
        print(ka.table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=48))
        if on_gpu:
            print(f"== {'logits' if logits else 'direct'}: by device total")
            print(ka.table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    sys.exit(main())
