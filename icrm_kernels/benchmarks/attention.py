"""Benchmarks for R2M's sequence-to-token cross-attention (docs/attention.md#math;
targets in docs/attention.md#speed-targets).

Ops, each against the same inputs:
- ``s2t_attention fwd`` / ``s2t_attention fwd+bwd`` (states detached; grads of the query and
  every weight) / ``r2m_reward``: the package's absorbed op vs
  (a) ``nn.MultiheadAttention`` on the padded batch,
  (b) explicit K/V projection + ``scaled_dot_product_attention`` (the paper's form),
  (c) explicit K/V projection + flash-attn varlen on the packed states when flash-attn imports,
  (d) (a) and (b) through ``torch.compile`` (``harness.compiled``: what a careful user would
  run instead of eager code; ``ICRM_BENCH_COMPILE=0`` leaves them out).
- ``R2M update step``: attention + score head forward and backward + GREBT loss on cached
  states, vs the same step in eager torch (MHA + nn.Linear + GREBT written in torch) and that
  step's loss through ``torch.compile``.

``bytes`` is one read of the states (the op's floor), so the bandwidth column says how close
the kernels are to reading the states once. GPU shape: B=512 sequences, ragged L 512-1536,
D_p=D_r=4096, d=2048, one head, bf16 (quick: B=64). CPU shape: B=16, L=256, D_p=D_r=512,
d=512, one head, fp32 (the CPU target of docs/attention.md#speed-targets).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from icrm_kernels.benchmarks.harness import Case, compiled, compiled_peers, hot_loop
from icrm_kernels.benchmarks.pairwise import grebt_vectorized

FAMILY = "attention"


def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func
    except Exception:
        return None


class _Problem:
    """One batch of random inputs in both layouts plus the converted modules."""

    def __init__(self, device, dtype, lens, d_r, d_p, d, heads, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.device, self.dtype = device, dtype
        self.lens = lens
        b, lmax, t = len(lens), max(lens), int(sum(lens))
        self.B, self.T, self.Lmax, self.D_p, self.heads = b, t, lmax, d_p, heads
        self.cu = torch.zeros(b + 1, dtype=torch.int32)
        self.cu[1:] = torch.cumsum(torch.tensor(lens), 0)
        self.cu = self.cu.to(device)
        self.packed = torch.randn(t, d_p, generator=gen).to(device, dtype)
        lens_t = torch.tensor(lens)
        self.mask = (torch.arange(lmax)[None, :] >= lens_t[:, None]).to(device)
        self.padded = torch.zeros(b, lmax, d_p, device=device, dtype=dtype)
        self.padded[~self.mask] = self.packed
        self.query = torch.randn(b, d_r, generator=gen).to(device, dtype)
        # MHA ties the attention width to the query width (embed_dim = D_r); when d == D_r the
        # package's module is the exact conversion of it, else an independent module at width d.
        self.mha = nn.MultiheadAttention(d_r, heads, bias=False, kdim=d_p, vdim=d_p, batch_first=True).to(device, dtype)
        from icrm_kernels.nn.attention import PolicyFeedbackAttention

        if d == d_r:
            self.mod = PolicyFeedbackAttention.from_multihead_attention(self.mha)
            self.mha_note = "padded + key_padding_mask"
        else:
            self.mod = PolicyFeedbackAttention(d_r, d_p, d, heads).to(device, dtype)
            self.mha_note = f"padded + key_padding_mask; embed_dim = D_r = {d_r} (MHA ties d to the query width)"
        if self.mha_chunk() < b:
            self.mha_note += (f"; run in chunks of {self.mha_chunk()} sequences, whole loop timed "
                              "(one call overflows: key.stride(2) overflows)")
        self.score = nn.Linear(d_r, 1).to(device, dtype)
        self.cot = torch.randn(b, d_r, generator=gen).to(device, dtype)
        self.bytes = t * d_p * self.packed.element_size()
        self.shape = f"B={b} L={min(lens)}-{lmax} Dp={d_p} d={d} H={heads}"

    # ---- the package
    def icrm_fwd(self):
        from icrm_kernels import unchecked

        with unchecked():
            if self.device.type == "cuda":
                return self.mod(self.query, self.packed, cu_seqlens=self.cu)
            return self.mod(self.query, self.padded, key_padding_mask=self.mask)

    def icrm_reward(self, omega=0.7):
        from icrm_kernels import r2m_reward, unchecked

        kw = dict(cu_seqlens=self.cu) if self.device.type == "cuda" else dict(key_padding_mask=self.mask)
        states = self.packed if self.device.type == "cuda" else self.padded
        with unchecked(), torch.no_grad():
            return r2m_reward(self.query, states, **self.mod.weights(), score_weight=self.score.weight,
                              score_bias=self.score.bias, omega=omega, **kw)

    # ---- baselines (explicit K/V)
    # nn.MultiheadAttention indexes the projected K/V with 32-bit strides: at the target shape the
    # padded [B, L, 4096] keys overflow ("key.stride(2) overflows"), so it runs in batch chunks of
    # MHA_CHUNK sequences and the whole loop is timed.
    MHA_CHUNK = 32

    def mha_chunk(self):
        return self.B if self.B * self.Lmax * self.padded.shape[-1] < 2 ** 31 else self.MHA_CHUNK

    def mha_fwd(self):
        n = self.mha_chunk()
        outs = [self.mha(self.query[i:i + n, None], self.padded[i:i + n], self.padded[i:i + n],
                         key_padding_mask=self.mask[i:i + n], need_weights=False)[0][:, 0]
                for i in range(0, self.B, n)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def sdpa_fwd(self):
        m = self.mod
        b, h = self.B, self.heads
        q = (self.query @ m.w_q).view(b, h, 1, -1)
        k = (self.padded @ m.w_k).view(b, self.Lmax, h, -1).transpose(1, 2)
        v = (self.padded @ m.w_v).view(b, self.Lmax, h, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=~self.mask[:, None, None, :])
        return o.reshape(b, -1) @ m.w_o

    def flash_heads(self):
        """flash-attn supports head_dim <= 256: wider heads are split (same FLOPs and bytes)."""
        d = self.mod.attn_dim
        h = self.heads
        while d // h > 256 and d % (2 * h) == 0:
            h *= 2
        return h

    def flash_fwd(self, flash):
        m = self.mod
        b, h = self.B, self.flash_heads()
        q = (self.query @ m.w_q).view(b, h, -1)
        k = (self.packed @ m.w_k).view(self.T, h, -1)
        v = (self.packed @ m.w_v).view(self.T, h, -1)
        cu_q = torch.arange(b + 1, device=self.device, dtype=torch.int32)
        o = flash(q, k, v, cu_q, self.cu, 1, self.Lmax)
        return o.reshape(b, -1) @ m.w_o

    def fwd_bwd(self, fwd, params):
        def run():
            out = fwd()
            return torch.autograd.grad(out, params, self.cot)
        return run


def _attention_cases(p: _Problem, device: str, flash):
    cases = []
    params_mha = [p.query] + [x for x in p.mha.parameters()]
    params_mod = [p.query] + [x for x in p.mod.parameters()]
    p.query.requires_grad_(True)
    note_flash = "" if flash is not None else "flash-attn not importable: SDPA (padded + bool mask, efficient backend)"
    comp = compiled_peers(device)
    # MHA through torch.compile on the CPU only: on the GPU it lowers to the same projections and
    # attention as the compiled SDPA peer, and each compile of this shape costs device time
    comp_mha = comp and not device.startswith("cuda")
    c_mha = compiled(p.mha_fwd) if comp_mha else None
    c_sdpa = compiled(p.sdpa_fwd) if comp else None
    fh = p.flash_heads()
    flash_note = "" if fh == p.heads else f"head_dim {p.mod.attn_dim // p.heads} > 256: run as {fh} heads of {p.mod.attn_dim // fh}"
    for op, make in (
        ("s2t_attention fwd", lambda f, params: f),
        ("s2t_attention fwd+bwd", lambda f, params: p.fwd_bwd(f, params)),
    ):
        grad_ctx = op.endswith("bwd")

        def wrap(fn, grad=grad_ctx):
            if grad:
                return fn

            def run():
                with torch.no_grad():
                    return fn()
            return run

        cases.append(Case(FAMILY, op, "icrm", p.shape, p.T, p.bytes, wrap(make(p.icrm_fwd, params_mod)), device,
                          note="packed + cu_seqlens" if device.startswith("cuda") else "padded + mask, torch absorbed path"))
        cases.append(Case(FAMILY, op, "nn.MultiheadAttention", p.shape, p.T, p.bytes,
                          wrap(make(p.mha_fwd, params_mha)), device, note=p.mha_note))
        cases.append(Case(FAMILY, op, "torch-sdpa (explicit K/V)", p.shape, p.T, p.bytes,
                          wrap(make(p.sdpa_fwd, params_mod)), device, note=note_flash))
        if comp_mha:
            cases.append(Case(FAMILY, op, "nn.MultiheadAttention-compiled", p.shape, p.T, p.bytes,
                              wrap(make(c_mha, params_mha)), device, note=p.mha_note))
        if comp:
            cases.append(Case(FAMILY, op, "torch-sdpa-compiled (explicit K/V)", p.shape, p.T, p.bytes,
                              wrap(make(c_sdpa, params_mod)), device))
        if flash is not None:
            cases.append(Case(FAMILY, op, "flash-attn varlen (explicit K/V)", p.shape, p.T, p.bytes,
                              wrap(make(lambda: p.flash_fwd(flash), params_mod)), device, note=flash_note))
    # fused reward (forward only) vs the baselines' attention + blend + score head
    omega = 0.7

    def base_reward(fwd):
        def run():
            with torch.no_grad():
                return p.score(omega * p.query + (1 - omega) * fwd()).squeeze(-1)
        return run

    cases.append(Case(FAMILY, "r2m_reward", "icrm", p.shape, p.T, p.bytes, lambda: p.icrm_reward(omega), device))
    cases.append(Case(FAMILY, "r2m_reward", "nn.MultiheadAttention", p.shape, p.T, p.bytes, base_reward(p.mha_fwd), device,
                      note=p.mha_note))
    cases.append(Case(FAMILY, "r2m_reward", "torch-sdpa (explicit K/V)", p.shape, p.T, p.bytes, base_reward(p.sdpa_fwd),
                      device, note=note_flash))
    if flash is not None:
        cases.append(Case(FAMILY, "r2m_reward", "flash-attn varlen (explicit K/V)", p.shape, p.T, p.bytes,
                          base_reward(lambda: p.flash_fwd(flash)), device, note=flash_note))
    if comp:
        def sdpa_reward():
            return p.score(omega * p.query + (1 - omega) * p.sdpa_fwd()).squeeze(-1)

        c_reward = compiled(sdpa_reward)

        def run_c_reward():
            with torch.no_grad():
                return c_reward()

        cases.append(Case(FAMILY, "r2m_reward", "torch-sdpa-compiled (explicit K/V)", p.shape, p.T, p.bytes,
                          run_c_reward, device, note="attention + blend + score head in one torch.compile"))
    return cases


def _peak_note(p: _Problem, fn) -> str:
    """Peak memory of one fwd+bwd beyond what was allocated before (CUDA only)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return f"peak extra memory fwd+bwd {peak / 2**20:.1f} MiB = {100 * peak / p.bytes:.2f}% of the states"


