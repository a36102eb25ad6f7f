"""Benchmarks of group_advantages against verl (loop and vectorized), TRL and our reference.

GPU (non-quick): N = 4K, 64K, 1M at G = 8 (GRPO preset), ragged and unsorted-index at 64K,
trl_batch, dler and bnpo at 64K, token broadcast T = 1024 at N = 4K and T = 4096 at N = 8K;
the verl loop only up to 64K (it is slow).
CPU: N = 1M, G = 8 (quick: 64K). bytes = rewards read + advantages written (+ mask read and
token output written).
"""
from __future__ import annotations

import torch

from icrm_kernels import group_advantages, group_advantages_direct, use_backend
from icrm_kernels.benchmarks import baselines_advantages as peers
from icrm_kernels.benchmarks.harness import Case, compiled, compiled_peers, hot_loop

FAMILY = "grouped"

# Peer code through torch.compile (harness.compiled: one graph per shape), made once per process
_COMPILED = {}


def _compiled(fn):
    if fn not in _COMPILED:
        _COMPILED[fn] = compiled(fn)
    return _COMPILED[fn]


def _copy_case(op, shape, r, nbytes, dev, size=None):
    """The floor: a plain copy of the rewards (read N, write N), as a reference row."""
    dst = torch.empty_like(r)
    return Case(FAMILY, op, "torch copy (floor)", shape, size or r.numel(), nbytes, lambda: dst.copy_(r), dev,
                note="dst.copy_(rewards): the memory floor of any op that reads and writes N values")


def _rewards(n, device):
    return torch.rand(n, device=device) * 2 - 1  # random, never zeros


def _grpo_cases(n, g, device, *, loop=True, ragged=False, index=False, compile_peers=True):
    """``compile_peers=False`` leaves the compiled peers out (each costs a compile: the GPU run
    times them at the shapes of the targets only)."""
    dev = str(device)
    comp = compile_peers and compiled_peers(device)
    r = _rewards(n, device)
    shape = f"N={n} G={g}" + (" ragged" if ragged else "") + (" unsorted ids" if index else "")
    nbytes = 2 * n * r.element_size()
    op = "group_advantages[verl_grpo]"
    if ragged:
        sizes = torch.randint(g // 2, g + g // 2 + 1, (n // g + 1,))
        cu = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        cu = cu[cu < n]
        cu = torch.cat([cu, torch.tensor([n])]).to(device)
        layout = dict(cu_groups=cu)
        ids = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=device), cu[1:] - cu[:-1])
    elif index:
        ids = torch.randperm(n, device=device) // g
        layout = dict(group_index=ids)
    else:
        ids = torch.arange(n, device=device) // g
        layout = dict(group_size=g)
    cases = [Case(FAMILY, op, "icrm", shape, n, nbytes, lambda: group_advantages(r, preset="verl_grpo", **layout), dev)]
    if not ragged and not index:  # the launcher without validation or dispatch: the floor of the Python path
        cases.append(Case(FAMILY, op, "icrm-direct", shape, n, nbytes,
                          lambda: group_advantages_direct(r, preset="verl_grpo", **layout), dev))
    cases.append(Case(FAMILY, op, "verl-vectorized", shape, n, nbytes,
                      lambda: peers.verl_grpo_vectorized(r, ids), dev))
    if comp:
        cases.append(Case(FAMILY, op, "verl-vectorized-compiled", shape, n, nbytes,
                          lambda: _compiled(peers.verl_grpo_vectorized)(r, ids), dev,
                          note="graph break at int(ids.max()): two graphs"))
    if not ragged and not index:
        rpf = r.unsqueeze(1)
        w = torch.ones(1, device=device)
        cases.append(Case(FAMILY, op, "trl", shape, n, nbytes, lambda: peers.trl_grpo(rpf, w, g, "group"), dev))
        if comp:
            cases.append(Case(FAMILY, op, "trl-compiled", shape, n, nbytes,
                              lambda: _compiled(peers.trl_grpo)(rpf, w, g, "group"), dev))
            cases.append(Case(FAMILY, op, "view-compiled", shape, n, nbytes,
                              lambda: _compiled(peers.grpo_view)(r, g), dev,
                              note="torch.compile of r.view(-1, G): (x - mean) / (std + eps), fixed G only"))
        cases.append(_copy_case(op, shape, r, nbytes, dev))
    if loop and n <= 65536:
        ids_list = ids.tolist()
        rc = r.cpu()
        cases.append(Case(FAMILY, op, "verl-loop", shape, n, nbytes, lambda: peers.verl_grpo_loop(rc, ids_list), dev,
                          note="CPU tensors and Python lists, as verl's driver runs it"))
    if n <= 65536:
        def _ref():
            with use_backend("reference"):
                return group_advantages(r, preset="verl_grpo", **layout)
        cases.append(Case(FAMILY, op, "icrm-ref", shape, n, nbytes, _ref, dev))
    return cases


