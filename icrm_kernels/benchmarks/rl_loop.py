"""``icrm-kernels profile``: a small, self-contained GRPO loop with an R2M reward model, run twice
(the reward stage on the package's ops, then on plain torch / peer code) with a per-stage time
table side by side, a Chrome trace of each run and a PNG of the stage breakdown.

The loop (one RL step; B prompts x G responses, synthetic prompts of random token ids):

1. ``generate``: the policy (a tiny ``LlamaForCausalLM`` built from a config) samples G
   responses per prompt;
2. ``policy_forward``: one policy forward over prompt + response with
   ``output_hidden_states=True``: the log-probabilities for the policy loss and, from the same
   forward, the last hidden states of the response tokens, which R2M feeds to the reward model
   (no extra forward);
3. ``reward``: the reward model (a tiny ``LlamaForSequenceClassification``) scores each
   sequence with R2M's policy feedback: its reward-token embedding attends over the response's
   policy states. icrm: the model patched by ``integrations.hf.apply_r2m``, its ``score``
   module (``R2MScoreHead``) after the backbone (the fused ``r2m_reward`` kernel under no_grad; packed
   states + ``cu_seqlens`` on the GPU, padded + mask on the CPU, where the packed layout runs a
   slower per-sequence path); torch: ``nn.MultiheadAttention`` over the padded states + the
   score head;
4. ``advantages``: icrm: ``group_advantages(preset="trl_group")``; torch: TRL's code;
5. ``rm_update``: R2M's reward-model update, GREBT loss on the rewards with the attention and
   score head trainable, backward and an optimizer step. icrm: ``grebt_loss`` + the absorbed
   attention; torch: MHA + the GREBT loss written in torch;
6. ``policy_update``: the GRPO policy loss (``-A * exp(logp - logp.detach())``, token mean),
   backward and an optimizer step.

Both runs use the same models (the reward model's attention converted exactly between
``nn.MultiheadAttention`` and the package's module), the same prompts and the same seeds. Only
the stages marked icrm/torch above differ; generation and the policy stages are the same code
in both runs and serve as the reference for "how big is the reward stage".

Needs ``transformers`` (a test dependency; ``pip install transformers``).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Dict, Optional

import torch
from torch import nn

from icrm_kernels import profiling
from icrm_kernels.benchmarks.baselines_advantages import trl_grpo
from icrm_kernels.benchmarks.pairwise import grebt_vectorized

STAGES = ("generate", "policy_forward", "reward", "advantages", "rm_update", "policy_update")
# the stages whose code differs between the two runs
SWAPPED = ("reward", "advantages", "rm_update")


def _models(device, vocab, hidden, policy_dim, layers, seed):
    try:
        from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    except ImportError as exc:
        raise SystemExit(f"icrm-kernels profile needs transformers (pip install transformers): {exc}")
    torch.manual_seed(seed)
    pcfg = LlamaConfig(vocab_size=vocab, hidden_size=policy_dim, intermediate_size=2 * policy_dim,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    policy = LlamaForCausalLM(pcfg).to(device)
    rcfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                       num_labels=1)
    rm = LlamaForSequenceClassification(rcfg).to(device)
    return policy, rm


class _EagerR2M(nn.Module):
    """R2M's head as a user would write it: nn.MultiheadAttention over the padded policy states."""

    def __init__(self, mha: nn.MultiheadAttention, score: nn.Linear):
        super().__init__()
        self.mha, self.score = mha, score

    def forward(self, hidden, padded, key_padding_mask, omega):
        h_hat = self.mha(hidden[:, None], padded, padded, key_padding_mask=key_padding_mask, need_weights=False)[0][:, 0]
        return self.score(omega * hidden + (1 - omega) * h_hat).squeeze(-1)


def _backbone(rm, seq, mask):
    """The reward model's last hidden states [n, S, D_r] and its reward-token index [n] (the
    last valid token, the HF head's pooling rule for right padding)."""
    hidden = rm.model(input_ids=seq, attention_mask=mask).last_hidden_state
    return hidden, mask.long().cumsum(1).argmax(1)