def _update_step_cases(device, dtype, prompts, responses, lens, d, seed=1):
    try:
        from icrm_kernels.ops.pairwise import grebt_loss
    except Exception:
        return []
    p = _Problem(torch.device(device), dtype, lens, d, d, d, 1, seed=seed)
    from icrm_kernels import unchecked
    from icrm_kernels.nn.attention import R2MRewardHead

    head = R2MRewardHead(p.score, p.mod, total_steps=100)
    head.set_step(40)
    omega = head.omega
    params_icrm = list(head.parameters())
    params_eager = list(p.mha.parameters()) + list(p.score.parameters())
    cuda = device.startswith("cuda")

    def icrm_step():
        with unchecked():
            if cuda:
                r = head(p.query, p.packed, cu_seqlens=p.cu)
            else:
                r = head(p.query, p.padded, key_padding_mask=p.mask)
            loss = grebt_loss(r, group_size=responses, alpha=0.3)
        return torch.autograd.grad(loss, params_icrm)

    def eager_loss():
        h_hat = p.mha_fwd()  # in batch chunks where one call would overflow
        r = p.score(omega * p.query + (1 - omega) * h_hat).squeeze(-1)
        return grebt_vectorized(r, responses)  # GREBT written in torch (the pairwise benchmark's peer)

    def eager_step():
        return torch.autograd.grad(eager_loss(), params_eager)

    c_loss = compiled(eager_loss) if compiled_peers(device) else None

    def compiled_step():
        return torch.autograd.grad(c_loss(), params_eager)

    shape = f"{prompts}x{responses} L={min(lens)}-{max(lens)} D={d}"
    return [Case(FAMILY, "R2M update step", "icrm", shape, p.T, p.bytes, icrm_step, device,
                 note="R2MRewardHead + grebt_loss, fwd+bwd"),
            Case(FAMILY, "R2M update step", "eager torch (MHA + Linear + GREBT)", shape, p.T, p.bytes, eager_step, device,
                 note=p.mha_note)] + ([
            Case(FAMILY, "R2M update step", "torch-compiled (MHA + Linear + GREBT)", shape, p.T, p.bytes, compiled_step,
                 device, note="the eager step's loss through torch.compile, autograd through the compiled graph")]
            if c_loss is not None else [])


