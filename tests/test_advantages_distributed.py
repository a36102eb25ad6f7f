"""group_advantages with process_group: two gloo ranks on localhost give the single-process
result on the concatenated batch (groups never straddle ranks).

One spawn covers both paths: "auto" (on the CPU: the float64 reference with all-gathered
summaries) and, under the Triton interpreter, the kernels with each batch summary all-gathered
between launches (the same launcher code the GPU runs).
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from icrm_kernels.testing import assert_close, fresh_seed

CASES = {
    "trl_batch": dict(preset="trl_batch"),
    "dler": dict(preset="dler"),
    "reinforce_pp": dict(preset="verl_reinforce_pp_baseline", mask=True),
    "openrlhf_reinforce_baseline": dict(preset="openrlhf_reinforce_baseline"),
    "bnpo": dict(preset="bnpo", binary=True),
    "batch_mean_std_whiten": dict(baseline="batch_mean", scale="batch_std", whiten="sample"),
    "normalize_then_sum": dict(aggregation="normalize_then_sum", k=2),
}
TRITON_CASES = ("trl_batch", "reinforce_pp", "bnpo", "normalize_then_sum")  # the interpreter is slow
G = 4


def _backends():
    from icrm_kernels import _backend

    # gloo runs on CPU tensors: the kernels take part only through the interpreter
    return ["auto"] + (["triton"] if _backend.HAS_TRITON and _backend.triton_interpreting() else [])


def _inputs(seed, n):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, case in CASES.items():
        k = case.get("k", 1)
        r = torch.randn(n, k, generator=gen) if k > 1 else torch.randn(n, generator=gen)
        if case.get("binary"):
            r = (r > 0).float()
        mask = (torch.rand(n, 5, generator=gen) > 0.3) if case.get("mask") else None
        kw = {k_: v for k_, v in case.items() if k_ not in ("mask", "binary", "k")}
        out[name] = (r, mask, kw)
    return out


def _worker(rank, world, port, seed, n_per_rank, tmpdir, backends):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from icrm_kernels import group_advantages, use_backend

        results = {}
        sl = slice(rank * n_per_rank, (rank + 1) * n_per_rank)
        for backend in backends:
            with use_backend(backend):
                for name, (r, mask, kw) in _inputs(seed, n_per_rank * world).items():
                    if backend == "triton" and name not in TRITON_CASES:
                        continue
                    results[backend, name] = group_advantages(
                        r[sl], group_size=G, response_mask=None if mask is None else mask[sl],
                        process_group=dist.group.WORLD, **kw)
                    if name == "trl_batch":  # without the process group: this rank's statistics only
                        results[backend, "local"] = group_advantages(r[sl], group_size=G, **kw)
        torch.save(results, os.path.join(tmpdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_equal_single_process(tmp_path):
    from icrm_kernels import group_advantages

    seed, world, n_per_rank, backends = fresh_seed(), 2, 12, _backends()
    mp.spawn(_worker, args=(world, _free_port(), seed, n_per_rank, str(tmp_path), backends), nprocs=world, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    inputs = _inputs(seed, n_per_rank * world)
    for (backend, name) in parts[0]:
        if name == "local":
            continue
        r, mask, kw = inputs[name]
        single = group_advantages(r, group_size=G, response_mask=mask, **kw)
        both = torch.cat([p[backend, name] for p in parts])
        assert_close(both, single, atol=1e-5, rtol=1e-5, what=f"{backend} {name} (seed {seed})")
    for backend in backends:  # the all-gather mattered
        local = torch.cat([p[backend, "local"] for p in parts])
        assert not torch.allclose(local, torch.cat([p[backend, "trl_batch"] for p in parts]))
    assert ("triton", "bnpo") in parts[0] or "triton" not in backends