def run_loop(impl: str, *, steps: int, device, prompts: int = 4, group: int = 8, prompt_len: int = 16,
             response_len: int = 32, vocab: int = 256, hidden: int = 64, policy_dim: int = 64, layers: int = 2,
             seed: int = 0, trace_path: Optional[str] = None, progress: bool = True) -> Dict[str, dict]:
    """One run of the GRPO loop with the reward stage on ``impl`` ("icrm" or "torch"); returns
    :func:`icrm_kernels.profiling.stage_times` for its ``steps`` timed steps (a first step, a
    warm-up that compiles kernels, is not counted). With ``trace_path``, one more step runs
    under ``torch.profiler`` and its Chrome trace is written there (not counted either)."""
    if impl not in ("icrm", "torch"):
        raise ValueError(f"impl must be 'icrm' or 'torch', got {impl!r}")
    from icrm_kernels import grebt_loss, group_advantages, r2m_omega, unchecked
    from icrm_kernels.integrations.hf import apply_r2m
    from icrm_kernels.nn.attention import PolicyFeedbackAttention

    device = torch.device(device)
    policy, rm = _models(device, vocab, hidden, policy_dim, layers, seed)
    for p in rm.model.parameters():  # R2M trains the attention and the score head only
        p.requires_grad_(False)
    torch.manual_seed(seed + 1)
    mha = nn.MultiheadAttention(hidden, 1, bias=False, kdim=policy_dim, vdim=policy_dim, batch_first=True).to(device)
    if impl == "icrm":  # the package's HF head, holding the same attention as the MHA below
        apply_r2m(rm, policy_dim=policy_dim, total_steps=max(steps, 2))
        rm.score.attention = PolicyFeedbackAttention.from_multihead_attention(mha)
        head = rm.score
    else:
        head = _EagerR2M(mha, rm.score)
    rm_opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-4)
    pol_opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(seed + 2)
    one_weight = torch.ones(1, device=device)  # TRL's reward_weights for one reward function
    n = prompts * group
    profiling.reset_stages()
    total = steps + 1 + (1 if trace_path else 0)  # a warm-up step, the timed steps, a traced step
    state = {}

    def one_step(step):
        prompt = torch.randint(1, vocab, (prompts, prompt_len), generator=gen).to(device)
        prompt = prompt.repeat_interleave(group, 0)
        with profiling.stage("generate"), torch.no_grad():
            seq = policy.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=response_len,
                                  min_new_tokens=response_len, do_sample=True, pad_token_id=0)
        resp = seq[:, prompt_len:]
        # ragged responses: a random length per response (EOS at a random position)
        lens = torch.randint(response_len // 2, response_len + 1, (n,), generator=gen).to(device)
        resp_mask = torch.arange(resp.shape[1], device=device)[None, :] < lens[:, None]
        mask = torch.cat([torch.ones_like(prompt, dtype=torch.bool), resp_mask], 1)
        with profiling.stage("policy_forward"):
            out = policy(seq, attention_mask=mask.long(), output_hidden_states=True)
            logits = out.logits[:, prompt_len - 1:-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, resp[..., None]).squeeze(-1)
            states = out.hidden_states[-1][:, prompt_len:].detach()  # the policy's response states, [n, R, D_p]
        with profiling.stage("reward"), torch.no_grad():
            hidden, pool = _backbone(rm, seq, mask)
            h = hidden[torch.arange(n, device=device), pool]
            omega = r2m_omega(min(step, steps), max(steps, 2))
            if impl == "icrm":
                head.set_step(min(step, steps))
                # packed + cu_seqlens on the GPU (the Triton kernel); padded + mask on the CPU,
                # whose absorbed path is a batched torch computation (the packed CPU path loops)
                if device.type == "cuda":
                    lay = dict(cu_seqlens=torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32))
                    pstates = states[resp_mask]  # [T, D_p]
                else:
                    lay, pstates = dict(key_padding_mask=~resp_mask), states
                with unchecked():  # the patched model's score module: R2MScoreHead
                    rewards = head(hidden, pool, pstates, **lay)[:, 0]
            else:
                rewards = head(h, states, ~resp_mask, omega)
        with profiling.stage("advantages"):
            if impl == "icrm":
                with unchecked():
                    adv = group_advantages(rewards.float(), group_size=group, preset="trl_group")
            else:
                adv = trl_grpo(rewards.float()[:, None], one_weight, group, "group")  # TRL's code
        with profiling.stage("rm_update"):
            rm_opt.zero_grad(set_to_none=True)
            if impl == "icrm":
                with unchecked():  # cached backbone states: only the head trains (R2M's update)
                    r = head(hidden, pool, pstates, **lay)[:, 0]
                    loss_rm = grebt_loss(r, group_size=group, alpha=0.3)
            else:
                r = head(h, states, ~resp_mask, omega)
                loss_rm = grebt_vectorized(r, group)  # GREBT written in torch
            loss_rm.backward()
            rm_opt.step()
        with profiling.stage("policy_update"):
            pol_opt.zero_grad(set_to_none=True)
            ratio = torch.exp(logp - logp.detach())
            tok = -(adv[:, None] * ratio) * resp_mask
            loss_pol = tok.sum() / resp_mask.sum()
            loss_pol.backward()
            pol_opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        state["losses"] = (loss_rm.detach(), loss_pol.detach())

    def tick(done):
        if progress:
            print(f"\r  {impl:5s} [{'#' * (20 * done // total):20s}] step {done}/{total}", end="", file=sys.stderr,
                  flush=True)

    for step in range(steps + 1):
        if step == 1:
            profiling.reset_stages()  # step 0 compiled the kernels: a warm-up, not counted
        one_step(step)
        tick(step + 1)
    times = profiling.stage_times()
    if trace_path:  # one more step under torch.profiler (not in the times: the profiler slows it)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            one_step(steps + 1)
        prof.export_chrome_trace(trace_path)
        tick(total)
    profiling.reset_stages()
    if progress:
        print(file=sys.stderr)
    if not all(math.isfinite(x.item()) for x in state["losses"]):
        raise RuntimeError(f"{impl} run produced a non-finite loss")
    return times