def cases(device, quick: bool = False):
    device = torch.device(device)
    dev = str(device)
    gen = torch.Generator().manual_seed(1234)
    if device.type == "cuda":
        b = 64 if quick else 512
        lens = torch.randint(512, 1537, (b,), generator=gen).tolist()
        p = _Problem(device, torch.bfloat16, lens, 4096, 4096, 2048, 1)  # target shape: D_p = D_r = 4096, d = 2048
        # device time too (CUDA-graph replays) for the forward-only cases: eager timings of a
        # ~1.5 ms kernel include ~1 ms of Python for the op and module around it
        out = hot_loop(_attention_cases(p, dev, _flash_varlen()))
        fb = next(c for c in out if c.op == "s2t_attention fwd+bwd" and c.impl == "icrm")
        try:
            fb.note += "; " + _peak_note(p, fb.fn)
        except Exception as exc:  # never lose the timing for a failed measurement
            fb.note += f"; peak memory not measured ({exc})"
        n_up = 8 if quick else 64
        up_lens = torch.randint(512, 1537, (n_up * 8,), generator=gen).tolist()
        out += _update_step_cases(dev, torch.bfloat16, n_up, 8, up_lens, 4096)
        return out
    if quick:
        p = _Problem(device, torch.float32, [64] * 4, 128, 128, 128, 1)
    else:
        p = _Problem(device, torch.float32, [256] * 16, 512, 512, 512, 1)
    out = _attention_cases(p, dev, None)
    if quick:
        out += _update_step_cases(dev, torch.float32, 2, 4, [64] * 8, 128)
    else:
        out += _update_step_cases(dev, torch.float32, 4, 8, [256] * 32, 512)
    return out
