"""Sweep the launch configurations of the R2M attention Triton kernels at the target shape
of docs/attention.md#speed-targets.

    python3 bench/tune_attention.py                 # full sweep, stops timing new configs after --budget s
    python3 bench/tune_attention.py --quick         # defaults + a few row configs (smoke test)

Times the three kernel kinds the ops launch, straight through the launchers of
``icrm_kernels.triton.attention`` (kernel + its combine + the launcher's small torch ops, no
projections): ``fwd`` (s2t_core_fwd), ``bwd`` (s2t_core_bwd, states detached: no dx) and ``r2m``
(r2m_core). Inputs: B=512 sequences, ragged L 512-1536 (the benchmark's seed), D_p=4096, one
head, bf16 states (random), fp32 q̃ / u / dc scaled so the scores are O(1). Timing: the
harness's CUDA-event median with L2 flushed before every repeat. ``%copy`` = one read of the
states (T·D_p·2 bytes) over the time, as a fraction of the measured copy bandwidth.

Every variant's output is compared with the generic kernel at its default configuration
(``rel``: max |diff| / max |ref|), and that baseline with an fp32 torch computation on the first
sequences (printed once). Configurations are set through ``attention.launch_config(...)`` (no code
edits); the script prints the best one per kind as a dict to paste into the launcher defaults.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icrm_kernels.benchmarks import harness  # noqa: E402
from icrm_kernels.triton import attention as A  # noqa: E402


def make_problem(b, d, device, seed=1234):
    gen = torch.Generator().manual_seed(seed)
    lo = 512 if device.type == "cuda" else 3
    lens = torch.randint(lo, 3 * lo + 1, (b,), generator=gen)
    cu = torch.zeros(b + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    t = int(cu[-1])
    torch.manual_seed(seed)
    x = torch.randn(t, d, device=device, dtype=torch.bfloat16)
    q = torch.randn(b, 1, d, device=device) * d ** -0.5
    u = torch.randn(1, d, device=device) * d ** -0.5
    dc = torch.randn(b, 1, d, device=device)
    return dict(x=x, cu=cu.to(device), q=q, u=u, dc=dc, lens=lens.tolist(), T=t)


def torch_check(p, n=4):
    """fp32 torch c / lse / y of the first n sequences."""
    out = []
    cu = p["cu"].tolist()
    for i in range(min(n, len(cu) - 1)):
        x = p["x"][cu[i]:cu[i + 1]].float()
        s = x @ p["q"][i, 0]
        w = torch.softmax(s, 0)
        out.append((w @ x, torch.logsumexp(s, 0), (w @ x) @ p["u"][0]))
    return out


def runner(kind, p, c=None, lse=None):
    if kind == "fwd":
        return lambda: A.s2t_core_fwd(p["q"], p["x"], p["cu"], None)
    if kind == "bwd":
        return lambda: A.s2t_core_bwd(p["dc"], p["q"], p["x"], p["cu"], None, c, lse, False)
    return lambda: A.r2m_core(p["q"], p["u"], p["x"], p["cu"], None)


def first(out):
    return out[0] if isinstance(out, tuple) else out


def variants(quick):
    """(name, override) in the order they are timed: defaults first, then row, then generic."""
    out = [("default", {}), ("generic-default", {"variant": "generic"})]
    rows = [(2, 8), (4, 8), (4, 16), (2, 16), (1, 4), (1, 8)]
    if quick:
        rows = rows[:2]
    for bl, w in rows:
        for pps in ((8,) if quick else (2, 4, 8, 16)):
            out.append((f"row L{bl} w{w} pps{pps}", {"variant": "row", "BLOCK_L": bl, "num_warps": w,
                                                   "programs_per_sm": pps}))
    if not quick:
        for bl, bd, w in ((8, 256, 8), (4, 256, 4), (16, 128, 4), (16, 256, 8), (8, 512, 8)):
            out.append((f"generic L{bl} D{bd} w{w}", {"variant": "generic", "BLOCK_L": bl, "BLOCK_D": bd,
                                                      "num_warps": w}))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="defaults + 2 row configs")
    ap.add_argument("--budget", type=float, default=230.0, help="stop starting new configs after this many seconds")
    ap.add_argument("--no-e2e", action="store_true", help="skip timing the public ops at the end")
    ap.add_argument("--kinds", default="fwd,bwd,r2m")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cpu = smoke test of the script under TRITON_INTERPRET=1")
    args = ap.parse_args()
    t_start = time.perf_counter()
    dev = torch.device(args.device)
    print(f"{harness.device_name(args.device)} | {harness.library_versions()}")
    copy_bw = harness.measured_copy_bandwidth(dev) or 1e12  # cpu smoke test: a nominal 1 TB/s
    p = make_problem(args.batch, args.dim, dev)
    nbytes = p["x"].numel() * p["x"].element_size()
    print(f"B={args.batch} T={p['T']} D_p={args.dim} bf16: states {nbytes / 1e9:.2f} GB; copy bw {copy_bw / 1e12:.2f} TB/s; "
          f"one-read floor {nbytes / copy_bw * 1e3:.3f} ms")
    flush = torch.empty(64 * 1024 * 1024 if dev.type == "cuda" else 1, dtype=torch.int32, device=dev)

    # baseline outputs (generic kernel, default config) and a torch check of it
    with A.launch_config({"fwd": {"variant": "generic"}, "bwd": {"variant": "generic"}, "r2m": {"variant": "generic"}}):
        c_ref, lse_ref = A.s2t_core_fwd(p["q"], p["x"], p["cu"], None)
        ref = {"fwd": c_ref, "bwd": first(runner("bwd", p, c_ref, lse_ref)()), "r2m": first(runner("r2m", p)())}
        chk = torch_check(p)
        err_c = max(float((ref["fwd"][i, 0] - cc).abs().max() / cc.abs().max()) for i, (cc, _, _) in enumerate(chk))
        err_y = max(float((ref["r2m"][i, 0] - yy).abs() / yy.abs().clamp_min(1e-6)) for i, (_, _, yy) in enumerate(chk))
        print(f"generic-default vs fp32 torch (first {len(chk)} seqs): c rel {err_c:.2e}, r2m y rel {err_y:.2e}")

    rows, best = [], {}
    kinds = [k for k in args.kinds.split(",") if k]
    print(f"{'kind':4s} {'variant':26s} {'tpp':>5s} {'ms':>8s} {'%copy':>6s} {'rel':>9s}")
    skipped = 0
    for name, ov in variants(args.quick):
        for kind in kinds:
            if time.perf_counter() - t_start > args.budget:
                skipped += 1
                continue
            with A.launch_config({kind: ov}, reset=True):
                fn = runner(kind, p, c_ref, lse_ref)
                try:
                    out = first(fn())
                    rel = float((out - ref[kind]).abs().max() / ref[kind].abs().max().clamp_min(1e-30))
                    if dev.type == "cuda":
                        med, _, _ = harness._time_cuda(fn, args.repeats, flush, warmup=2, budget_s=1.5)
                    else:
                        med, _, _ = harness._time_cpu(fn, 1, warmup=0)
                except Exception as exc:  # a config that does not compile or launch must not stop the sweep
                    print(f"{kind:4s} {name:26s} FAILED {type(exc).__name__}: {str(exc)[:100]}")
                    continue
                cfg = A._config(kind, 1, args.dim, 2)
                tpp = A._tokens_per_program(p["T"], dev, cfg)
            frac = nbytes / med / copy_bw
            bad = rel > 2e-3
            print(f"{kind:4s} {name:26s} {tpp:5d} {med * 1e3:8.3f} {frac * 100:5.1f}% {rel:9.2e}{'  MISMATCH' if bad else ''}",
                  flush=True)
            rows.append((kind, name, ov, med, frac, rel))
            if not bad and (kind not in best or med < best[kind][3]):
                best[kind] = (kind, name, ov, med, frac, rel)
    if skipped:
        print(f"(time budget reached: {skipped} kind x config timings skipped; raise --budget or use --kinds)")
    print("\nbest per kind:")
    for kind in kinds:
        if kind in best:
            _, name, ov, med, frac, _ = best[kind]
            dflt = next((r for r in rows if r[0] == kind and r[1] == "default"), None)
            gain = f", {dflt[3] / med:.2f}x vs default" if dflt else ""
            print(f"  {kind}: {name}  {med * 1e3:.3f} ms = {frac * 100:.1f}% of copy bw{gain}")
    print("launch_config overrides =", {k: v[2] for k, v in best.items()})
    if {"fwd", "bwd"} <= set(best):
        fb = best["fwd"][3] + best["bwd"][3]
        print(f"fwd + bwd kernels: {fb * 1e3:.3f} ms = {fb * copy_bw / nbytes:.2f} reads of the states (target <= 2.5)")
    if not args.no_e2e:
        end_to_end(p, {k: v[2] for k, v in best.items()}, flush, copy_bw, nbytes, args, dev)
    print(f"total {time.perf_counter() - t_start:.0f} s")


def end_to_end(p, override, flush, copy_bw, nbytes, args, dev):
    """The public ops (projections + kernels + autograd) at the target shape, defaults vs best."""
    import icrm_kernels
    from icrm_kernels import r2m_reward, seq_to_token_attention, unchecked

    d_p, d = args.dim, args.dim // 2
    b = p["q"].shape[0]
    torch.manual_seed(0)
    bf = dict(device=dev, dtype=torch.bfloat16)
    query = torch.randn(b, d_p, **bf)
    w = dict(w_q=torch.randn(d_p, d, **bf) * d_p ** -0.5, w_k=torch.randn(d_p, d, **bf) * d_p ** -0.5,
             w_v=torch.randn(d_p, d, **bf) * d_p ** -0.5, w_o=torch.randn(d, d_p, **bf) * d ** -0.5)
    sw = torch.randn(d_p, **bf) * d_p ** -0.5
    params = [query.requires_grad_(True)] + [v.requires_grad_(True) for v in w.values()]
    cot = torch.randn(b, d_p, **bf)

    def fwd():
        with torch.no_grad(), unchecked():
            return seq_to_token_attention(query, p["x"], **w, cu_seqlens=p["cu"])

    def fwd_bwd():
        with unchecked():
            out = seq_to_token_attention(query, p["x"], **w, cu_seqlens=p["cu"])
        return torch.autograd.grad(out, params, cot)

    def reward():
        with torch.no_grad(), unchecked():
            return r2m_reward(query, p["x"], **w, score_weight=sw, omega=0.7, cu_seqlens=p["cu"])

    print(f"\nend to end (public ops, B={b}, d={d}, bf16; states detached):")
    for label, ov in (("defaults", {}), ("best", override)):
        try:
            with A.launch_config(dict(ov), reset=True), icrm_kernels.use_backend("triton"):
                for name, fn, target in (("s2t_attention fwd", fwd, "target >= 85%"),
                                         ("s2t_attention fwd+bwd", fwd_bwd, "target <= 2.5 reads"),
                                         ("r2m_reward", reward, "target >= 90%")):
                    if dev.type == "cuda":
                        med, _, _ = harness._time_cuda(fn, args.repeats, flush, warmup=2, budget_s=1.5)
                    else:
                        med, _, _ = harness._time_cpu(fn, 1, warmup=0)
                    print(f"  {label:8s} {name:22s} {med * 1e3:8.3f} ms = {nbytes / med / copy_bw * 100:5.1f}% of copy bw"
                          f" = {med * copy_bw / nbytes:.2f} reads  ({target})", flush=True)
        except Exception as exc:
            print(f"  {label}: FAILED {type(exc).__name__}: {str(exc)[:200]}")


if __name__ == "__main__":
    main()
