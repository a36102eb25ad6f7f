"""icrm_kernels/selfcheck.py (`icrm-kernels selfcheck`): every case passes on every backend, a
wrong implementation is reported as failed, and its one metric agrees with the test helpers."""
import math

import pytest
import torch

import icrm_kernels as ik
from icrm_kernels import _backend, cli, selfcheck, testing

# every public op that runs a kernel (Triton, C++) on some path
KERNEL_OPS = {
    "group_advantages", "group_advantages_direct", "group_win_rate", "grebt_loss", "seq_to_token_attention",
    "r2m_reward", "digamma", "trigamma", "lgamma", "betaln", "beta_elbo_loss", "beta_elbo_loss_from_logits",
    "beta_kl", "beta_from_logits", "beta_stats", "beta_posterior",
}


def test_every_kernel_op_has_a_case():
    ops = {case.name.split("[")[0] for case in selfcheck.CASES}
    assert ops >= KERNEL_OPS, KERNEL_OPS - ops
    assert ops <= set(ik.__all__)
    assert {case.family for case in selfcheck.CASES} == set(selfcheck.FAMILIES)
    assert len({case.label for case in selfcheck.CASES}) == len(selfcheck.CASES)


def test_selfcheck_passes_on_every_backend(backend, device):
    override = None
    if _backend.HAS_TRITON:
        from icrm_kernels.triton import attention as tri

        override = tri._FORCED.get()
    results = selfcheck.run(device)
    assert results and all(res.ok for res in results), [res for res in results if not res.ok]
    assert all(0 <= res.err <= 1 for res in results)
    # each result names the backend that ran it: the forced one, as every case is float32
    assert {res.backend for res in results} == {backend}
    # the attention cases: both Triton kernel families there, one case per layout elsewhere
    attention = [res.name for res in results if res.name.startswith("seq_to_token_attention")]
    assert len(attention) == (4 if backend == "triton" else 2)
    if override is not None:
        assert tri._FORCED.get() is override  # the forced kernel family ends with its block


def _by_name(results):
    return {res.name: res for res in results}


def test_wrong_forward_is_reported_as_failed(device, monkeypatch):
    """digamma off by 0.1%: five times TOLERANCES' float32 rtol; only its case fails."""
    right = ik.digamma
    monkeypatch.setattr(ik, "digamma", lambda x: right(x) * (1 + 1e-3))
    results = _by_name(selfcheck.run(device, ["beta"]))
    bad = results.pop("digamma[fwd+bwd]")
    assert not bad.ok and bad.err > 1 and "output 0" in bad.detail and "seed" in bad.detail
    assert all(res.ok for res in results.values()), results


def test_wrong_gradient_is_reported_as_failed(device, monkeypatch):
    """grebt_loss with the right value and a gradient 1% too large: every grebt case fails on it."""
    right = ik.grebt_loss

    def wrong(rewards, **kw):
        loss = right(rewards, **kw)
        return loss + 0.01 * (loss - loss.detach())

    monkeypatch.setattr(ik, "grebt_loss", wrong)
    results = selfcheck.run(device, ["pairwise"])
    grebt = [res for res in results if res.name.startswith("grebt_loss")]
    assert len(grebt) == 3
    for res in grebt:
        assert not res.ok and res.err > 1 and "grad of rewards" in res.detail, res
    assert all(res.ok for res in results if not res.name.startswith("grebt_loss"))


def test_an_op_that_raises_fails_its_case_and_the_others_still_run(device, monkeypatch):
    def broken(x):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(ik, "trigamma", broken)
    results = _by_name(selfcheck.run(device, ["beta"]))
    bad = results.pop("trigamma")
    assert not bad.ok and bad.err == math.inf and "RuntimeError: kernel launch failed" in bad.detail
    assert results and all(res.ok for res in results.values())


def test_cli_exit_code_and_lines(device, monkeypatch, capsys):
    assert cli.main(["selfcheck", "--device", str(device), "--family", "pairwise"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "self-check: 9 passed, 0 failed" in out
    assert "  ok   group_win_rate[G=6,soft,fwd+bwd]" in out and "max err/tol" in out
    right = ik.group_win_rate
    monkeypatch.setattr(ik, "group_win_rate", lambda scores, **kw: right(scores.flip(0), **kw))
    assert cli.main(["selfcheck", "--device", str(device), "--family", "pairwise"]) == 1
    out = capsys.readouterr().out
    assert "  FAIL group_win_rate[G=6,hard]" in out and "failed" in out and ", 0 failed" not in out


def test_seed_reproduces_a_case(device):
    case = next(c for c in selfcheck.CASES if c.name == "grebt_loss[ragged,sum]")
    first, second = (selfcheck.check(case, device, seed=1234) for _ in range(2))
    assert first.ok and first.err == second.err
    assert selfcheck.check(case, device, seed=4321).err != first.err


def test_metric_agrees_with_the_assertions():
    e = torch.tensor([1.0, -200.0, 0.0, float("nan"), float("inf")], dtype=torch.float64)
    atol, rtol = testing.TOLERANCES[torch.float32]
    for scale, passes in ((0.5, True), (0.99, True), (1.01, False), (3.0, False)):
        tol = atol + rtol * e.abs()
        a = e.clone()
        a[:3] += scale * tol[:3]
        ratio = testing.tolerance_ratio(a, e, atol=atol, rtol=rtol)
        assert ratio == pytest.approx(scale)
        try:
            testing.assert_close(a, e, atol=atol, rtol=rtol)
            assert passes
        except AssertionError:
            assert not passes
    wrong_nan = e.clone()
    wrong_nan[0] = float("nan")
    assert testing.tolerance_ratio(wrong_nan, e, atol=atol, rtol=rtol) == math.inf
    assert testing.tolerance_ratio(e[:2], e, atol=atol, rtol=rtol) == math.inf
    # the low-precision rule: the examples of tests/test_dispatch.py::test_low_precision_rule
    ref64 = torch.tensor([1.0, -64.0, 3.0], dtype=torch.float64)
    low = torch.tensor([1.01, float("nan"), 3.0], dtype=torch.float64).bfloat16()
    assert testing.low_precision_ratio(torch.tensor([1.0, -62.5, 3.02]), ref64, low) <= 1
    assert testing.low_precision_ratio(torch.tensor([1.0, -64.0, 5.0]), ref64, low) > 1
    assert testing.low_precision_ratio(torch.tensor([1.0, float("nan"), 3.0]), ref64, low) == math.inf


def test_record_gets_every_comparison_even_when_one_fails():
    x = torch.rand(16) + 0.5
    record = []
    with pytest.raises(AssertionError, match="grad of x"):
        # the right value, a gradient 1e-3 too large
        testing.assert_matches_reference(lambda x: ik.lgamma(x) + 1e-3 * (x - x.detach()), lambda x: torch.lgamma(x),
                                         dict(x=x), grad=["x"], record=record)
    assert [w.split(" (")[0] for w, _ in record] == ["output 0", "grad of x"]
    assert record[0][1] <= 1 < record[1][1]
