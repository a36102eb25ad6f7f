"""Every op captured in a CUDA graph inside ``unchecked()`` and replayed on new values gives what
an eager call gives (docs/cuda_graphs.md). Needs a GPU; tests/test_graph_safety.py checks the
same property (no host read on the unchecked path) on the CPU."""
import pytest
import torch

import icrm_kernels as ik

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _capture(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _ops(dev):
    """name -> (static inputs, fn(static inputs) -> tuple of tensors, refill(static inputs))."""
    n, g = 4096, 8
    cu = torch.tensor([0, 5, 6, 20, 40, 64], device=dev)
    lens = torch.tensor([0, 40, 70, 100, 128], device=dev)
    ids = torch.randperm(n, device=dev) // g

    def rewards():
        return dict(r=torch.randn(n, device=dev), r64=torch.randn(64, device=dev),
                    mask=torch.rand(n, 16, device=dev) > 0.2, b=(torch.rand(n, device=dev) > 0.5).float())

    def beta():
        return dict(a=torch.rand(n, device=dev) * 5 + 0.1, b=torch.rand(n, device=dev) * 5 + 0.1,
                    y=torch.rand(n, device=dev), cu=torch.arange(0, n + 1, 64, device=dev))

    def attention():
        return dict(query=torch.randn(4, 16, device=dev), states=torch.randn(128, 32, device=dev),
                    w_q=torch.randn(16, 16, device=dev), w_k=torch.randn(32, 16, device=dev),
                    w_v=torch.randn(32, 16, device=dev), w_o=torch.randn(16, 16, device=dev),
                    sw=torch.randn(16, device=dev))

    def attn_kw(x):
        return {k: x[k] for k in ("query", "states", "w_q", "w_k", "w_v", "w_o")}

    return {
        "group_advantages fixed": (rewards, lambda x: (ik.group_advantages(x["r"], group_size=g, preset="verl_grpo"),)),
        "group_advantages ragged": (rewards, lambda x: (ik.group_advantages(x["r64"], cu_groups=cu, preset="trl_batch"),)),
        "group_advantages index": (rewards, lambda x: (ik.group_advantages(x["r"], group_index=ids, preset="verl_rloo"),)),
        "group_advantages tokens": (rewards, lambda x: (ik.group_advantages(
            x["r"], group_size=g, preset="verl_reinforce_pp_baseline", response_mask=x["mask"]),)),
        "group_advantages dler": (rewards, lambda x: (ik.group_advantages(x["r"], group_size=g, preset="dler"),)),
        "group_advantages bnpo": (rewards, lambda x: (ik.group_advantages(x["b"], group_size=g, preset="bnpo"),)),
        "group_win_rate": (rewards, lambda x: (ik.group_win_rate(x["r"], group_size=g, temperature=0.5),)),
        "grebt_loss": (rewards, lambda x: (ik.grebt_loss(x["r"], group_size=g),)),
        "beta_elbo_loss": (beta, lambda x: (ik.beta_elbo_loss(x["a"], x["b"], x["y"]),)),
        "beta_stats": (beta, lambda x: tuple(ik.beta_stats(x["a"], x["b"]))),
        "beta_posterior": (beta, lambda x: tuple(ik.beta_posterior(x["y"], cu_segments=x["cu"], discount=0.9))),
        "seq_to_token_attention": (attention, lambda x: (ik.seq_to_token_attention(**attn_kw(x), cu_seqlens=lens),)),
        "r2m_reward": (attention, lambda x: (ik.r2m_reward(**attn_kw(x), cu_seqlens=lens, score_weight=x["sw"],
                                                           omega=0.6),)),
    }


@pytest.mark.parametrize("name", list(_ops("cpu")))
def test_capture_and_replay(name):
    dev = torch.device("cuda")
    make, fn = _ops(dev)[name]
    static = make()

    def run():
        with ik.unchecked():
            return fn(static)

    graph, outs = _capture(run)
    for _ in range(2):  # new values each replay, as in an RL loop
        fresh = make()
        for k, v in fresh.items():
            static[k].copy_(v)
        graph.replay()
        torch.cuda.synchronize()
        expect = fn(static)
        for got, want in zip(outs, expect):
            torch.testing.assert_close(got, want, equal_nan=True)
