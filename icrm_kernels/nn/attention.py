"""R2M modules: the policy-feedback cross-attention and the reward head that blends it
(docs/attention.md#math)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from icrm_kernels.ops.attention import r2m_omega, r2m_reward, seq_to_token_attention

__all__ = ["PolicyFeedbackAttention", "R2MRewardHead"]


def _check_widths(query: Tensor, qname: str, rm_dim: int, states: Tensor, sname: str, policy_dim: int) -> None:
    """The modules' inputs named as the caller knows them: the functional op would report a
    width mismatch against its weights (w_q, w_k), which a module user never passed."""
    for t, name, width, what in ((query, qname, rm_dim, "reward-model"), (states, sname, policy_dim, "policy")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() == 0 or t.shape[-1] != width:
            raise ValueError(f"{name} must have the {what} width {width} as its last dimension, "
                             f"got shape {tuple(t.shape)}")


class PolicyFeedbackAttention(nn.Module):
    """Sequence-to-token cross-attention: the reward-token embedding attends over policy states.

    ``forward(query[B, rm_dim], states, cu_seqlens=None, key_padding_mask=None) -> [B, rm_dim]``
    with ``states`` packed ``[T, policy_dim]`` + ``cu_seqlens[B+1]`` or padded
    ``[B, L, policy_dim]`` (+ bool ``key_padding_mask``, True = ignore). Computes
    Ĥ = concat_h(softmax(q_h k_hᵀ/√d_h) v_h) W_o (+ biases) via :func:`seq_to_token_attention`,
    i.e. without ever projecting keys or values.

    Parameters are stored in the ``x @ w`` convention: ``w_q [rm_dim, attn_dim]``,
    ``w_k``/``w_v [policy_dim, attn_dim]``, ``w_o [attn_dim, rm_dim]``; with ``bias=True`` also
    ``b_q``, ``b_k``, ``b_v [attn_dim]`` and ``b_o [rm_dim]``. ``attn_dim`` defaults to
    ``rm_dim``; the paper's setting is one head, attn_dim = 2048, no biases. Initialisation
    follows nn.MultiheadAttention (Xavier-uniform projections, zero biases).
    """

    def __init__(self, rm_dim: int, policy_dim: int, attn_dim: Optional[int] = None, num_heads: int = 1,
                 bias: bool = False, device=None, dtype=None):
        super().__init__()
        attn_dim = rm_dim if attn_dim is None else attn_dim
        for name, v in (("rm_dim", rm_dim), ("policy_dim", policy_dim), ("attn_dim", attn_dim), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if attn_dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide attn_dim={attn_dim}")
        self.rm_dim, self.policy_dim, self.attn_dim, self.num_heads = rm_dim, policy_dim, attn_dim, num_heads
        kw = dict(device=device, dtype=dtype)
        self.w_q = nn.Parameter(torch.empty(rm_dim, attn_dim, **kw))
        self.w_k = nn.Parameter(torch.empty(policy_dim, attn_dim, **kw))
        self.w_v = nn.Parameter(torch.empty(policy_dim, attn_dim, **kw))
        self.w_o = nn.Parameter(torch.empty(attn_dim, rm_dim, **kw))
        if bias:
            self.b_q = nn.Parameter(torch.empty(attn_dim, **kw))
            self.b_k = nn.Parameter(torch.empty(attn_dim, **kw))
            self.b_v = nn.Parameter(torch.empty(attn_dim, **kw))
            self.b_o = nn.Parameter(torch.empty(rm_dim, **kw))
        else:
            for name in ("b_q", "b_k", "b_v", "b_o"):
                self.register_parameter(name, None)
        self.reset_parameters()

    def reset_parameters(self):
        for w in (self.w_q, self.w_k, self.w_v):
            nn.init.xavier_uniform_(w)
        bound = 1.0 / math.sqrt(self.attn_dim)  # nn.Linear's default for the output projection
        nn.init.uniform_(self.w_o, -bound, bound)
        for b in (self.b_q, self.b_k, self.b_v, self.b_o):
            if b is not None:
                nn.init.zeros_(b)

    def forward(self, query: Tensor, states: Tensor, cu_seqlens: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        _check_widths(query, "query", self.rm_dim, states, "states", self.policy_dim)
        return seq_to_token_attention(
            query, states, self.w_q, self.w_k, self.w_v, self.w_o, cu_seqlens=cu_seqlens,
            key_padding_mask=key_padding_mask, num_heads=self.num_heads,
            b_q=self.b_q, b_k=self.b_k, b_v=self.b_v, b_o=self.b_o,
        )

    def weights(self) -> dict:
        """The keyword arguments of the functional ops (w_* and b_*, num_heads)."""
        return dict(w_q=self.w_q, w_k=self.w_k, w_v=self.w_v, w_o=self.w_o, b_q=self.b_q, b_k=self.b_k,
                    b_v=self.b_v, b_o=self.b_o, num_heads=self.num_heads)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> "PolicyFeedbackAttention":
        """Exact conversion of ``nn.MultiheadAttention(embed_dim, num_heads, kdim=D_p, vdim=D_p, batch_first=True)``.

        ``mha(q[:, None], h, h, key_padding_mask=m)[0][:, 0]`` equals the converted module's
        ``(q, h, key_padding_mask=m)`` (same 1/sqrt(head_dim) scaling), except rows with every
        key masked (NaN there, 0 here). Keys and values must share a width (both are the policy
        states). ``add_bias_kv`` and ``add_zero_attn`` are not supported; dropout is dropped
        (the converted module is deterministic, like ``mha.eval()``). Parameters are copied.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be an nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("mha: add_bias_kv and add_zero_attn are not supported")
        if mha.kdim != mha.vdim:
            raise ValueError(f"mha: kdim ({mha.kdim}) and vdim ({mha.vdim}) must be equal (both are the policy width)")
        e = mha.embed_dim
        w = mha.in_proj_weight
        has_bias = mha.in_proj_bias is not None
        ref = w if w is not None else mha.q_proj_weight
        mod = cls(e, mha.kdim, e, mha.num_heads, bias=has_bias, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = w[:e], w[e:2 * e], w[2 * e:]
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            mod.w_q.copy_(wq.t())
            mod.w_k.copy_(wk.t())
            mod.w_v.copy_(wv.t())
            mod.w_o.copy_(mha.out_proj.weight.t())
            if has_bias:
                bq, bk, bv = mha.in_proj_bias[:e], mha.in_proj_bias[e:2 * e], mha.in_proj_bias[2 * e:]
                mod.b_q.copy_(bq)
                mod.b_k.copy_(bk)
                mod.b_v.copy_(bv)
                if mha.out_proj.bias is not None:
                    mod.b_o.copy_(mha.out_proj.bias)
                else:
                    mod.b_o.zero_()
        return mod

    def extra_repr(self) -> str:
        return (f"rm_dim={self.rm_dim}, policy_dim={self.policy_dim}, attn_dim={self.attn_dim}, "
                f"num_heads={self.num_heads}, bias={self.b_q is not None}")


class R2MRewardHead(nn.Module):
    """R2M's reward head: r = φ(ω(t)·H + (1 − ω(t))·Ĥ), Ĥ = PolicyFeedbackAttention(H, h).

    Wraps a reward model's existing score head ``score`` (an ``nn.Linear(D_r, 1)``, e.g. the
    ``score`` of a Hugging Face ``*ForSequenceClassification``) and a
    :class:`PolicyFeedbackAttention`. Its trainable parameters are exactly the attention's and
    the score head's (R2M updates only those with the GREBT loss). The ω schedule
    ω(t) = max(½cos(πt/T) + ½, Ω): call :meth:`set_step` each RL step. The step is held twice:
    as the int64 buffer ``step`` (saved in the state dict, and the value a compiled forward reads,
    so ``set_step`` never recompiles a ``torch.compile``-d model) and as a Python int mirror that
    eager forwards read (ω a Python float there, no device sync). At ω = 1 (step 0) the attention
    gets exactly zero gradient: R2M starts there by design, so a head whose :meth:`set_step` was
    never called warns once (``RuntimeWarning``) the first time it runs with gradients at ω = 1.

    ``forward(hidden[B, D_r], states, cu_seqlens=None, key_padding_mask=None) -> rewards[B]``:
    with autograd recording (training the head) it runs the differentiable attention + score
    head; under ``torch.no_grad()`` / inference mode it runs the fused :func:`r2m_reward` kernel.
    """

    def __init__(self, score: nn.Linear, attention: Optional[PolicyFeedbackAttention] = None, *,
                 policy_dim: Optional[int] = None, attn_dim: Optional[int] = None, num_heads: int = 1,
                 bias: bool = False, total_steps: int = 1, floor: float = 0.6):
        super().__init__()
        if not isinstance(score, nn.Linear):
            raise TypeError(f"score must be an nn.Linear, got {type(score).__name__}")
        if score.out_features != 1:
            raise ValueError(f"score must have out_features=1 (a scalar reward head), got {score.out_features}")
        if attention is None:
            if policy_dim is None:
                raise ValueError("give attention= or policy_dim= to build one")
            attention = PolicyFeedbackAttention(score.in_features, policy_dim, attn_dim, num_heads, bias,
                                                device=score.weight.device, dtype=score.weight.dtype)
        if attention.rm_dim != score.in_features:
            raise ValueError(f"attention.rm_dim ({attention.rm_dim}) must equal score.in_features ({score.in_features})")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if not 0.0 <= float(floor) <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        self.score = score
        self.attention = attention
        self.total_steps = total_steps
        self.floor = float(floor)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=True)
        self._step = 0
        self._step_was_set = False
        self._warned_omega_one = False

    def set_step(self, step: int) -> None:
        """Set the RL step t (0 ≤ t; past total_steps ω stays at the floor).

        Writes the ``step`` buffer in place (``fill_``: no new tensor, so a compiled forward that
        reads it does not recompile) and the Python mirror eager forwards read. A 0-d integer
        tensor is accepted too (read back to the host once)."""
        if isinstance(step, Tensor) and step.dim() == 0 and not step.is_floating_point() \
                and not step.is_complex() and step.dtype != torch.bool:
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self._step_was_set = True
        with torch.no_grad():
            self.step.fill_(step)
        self._step = step
        self._step_seen = self._buffer_version()

    def _buffer_version(self):
        """(buffer object id, version counter): changes whenever the ``step`` buffer is written in
        place (load_state_dict, Hugging Face's from_pretrained, ``.to()``) or replaced. Host-only."""
        try:
            return id(self.step), self.step._version
        except RuntimeError:  # inference tensors have no version counter
            return None

    def _sync_step(self) -> int:
        """The Python mirror of the ``step`` buffer, re-read (one host read) only when the buffer
        changed behind :meth:`set_step`'s back, e.g. a checkpoint loaded by from_pretrained."""
        v = self._buffer_version()
        if v is None or v != getattr(self, "_step_seen", None):
            self._step = int(self.step)
            self._step_seen = v
            if self._step:
                self._step_was_set = True
        return self._step

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._step_was_set = getattr(self, "_step_was_set", False) or (prefix + "step") in state_dict
        self._sync_step()

    @property
    def omega(self) -> float:
        return r2m_omega(self._sync_step(), self.total_steps, self.floor)

    def omega_tensor(self) -> Tensor:
        """ω(t) from the ``step`` buffer: a 0-d float64 tensor on the buffer's device (what a
        compiled forward uses; no host read, no guard on the step)."""
        t = torch.minimum(self.step.to(torch.float64), torch.full((), float(self.total_steps), dtype=torch.float64,
                                                                  device=self.step.device))
        return torch.clamp(0.5 * torch.cos(t * (math.pi / self.total_steps)) + 0.5, min=self.floor)

    def _current_omega(self):
        """Eager: the Python float of :attr:`omega` (unchanged float path). Under torch.compile:
        :meth:`omega_tensor`, so the step is graph data rather than a guarded constant."""
        if torch.compiler.is_compiling():
            return self.omega_tensor()
        omega = self.omega
        if (omega == 1.0 and torch.is_grad_enabled() and not getattr(self, "_step_was_set", True)
                and not getattr(self, "_warned_omega_one", False)
                and any(p.requires_grad for p in self.attention.parameters())):
            self._warned_omega_one = True
            import warnings

            warnings.warn(
                f"R2MRewardHead: set_step() was never called, so the step is 0 and omega = 1 "
                f"(total_steps={self.total_steps}): the reward ignores the policy-feedback attention and the "
                f"attention gets exactly zero gradient. Call head.set_step(t) (model.score.set_step(t) on a "
                f"patched Hugging Face model) at every RL step t of total_steps.", RuntimeWarning, stacklevel=3)
        return omega

    def forward(self, hidden: Tensor, states: Tensor, cu_seqlens: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        _check_widths(hidden, "hidden", self.attention.rm_dim, states, "states", self.attention.policy_dim)
        omega = self._current_omega()
        if torch.is_grad_enabled():
            h_hat = self.attention(hidden, states, cu_seqlens=cu_seqlens, key_padding_mask=key_padding_mask)
            return self.score(omega * hidden + (1.0 - omega) * h_hat).squeeze(-1)
        return r2m_reward(
            hidden, states, **self.attention.weights(), score_weight=self.score.weight, score_bias=self.score.bias,
            omega=omega, cu_seqlens=cu_seqlens, key_padding_mask=key_padding_mask,
        ).to(hidden.dtype)

    def extra_repr(self) -> str:
        return f"total_steps={self.total_steps}, floor={self.floor}, step={self._sync_step()}"