def side_by_side(icrm: Dict[str, dict], torch_: Dict[str, dict]) -> str:
    """Per-stage ms per step of both runs and the ratio torch / icrm."""
    lines = [f"{'stage':16s} {'icrm ms/step':>13s} {'torch ms/step':>14s} {'torch/icrm':>11s}  code"]
    tot_i = tot_t = 0.0
    for name in STAGES:
        a, b = icrm.get(name), torch_.get(name)
        if a is None or b is None:
            continue
        ta = (a["device_s"] if a["device_s"] is not None else a["wall_s"]) * 1e3 / max(a["calls"], 1)
        tb = (b["device_s"] if b["device_s"] is not None else b["wall_s"]) * 1e3 / max(b["calls"], 1)
        ta_w, tb_w = a["wall_s"] * 1e3 / max(a["calls"], 1), b["wall_s"] * 1e3 / max(b["calls"], 1)
        tot_i, tot_t = tot_i + ta_w, tot_t + tb_w
        lines.append(f"{name:16s} {ta_w:13.3f} {tb_w:14.3f} {tb_w / ta_w if ta_w else float('nan'):10.2f}x  "
                     + ("icrm vs torch" if name in SWAPPED else "same code"))
    lines.append(f"{'step (sum)':16s} {tot_i:13.3f} {tot_t:14.3f} {tot_t / tot_i if tot_i else float('nan'):10.2f}x")
    return "\n".join(lines)


def plot_stages(icrm: Dict[str, dict], torch_: Dict[str, dict], path: str, title: str = "") -> Optional[str]:
    """Horizontal stacked bars, one per run, of wall ms per step by stage."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    fig, ax = plt.subplots(figsize=(9, 2.8))
    colors = plt.get_cmap("tab10").colors
    for row, (label, times) in enumerate((("torch", torch_), ("icrm", icrm))):
        left = 0.0
        for k, name in enumerate(STAGES):
            t = times.get(name)
            if t is None:
                continue
            ms = t["wall_s"] * 1e3 / max(t["calls"], 1)
            ax.barh(row, ms, left=left, color=colors[k % 10], edgecolor="white",
                    label=name + (" *" if name in SWAPPED else "") if row == 0 else None)
            left += ms
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["plain torch / peers", "icrm-kernels"])
    ax.set_xlabel("wall ms per RL step")
    ax.set_title(title or "GRPO step by stage (* = reward-stage code that differs)", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(steps: int = 10, device: Optional[str] = None, out: str = "profile", **sizes) -> int:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(out, exist_ok=True)
    print(f"icrm-kernels profile: GRPO loop on {device}, {steps} steps (+1 warm-up), sizes {sizes or 'default'}")
    results = {}
    for impl in ("icrm", "torch"):
        t0 = time.perf_counter()
        results[impl] = run_loop(impl, steps=steps, device=device, trace_path=os.path.join(out, f"trace_{impl}.json"),
                                 **sizes)
        print(f"  {impl}: {time.perf_counter() - t0:.1f} s")
    table = side_by_side(results["icrm"], results["torch"])
    print(table)
    with open(os.path.join(out, "stages.txt"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "stages.json"), "w") as f:
        json.dump({"device": device, "steps": steps, "sizes": sizes, "runs": results}, f, indent=1)
    png = plot_stages(results["icrm"], results["torch"], os.path.join(out, "stages.png"),
                      title=f"GRPO step by stage on {device} (* = reward-stage code that differs)")
    print(f"wrote {out}/stages.txt, stages.json, trace_icrm.json, trace_torch.json" + (", stages.png" if png else ""))
    return 0