def _trl_cases(n, g, device, scale):
    """TRL's scale_rewards="group" / "batch": the trl_group / trl_batch preset against TRL's code,
    eager and compiled (and, for "group", the hand-fused view peer compiled), and the copy."""
    dev = str(device)
    r = _rewards(n, device)
    rpf = r.unsqueeze(1)
    w = torch.ones(1, device=device)
    shape = f"N={n} G={g}"
    nbytes = 2 * n * r.element_size()
    preset = f"trl_{scale}"
    op = f"group_advantages[{preset}]"
    cases = [Case(FAMILY, op, "icrm", shape, n, nbytes, lambda: group_advantages(r, group_size=g, preset=preset), dev),
             Case(FAMILY, op, "trl", shape, n, nbytes, lambda: peers.trl_grpo(rpf, w, g, scale), dev)]
    if compiled_peers(device):
        cases.append(Case(FAMILY, op, "trl-compiled", shape, n, nbytes,
                          lambda: _compiled(peers.trl_grpo)(rpf, w, g, scale), dev))
        if scale == "group":
            cases.append(Case(FAMILY, op, "view-compiled", shape, n, nbytes,
                              lambda: _compiled(peers.grpo_view)(r, g, 1e-4), dev,
                              note="torch.compile of r.view(-1, G): (x - mean) / (std + 1e-4)"))
    return cases + [_copy_case(op, shape, r, nbytes, dev)]


def _whiten_and_bnpo_cases(n, g, device):
    dev = str(device)
    r = _rewards(n, device)
    b = (r > 0).float()
    shape = f"N={n} G={g}"
    nbytes = 2 * n * r.element_size()

    def _bnpo_ref():
        with use_backend("reference"):
            return group_advantages(b, group_size=g, preset="bnpo")

    bnpo_peers = [Case(FAMILY, "group_advantages[bnpo]", "torch-eager", shape, n, nbytes,
                       lambda: peers.bnpo_view(b, g), dev, note="fixed-G BNPO written with view(B, G)")]
    if compiled_peers(device):
        bnpo_peers.append(Case(FAMILY, "group_advantages[bnpo]", "torch-compiled", shape, n, nbytes,
                               lambda: _compiled(peers.bnpo_view)(b, g), dev))
    # the verl_grpo kernel on the same binary rewards: BNPO's target is within 2x of it
    bnpo_peers.append(Case(FAMILY, "group_advantages[bnpo]", "verl_grpo kernel (same data)", shape, n, nbytes,
                           lambda: group_advantages(b, group_size=g, preset="verl_grpo"), dev))

    return [
        Case(FAMILY, "group_advantages[dler]", "icrm", shape, n, nbytes,
             lambda: group_advantages(r, group_size=g, preset="dler"), dev),
        Case(FAMILY, "group_advantages[dler]", "torch-eager", shape, n, nbytes, lambda: peers.dler_eager(r, g), dev),
    ] + ([Case(FAMILY, "group_advantages[dler]", "torch-compiled", shape, n, nbytes,
               lambda: _compiled(peers.dler_eager)(r, g), dev)] if compiled_peers(device) else []) + [
        Case(FAMILY, "group_advantages[bnpo]", "icrm", shape, n, nbytes,
             lambda: group_advantages(b, group_size=g, preset="bnpo"), dev),
        Case(FAMILY, "group_advantages[bnpo]", "icrm-ref", shape, n, nbytes, _bnpo_ref, dev),
    ] + bnpo_peers


def _token_cases(n, g, t, device):
    dev = str(device)
    r = _rewards(n, device)
    mask = torch.rand(n, t, device=device) > 0.2
    shape = f"N={n} G={g} T={t}"
    nbytes = n * r.element_size() + n * t * (1 + r.element_size()) + n * r.element_size() * 0
    op = "group_advantages[verl_grpo,tokens]"
    ids = torch.arange(n, device=device) // g
    return [
        Case(FAMILY, op, "icrm", shape, n * t, nbytes,
             lambda: group_advantages(r, group_size=g, preset="verl_grpo", response_mask=mask), dev),
        Case(FAMILY, op, "verl-vectorized", shape, n * t, nbytes,
             lambda: peers.verl_grpo_vectorized(r, ids).unsqueeze(-1) * mask, dev),
    ] + ([Case(FAMILY, op, "view-compiled", shape, n * t, nbytes,
               lambda: _compiled(_tokens_view)(r, mask, g), dev,
               note="torch.compile of grpo_view(r, G)[:, None] * mask")] if compiled_peers(device) else [])


def _tokens_view(r, mask, g):
    return peers.grpo_view(r, g).unsqueeze(-1) * mask


def cases(device, quick=False):
    device = torch.device(device)
    out = []
    if device.type == "cuda":
        sizes = [4096, 65536] if quick else [4096, 65536, 1 << 20]
        for n in sizes:
            out += _grpo_cases(n, 8, device, compile_peers=n >= 65536)
        out += _grpo_cases(65536, 8, device, ragged=True)
        out += _grpo_cases(65536, 8, device, index=True)
        out += _trl_cases(65536, 8, device, "batch")
        if not quick:
            out += _grpo_cases(65536, 64, device, loop=False, compile_peers=False)
            out += _grpo_cases(65536, 4, device, loop=False, compile_peers=False)
        out += _whiten_and_bnpo_cases(65536, 8, device)
        out += _token_cases(4096, 8, 1024, device)
        if not quick:  # 32M tokens (160 MB): the bandwidth target, with the launch latency amortized
            out += _token_cases(8192, 8, 4096, device)
        # verl's vectorized estimator and our reference read values on the host: not capturable
        return hot_loop(out, graph_unless=("loop", "verl-vectorized", "icrm-ref"))
    n = 65536 if quick else 1 << 20
    out += _grpo_cases(n, 8, device, loop=quick)
    out += _trl_cases(n, 8, device, "group")
    out += _trl_cases(n, 8, device, "batch")
    out += _grpo_cases(n, 8, device, index=True, loop=False)
    out += _whiten_and_bnpo_cases(n, 8, device)
    return hot_loop(out)
