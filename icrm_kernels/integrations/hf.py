"""R2M and ICRM heads on Hugging Face reward models, patched in place.

Take any ``*ForSequenceClassification`` reward model whose reward head is a linear ``score``
layer (Llama, Qwen2, Mistral, Gemma2, GPTNeoX/Pythia, and every other family built on
transformers' ``GenericForSequenceClassification``) and swap in a head::

    from transformers import AutoModelForSequenceClassification
    from icrm_kernels.integrations.hf import apply_r2m, apply_icrm, load_pretrained

    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    apply_r2m(rm, policy_dim=4096, attn_dim=2048, total_steps=1000)   # or apply_icrm(rm)
    rm.score.set_step(t)                                               # R2M: each RL step
    out = rm(input_ids, attention_mask, policy_states=h, policy_cu_seqlens=cu)
    reward = out.logits[:, 0]
    rm.save_pretrained(d); rm2 = load_pretrained(d)                    # same outputs

What the patch does (the model stays an instance of its own class):

- ``model.score`` becomes the head: :class:`R2MScoreHead` (an
  :class:`~icrm_kernels.nn.R2MRewardHead` that holds the original ``score`` layer as
  ``score.linear`` plus the :class:`~icrm_kernels.nn.PolicyFeedbackAttention`) or
  :class:`~icrm_kernels.nn.BetaRewardHead` (the old ``score`` weights become its mean head).
- The head's settings go into ``model.config.icrm`` (a JSON-able dict, saved in config.json), so
  :func:`load_pretrained`, or plain ``from_pretrained`` after :func:`patch_model_class` /
  ``apply_icrm_heads_to_<family>()`` (the Liger-Kernel pattern: patch the class before the model
  is built), rebuild the same head and load its weights.
- ``model.forward`` is replaced on the instance (not the class: other models of the class are
  untouched) by a forward that runs the backbone, pools the reward token exactly as the HF head
  does (the last position whose token is not ``pad_token_id``, left or right padding; position
  -1 without a pad token at batch size 1), and applies the head. It accepts the usual HF inputs
  (``input_ids``, ``attention_mask``, ``position_ids``, ``inputs_embeds``, ``labels``,
  ``return_dict``, and anything else the backbone takes, passed through) and returns a
  :class:`~transformers.modeling_outputs.SequenceClassifierOutput` (R2M) or an
  :class:`ICRMSequenceClassifierOutput` (ICRM) whose ``logits[:, 0]`` is the reward: what TRL
  reads (``reward_model(**inputs).logits[:, 0]``).
- Nothing is frozen: ``requires_grad`` of the backbone (and of any LoRA weights) is left as it
  was; the head's parameters are trainable. R2M's recipe trains only the head:
  ``model.requires_grad_(False); model.score.requires_grad_(True)``.

PEFT, both orders. ``apply_*`` on a ``PeftModel`` patches the underlying model, keeps LoRA
trainable and registers ``score`` (the whole head) as a module to save, so ``save_pretrained``
writes the head with the adapter. ``apply_*`` first, then ``get_peft_model(model,
LoraConfig(..., modules_to_save=["score"]))`` (``task_type="SEQ_CLS"`` adds ``score`` by
itself) works too. To reload: rebuild the patched base (``load_pretrained`` of a saved patched
model, or ``apply_*`` with the same arguments on the base), then
``PeftModel.from_pretrained(base, adapter_dir)``. The inner linear layer of the R2M head is
called ``linear``, not ``score``, because PEFT matches ``modules_to_save`` names by suffix.

``transformers`` is imported lazily: this module imports without it (only the functions that
need it raise ImportError).
"""
from __future__ import annotations

import dataclasses
import math
import types
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from icrm_kernels.nn.attention import PolicyFeedbackAttention, R2MRewardHead, _check_widths
from icrm_kernels.nn.beta import BetaRewardHead
from icrm_kernels.ops.attention import r2m_reward
from icrm_kernels.ops.beta import STATISTICS, beta_elbo_loss, beta_from_logits, beta_stats

__all__ = [
    "CONFIG_KEY",
    "ICRMSequenceClassifierOutput",
    "R2MScoreHead",
    "SUPPORTED_MODEL_TYPES",
    "apply_icrm",
    "apply_icrm_heads_to_gemma2",
    "apply_icrm_heads_to_gpt_neox",
    "apply_icrm_heads_to_llama",
    "apply_icrm_heads_to_mistral",
    "apply_icrm_heads_to_qwen2",
    "apply_r2m",
    "format_demonstrations",
    "get_head",
    "load_pretrained",
    "patch_model_class",
]

CONFIG_KEY = "icrm"
"""``model.config.icrm``: the head's settings, ``{"head": "r2m" | "beta", ...}``."""

SUPPORTED_MODEL_TYPES = {
    "llama": "LlamaForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "mistral": "MistralForSequenceClassification",
    "gemma2": "Gemma2ForSequenceClassification",
    "gpt_neox": "GPTNeoXForSequenceClassification",
}
"""Model types tested here (tiny configs). Any ``*ForSequenceClassification`` with a linear
``score`` head and a ``base_model`` returning ``last_hidden_state`` works the same way."""


# ------------------------------------------------------------------------------------------ heads
class R2MScoreHead(R2MRewardHead):
    """R2M's head as a Hugging Face ``score`` module: the original linear ``score`` layer (kept
    as ``self.linear``; ``self.score`` is an alias) and a :class:`PolicyFeedbackAttention`.

    ``forward(hidden_states[B, S, D], pool_index[B], policy_states, cu_seqlens=None,
    key_padding_mask=None) -> logits[B, 1]`` (hidden_states' dtype):
    r = ω·φ(H) + (1 − ω)·φ(Ĥ), with H = hidden_states[b, pool_index[b]], Ĥ the attention over
    the policy states and φ the linear layer. This equals R2M's φ(ω·H + (1 − ω)·Ĥ) (φ is affine
    and the weights sum to 1); φ(H) is computed as the HF head computes it (the linear layer over
    every position, then the pooled row), so at ω = 1 the logits are bit-identical to the
    unpatched model's. The blend runs in fp32 (fp64 for fp64 models) and is cast back. With
    gradients: the differentiable attention; without: the fused :func:`r2m_reward` kernel.
    """

    def __init__(self, score: nn.Linear, attention: Optional[PolicyFeedbackAttention] = None, **kwargs):
        super().__init__(score, attention, **kwargs)
        # PEFT matches modules_to_save by name suffix: an inner module called "score" would be
        # wrapped a second time, inside the head's own ModulesToSaveWrapper
        self.linear = self._modules.pop("score")

    @property
    def score(self) -> nn.Linear:  # R2MRewardHead's name for the linear layer
        return self._modules["linear"]

    def forward(self, hidden_states: Tensor, pool_index: Tensor, policy_states: Tensor,
                cu_seqlens: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        b = hidden_states.shape[0]
        rows = torch.arange(b, device=hidden_states.device)
        base = self.linear(hidden_states)[rows, pool_index]  # [B, 1], as the HF head pools it
        h = hidden_states[rows, pool_index]
        _check_widths(h, "hidden_states", self.attention.rm_dim, policy_states, "policy_states",
                      self.attention.policy_dim)
        omega = self._current_omega()
        if torch.is_grad_enabled():
            att = self.attention(h, policy_states, cu_seqlens=cu_seqlens, key_padding_mask=key_padding_mask)
            s_hat = self.linear(att)[:, 0]
        else:
            s_hat = r2m_reward(h, policy_states, **self.attention.weights(), score_weight=self.linear.weight,
                               score_bias=self.linear.bias, omega=0.0, cu_seqlens=cu_seqlens,
                               key_padding_mask=key_padding_mask)
        acc = torch.promote_types(base.dtype, torch.float32)
        r = omega * base[:, 0].to(acc) + (1.0 - omega) * s_hat.to(acc)
        return r.to(base.dtype)[:, None]


_OUTPUT_CLS = []


def _icrm_output_cls():
    """ICRMSequenceClassifierOutput, built on first use (it subclasses a transformers class)."""
    if _OUTPUT_CLS:
        return _OUTPUT_CLS[0]
    from transformers.modeling_outputs import SequenceClassifierOutput

    @dataclasses.dataclass
    class ICRMSequenceClassifierOutput(SequenceClassifierOutput):
        """``SequenceClassifierOutput`` plus the Beta posterior: ``logits[B, 1]`` is the chosen
        :class:`~icrm_kernels.BetaStats` field (the reward), ``alpha``/``beta`` are ``[B]``."""

        alpha: Optional[torch.FloatTensor] = None
        beta: Optional[torch.FloatTensor] = None

    ICRMSequenceClassifierOutput.__module__ = __name__
    ICRMSequenceClassifierOutput.__qualname__ = "ICRMSequenceClassifierOutput"
    _OUTPUT_CLS.append(ICRMSequenceClassifierOutput)
    return ICRMSequenceClassifierOutput


def __getattr__(name):  # ``from icrm_kernels.integrations.hf import ICRMSequenceClassifierOutput``
    if name == "ICRMSequenceClassifierOutput":
        return _icrm_output_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------- model access
def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _is_mts_wrapper(module) -> bool:
    """PEFT's ModulesToSaveWrapper (duck-typed: peft need not be installed)."""
    return hasattr(module, "original_module") and hasattr(module, "modules_to_save")


def _active_copy(wrapper) -> nn.Module:
    active = getattr(wrapper, "active_adapters", None) or [getattr(wrapper, "active_adapter", None)]
    for name in active:
        if name is not None and name in wrapper.modules_to_save:
            return wrapper.modules_to_save[name]
    return wrapper.original_module


def _hf_model(model):
    """(the transformers model, the PeftModel around it or None)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a Hugging Face *ForSequenceClassification model (an nn.Module), "
                        f"got {type(model).__name__}")
    if _is_peft(model):
        return model.get_base_model(), model
    return model, None


def get_head(model) -> nn.Module:
    """The head module of a patched model (through a PeftModel and PEFT's ModulesToSaveWrapper:
    the active adapter's trainable copy): an :class:`R2MScoreHead` or a ``BetaRewardHead``."""
    hf, _ = _hf_model(model)
    score = getattr(hf, "score", None)
    if score is None:
        raise ValueError(f"model ({type(hf).__name__}) has no `score` head")
    return _active_copy(score) if _is_mts_wrapper(score) else score


def _spec(model) -> Optional[Dict[str, Any]]:
    cfg = getattr(model, "config", None)
    spec = getattr(cfg, CONFIG_KEY, None) if cfg is not None else None
    return spec if isinstance(spec, dict) and spec.get("head") in ("r2m", "beta") else None


def _score_linear(hf, fn: str) -> nn.Linear:
    """The model's linear score layer (unwrapped from PEFT's ModulesToSaveWrapper: its trainable
    copy), with the checks every apply_* shares."""
    if _spec(hf) is not None and not isinstance(getattr(hf, "score", None), nn.Linear):
        raise ValueError(f"model: {type(hf).__name__} already has a {_spec(hf)['head']!r} head "
                         f"(model.config.{CONFIG_KEY}); apply one head to an unpatched model")
    if not hasattr(hf, "score"):
        heads = [n for n in ("classifier", "v_head", "summary") if hasattr(hf, n)]
        extra = f" (it has {heads[0]!r}; only a linear `score` head is supported)" if heads else ""
        raise ValueError(
            f"model: {fn} needs a *ForSequenceClassification model whose reward head is a linear `score` "
            f"layer (Llama, Qwen2, Mistral, Gemma2, GPTNeoX, ...); {type(hf).__name__} has no `score`{extra}")
    score = hf.score
    if _is_mts_wrapper(score):
        score = _active_copy(score)
    if not isinstance(score, nn.Linear):
        raise ValueError(f"model: {fn} needs `score` to be an nn.Linear, got {type(score).__name__}")
    if score.out_features != 1:
        raise ValueError(f"model: {fn} needs a scalar reward model (num_labels=1, score.out_features == 1), "
                         f"got score.out_features = {score.out_features}")
    base = getattr(hf, "base_model", None)
    if base is None or base is hf:
        raise ValueError(f"model: {type(hf).__name__} does not expose its backbone as `base_model`")
    return score


def _register_with_peft(peft_model) -> None:
    """After the head replaced ``score`` under a PeftModel: wrap it in PEFT's ModulesToSaveWrapper
    (trainable, saved with the adapter) for every adapter, and list it in the adapter configs."""
    from peft.utils.other import _set_trainable

    for name, cfg in peft_model.peft_config.items():
        mts = getattr(cfg, "modules_to_save", None)
        if mts is None:
            cfg.modules_to_save = ["score"]
        elif "score" not in mts:
            mts.append("score")
        _set_trainable(peft_model, name, module_names=["score"], inference_mode=bool(getattr(cfg, "inference_mode",
                                                                                                False)))
        if getattr(peft_model, "modules_to_save", None) is None:
            peft_model.modules_to_save = set()
        peft_model.modules_to_save.add("score")
    active = peft_model.active_adapter
    score = peft_model.get_base_model().score
    if _is_mts_wrapper(score):
        score.set_adapter(active)


# ------------------------------------------------------------------------------------- checks
def _check_int(v, name, *, optional=False):
    if optional and v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _check_policy(states, cu, mask, batch: int, policy_dim: int, like: Tensor):
    """policy_states packed [T, D_p] + policy_cu_seqlens [B+1], or padded [B, L, D_p] (+ bool
    policy_padding_mask [B, L], True = ignore). Cast to the model's dtype."""
    if states is None:
        raise ValueError("policy_states is required by the R2M head: the policy's hidden states, packed [T, D_p] "
                         "with policy_cu_seqlens [B+1], or padded [B, L, D_p] with an optional policy_padding_mask")
    if not isinstance(states, Tensor):
        raise TypeError(f"policy_states must be a torch.Tensor, got {type(states).__name__}")
    if not states.is_floating_point():
        raise TypeError(f"policy_states must be a floating tensor, got {states.dtype}")
    if states.device != like.device:
        raise ValueError(f"policy_states is on {states.device} but the model runs on {like.device}")
    if states.dim() not in (2, 3) or states.shape[-1] != policy_dim:
        raise ValueError(f"policy_states must be packed [T, policy_dim={policy_dim}] or padded "
                         f"[B, L, policy_dim={policy_dim}], got shape {tuple(states.shape)}")
    if states.dim() == 2:
        if mask is not None:
            raise ValueError("policy_padding_mask goes with padded policy_states [B, L, D_p]; packed "
                             "policy_states [T, D_p] take policy_cu_seqlens")
        if cu is None:
            raise ValueError("policy_cu_seqlens is required with packed policy_states [T, D_p] "
                             "(offsets [B+1], int32/int64, flash-attn's convention)")
        if not isinstance(cu, Tensor) or cu.dim() != 1:
            raise ValueError(f"policy_cu_seqlens must be a 1-D int tensor [B+1], got "
                             f"{type(cu).__name__ if not isinstance(cu, Tensor) else tuple(cu.shape)}")
        if cu.numel() != batch + 1:
            raise ValueError(f"policy_cu_seqlens has {cu.numel()} entries, i.e. {cu.numel() - 1} policy sequences, "
                             f"but the batch has {batch} sequences (need {batch + 1} offsets)")
    else:
        if cu is not None:
            raise ValueError("policy_cu_seqlens goes with packed policy_states [T, D_p]; padded policy_states "
                             "[B, L, D_p] take policy_padding_mask")
        if states.shape[0] != batch:
            raise ValueError(f"policy_states has {states.shape[0]} sequences but the batch has {batch}")
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError("policy_padding_mask must be a bool tensor [B, L] (True = ignore, like "
                                "nn.MultiheadAttention's key_padding_mask)")
            if tuple(mask.shape) != tuple(states.shape[:2]):
                raise ValueError(f"policy_padding_mask must be [B, L] = {tuple(states.shape[:2])}, "
                                 f"got {tuple(mask.shape)}")
    return states.to(like.dtype), cu, mask


# ------------------------------------------------------------------------------------ forward
def _backbone(self, input_ids, attention_mask, position_ids, inputs_embeds, kwargs):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.pop("return_dict", None)
    out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          inputs_embeds=inputs_embeds, **kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden, out


def _pool_index(self, input_ids, hidden: Tensor):
    """The HF heads' rule: the rightmost token that is not pad_token_id (left or right padding)."""
    cfg = self.config
    pad = cfg.get_text_config().pad_token_id if hasattr(cfg, "get_text_config") else getattr(cfg, "pad_token_id", None)
    batch = hidden.shape[0]
    if pad is None and batch != 1:
        raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined (config.pad_token_id).")
    if pad is None or input_ids is None:
        return torch.full((batch,), hidden.shape[1] - 1, dtype=torch.long, device=hidden.device)
    non_pad = (input_ids != pad).to(hidden.device, torch.int32)
    idx = torch.arange(input_ids.shape[-1], device=hidden.device, dtype=torch.int32)
    return (idx * non_pad).argmax(-1)


def _finish(out, return_dict):
    return out.to_tuple() if return_dict is False else out


def _r2m_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                 policy_states=None, policy_cu_seqlens=None, policy_padding_mask=None, return_dict=None, **kwargs):
    """Patched forward of an R2M reward model (see :func:`apply_r2m`)."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    if policy_states is None:
        _check_policy(None, None, None, 0, 0, torch.empty(0))
    hidden, out = _backbone(self, input_ids, attention_mask, position_ids, inputs_embeds, kwargs)
    spec = self.config.icrm
    states, cu, mask = _check_policy(policy_states, policy_cu_seqlens, policy_padding_mask, hidden.shape[0],
                                     spec["policy_dim"], hidden)
    idx = _pool_index(self, input_ids, hidden)
    logits = self.score(hidden, idx, states, cu, mask)
    loss = None
    if labels is not None:
        loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
    return _finish(SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=getattr(out, "hidden_states", None),
                                            attentions=getattr(out, "attentions", None)), return_dict)


def _icrm_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
                  return_dict=None, **kwargs):
    """Patched forward of an ICRM reward model (see :func:`apply_icrm`)."""
    hidden, out = _backbone(self, input_ids, attention_mask, position_ids, inputs_embeds, kwargs)
    idx = _pool_index(self, input_ids, hidden)
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    two = self.score(h)  # [B, 2]
    if self.score.output == "logits":
        alpha, beta = beta_from_logits(two[:, 0], two[:, 1], self.score.tau_min)
    else:
        alpha, beta = two.unbind(-1)
    reward = getattr(beta_stats(alpha, beta), self.config.icrm["reward"])
    loss = None
    if labels is not None:
        loss = beta_elbo_loss(alpha, beta, labels.reshape(alpha.shape).to(alpha.dtype))
    return _finish(_icrm_output_cls()(loss=loss, logits=reward[:, None], hidden_states=getattr(out, "hidden_states", None),
                       attentions=getattr(out, "attentions", None), alpha=alpha, beta=beta), return_dict)


def _own_config(hf) -> None:
    """Models built from one config object share it: give the patched model its own copy, so
    that ``config.icrm`` does not leak into the others (nor into models built from it later)."""
    import copy

    hf.config = copy.deepcopy(hf.config)


def _bind(hf, fwd) -> None:
    hf.forward = types.MethodType(fwd, hf)


def _install_from_config(hf, spec: Dict[str, Any]) -> None:
    """Rebuild the head recorded in config.icrm on a freshly constructed model (weights are
    loaded afterwards by from_pretrained). Idempotent."""
    if not isinstance(getattr(hf, "score", None), nn.Linear):
        return  # already installed (a patched subclass's __init__ ran ours too)
    score = hf.score
    if spec["head"] == "r2m":
        hf.score = R2MScoreHead(score, policy_dim=spec["policy_dim"], attn_dim=spec.get("attn_dim"),
                                num_heads=spec.get("num_heads", 1), bias=spec.get("bias", False),
                                total_steps=spec["total_steps"], floor=spec.get("floor", 0.6))
        _bind(hf, _r2m_forward)
    else:
        head = BetaRewardHead(score.in_features, tau_min=spec.get("tau_min", 1e-2),
                              bias=spec.get("bias", score.bias is not None),
                              device=score.weight.device, dtype=score.weight.dtype)
        hf.score = head
        _bind(hf, _icrm_forward)


def _rebind_if_needed(hf) -> None:
    """``copy.deepcopy`` rebinds the instance forward; pickling does not keep it: reinstall."""
    spec = _spec(hf)
    if spec is not None and not isinstance(hf.__dict__.get("forward"), types.MethodType):
        _bind(hf, _r2m_forward if spec["head"] == "r2m" else _icrm_forward)


# --------------------------------------------------------------------------------- public API
def apply_r2m(model, *, policy_dim: int, attn_dim: Optional[int] = None, num_heads: int = 1, bias: bool = False,
              total_steps: int, floor: float = 0.6):
    """Patch R2M's policy-feedback head into a HF reward model **in place**; returns ``model``.

    model: a ``*ForSequenceClassification`` with a linear ``score`` head and ``num_labels=1``
    (Llama, Qwen2, Mistral, Gemma2, GPTNeoX, ...), or a ``PeftModel`` around one (LoRA stays
    trainable; the head is registered in ``modules_to_save``). policy_dim: the policy's hidden
    width D_p. attn_dim (default: the RM's hidden width), num_heads, bias: the attention's shape
    (R2M: one head, 2048, no biases). total_steps: T of the ω schedule
    ω(t) = max(½cos(πt/T) + ½, floor), required: call ``model.score.set_step(t)`` every RL step
    (a tensor buffer: a compiled model does not recompile). The attention is created in the score
    layer's dtype and device (Xavier init).

    The patched forward takes ``policy_states`` packed ``[T, D_p]`` with ``policy_cu_seqlens
    [B+1]``, or padded ``[B, L, D_p]`` with an optional bool ``policy_padding_mask [B, L]``
    (True = ignore); they are cast to the model's dtype. Missing policy states raise a ValueError
    naming ``policy_states``; a wrong width or number of sequences raises naming the argument.
    Returns ``SequenceClassifierOutput(logits[B, 1])``, ``logits[:, 0]`` the reward; at ω = 1
    (step 0) it equals the unpatched model's logits exactly. ``labels`` give HF's regression loss.
    A sequence with no policy tokens has Ĥ = 0, so its reward is φ(ω·H) (as in
    :class:`~icrm_kernels.nn.R2MRewardHead`, see docs/attention.md).
    """
    hf, peft_model = _hf_model(model)
    score = _score_linear(hf, "apply_r2m")
    policy_dim = _check_int(policy_dim, "policy_dim")
    attn_dim = _check_int(attn_dim, "attn_dim", optional=True)
    num_heads = _check_int(num_heads, "num_heads")
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"total_steps must be a positive int (the RL run's length T), got {total_steps!r}")
    head = R2MScoreHead(score, policy_dim=policy_dim, attn_dim=attn_dim, num_heads=num_heads, bias=bias,
                        total_steps=total_steps, floor=floor)
    if total_steps == 1:
        warnings.warn("apply_r2m: total_steps=1 puts omega at the floor from step 1 on and at 1 at step 0; "
                      "pass the RL run's length and call model.score.set_step(t) every step", RuntimeWarning,
                      stacklevel=2)
    hf.score = head
    _own_config(hf)
    hf.config.icrm = {"head": "r2m", "policy_dim": policy_dim, "attn_dim": head.attention.attn_dim,
                      "num_heads": num_heads, "bias": bias, "total_steps": total_steps, "floor": head.floor}
    _bind(hf, _r2m_forward)
    if peft_model is not None:
        _register_with_peft(peft_model)
    return model


def apply_icrm(model, *, tau_min: float = 1e-2, reward: str = "mean"):
    """Patch ICRM's Beta head into a HF reward model **in place**; returns ``model``.

    ``score`` becomes a :class:`~icrm_kernels.nn.BetaRewardHead` whose mean head starts from the
    old score weights (the initial mean logit is the old reward) and whose concentration head
    starts at zero weights (bias ``conc_init`` = 2 when the old score had a bias; HF's ``score``
    has none, so the initial concentration logit is 0). tau_min: floor on α + β. reward: the
    :class:`~icrm_kernels.BetaStats` field returned as ``logits[:, 0]`` (``"mean"`` = posterior
    mean of P(preferred), default; ``"logit_mean"``, ``"log_mean"``, ...); change it later with
    ``model.config.icrm["reward"] = ...``.

    The patched forward returns :class:`ICRMSequenceClassifierOutput` with ``logits[B, 1]`` (the
    reward statistic), ``alpha[B]`` and ``beta[B]``; ``labels`` (``[B]`` in [0, 1], 1 = preferred)
    give ICRM's ELBO loss (:func:`~icrm_kernels.beta_elbo_loss`, prior Beta(1, 1), mean). The
    model's config keeps ``num_labels = 1`` (one logit). For pairs use
    ``get_head(model).score_pair(h_a, h_b)``. Works under PEFT as :func:`apply_r2m` does.
    """
    hf, peft_model = _hf_model(model)
    score = _score_linear(hf, "apply_icrm")
    if not isinstance(reward, str) or reward not in STATISTICS:
        raise ValueError(f"reward must be one of the BetaStats fields {STATISTICS}, got {reward!r}")
    head = BetaRewardHead.from_score(score, tau_min=tau_min)
    hf.score = head
    _own_config(hf)
    hf.config.icrm = {"head": "beta", "tau_min": head.tau_min, "reward": reward, "bias": score.bias is not None}
    _bind(hf, _icrm_forward)
    if peft_model is not None:
        _register_with_peft(peft_model)
    return model


def patch_model_class(cls):
    """Patch a ``*ForSequenceClassification`` class (idempotent) so that a model built from a
    config holding ``config.icrm`` gets that head at construction: ``from_pretrained`` then loads
    the head's weights like any other. Models without ``config.icrm`` are unchanged. Returns cls."""
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise TypeError(f"cls must be a model class, got {cls!r}")
    if cls.__dict__.get("_icrm_patched", False):
        return cls
    orig_init = cls.__init__

    def __init__(self, config, *args, **kwargs):
        orig_init(self, config, *args, **kwargs)
        spec = _spec(self)
        if spec is not None:
            _install_from_config(self, spec)

    __init__.__wrapped__ = orig_init
    cls.__init__ = __init__
    cls._icrm_patched = True
    return cls


def _patch_family(model_type: str):
    import transformers

    return patch_model_class(getattr(transformers, SUPPORTED_MODEL_TYPES[model_type]))


def apply_icrm_heads_to_llama():
    """Patch ``LlamaForSequenceClassification`` (see :func:`patch_model_class`)."""
    return _patch_family("llama")


def apply_icrm_heads_to_qwen2():
    """Patch ``Qwen2ForSequenceClassification`` (see :func:`patch_model_class`)."""
    return _patch_family("qwen2")


def apply_icrm_heads_to_mistral():
    """Patch ``MistralForSequenceClassification`` (see :func:`patch_model_class`)."""
    return _patch_family("mistral")


def apply_icrm_heads_to_gemma2():
    """Patch ``Gemma2ForSequenceClassification`` (see :func:`patch_model_class`)."""
    return _patch_family("gemma2")


def apply_icrm_heads_to_gpt_neox():
    """Patch ``GPTNeoXForSequenceClassification`` (Pythia; see :func:`patch_model_class`)."""
    return _patch_family("gpt_neox")


def _seq_cls_class(config):
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and name.endswith("ForSequenceClassification"):
            return cls
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    try:
        return MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"path: no *ForSequenceClassification class for model type "
                         f"{getattr(config, 'model_type', None)!r}") from None


def load_pretrained(path, **from_pretrained_kwargs):
    """Rebuild a model saved with ``save_pretrained`` after :func:`apply_r2m` / :func:`apply_icrm`.

    Reads ``config.icrm`` from ``path`` (a directory or a hub id resolvable offline), patches the
    model's class (:func:`patch_model_class`) and calls ``cls.from_pretrained(path, **kwargs)``
    (e.g. ``dtype=``, ``device_map=``): the head, its settings and its weights (R2M's step too)
    come back, so outputs are identical. A path without ``config.icrm`` raises ValueError. For a
    PEFT adapter directory, rebuild its base with this function, then
    ``PeftModel.from_pretrained(base, adapter_dir)``.
    """
    from transformers import AutoConfig

    config = from_pretrained_kwargs.pop("config", None)
    if config is None:
        cfg_kw = {k: from_pretrained_kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token",
                                                          "trust_remote_code", "subfolder")
                  if k in from_pretrained_kwargs}
        config = AutoConfig.from_pretrained(path, **cfg_kw)
    spec = getattr(config, CONFIG_KEY, None)
    if not isinstance(spec, dict) or spec.get("head") not in ("r2m", "beta"):
        raise ValueError(f"path: {path} holds no R2M/ICRM head (config.{CONFIG_KEY} is missing); load it with "
                         f"from_pretrained and call apply_r2m/apply_icrm")
    cls = patch_model_class(_seq_cls_class(config))
    model = cls.from_pretrained(path, config=config, **from_pretrained_kwargs)
    _rebind_if_needed(model)
    # the loaded head's tensors may be zero-copy views of the memory-mapped checkpoint, at
    # offsets that change the CPU kernels' vectorisation (last-bit differences): own them
    head = model.score
    with torch.no_grad():
        for t in list(head.parameters()) + list(head.buffers()):
            t.data = t.data.clone()
    return model


# ------------------------------------------------------------------------ in-context prompts
PLAIN_TEMPLATE = {
    "header": "The following demonstrations show which response this user preferred.\n\n",
    "demo": "### Demonstration {i}\nPrompt: {prompt}\nPreferred response: {chosen}\nRejected response: {rejected}\n\n",
    "query": "### Query\nPrompt: {prompt}\nResponse: {response}",
}
"""The plain template of :func:`format_demonstrations` (used when the tokenizer has no chat template)."""

_SYSTEM = "Judge the final response by the preferences this user revealed in the demonstrations."


def _triple(d, i):
    if isinstance(d, dict):
        try:
            return str(d["prompt"]), str(d["chosen"]), str(d["rejected"])
        except KeyError as exc:
            raise ValueError(f"demonstrations[{i}] must have keys 'prompt', 'chosen', 'rejected' (missing {exc})") from None
    if isinstance(d, (tuple, list)) and len(d) == 3:
        return tuple(str(x) for x in d)
    raise TypeError(f"demonstrations[{i}] must be a (prompt, chosen, rejected) tuple or a dict with those keys, "
                    f"got {type(d).__name__}")


def format_demonstrations(demonstrations: Sequence, query, tokenizer=None, *, use_chat_template: Optional[bool] = None,
                          system: Optional[str] = _SYSTEM) -> str:
    """Format k in-context preference demonstrations and a query for an ICRM reward model.

    demonstrations: k items, each ``(prompt, chosen, rejected)`` or a dict with those keys, oldest
    first (k = 0 is allowed: the query alone). query: ``(prompt, response)`` or a dict with keys
    ``prompt``/``response``: the response the reward model scores. Returns one string; tokenize
    it as usual (``tokenizer(text, return_tensors="pt")``) and feed the model: the reward token
    is the last one.

    With a tokenizer that has a chat template (and ``use_chat_template`` not False), each
    demonstration is a user turn ("Prompt: ...\\nResponse A: ...\\nResponse B: ...", chosen as A)
    answered by an assistant turn "Preferred: A", then the query prompt as a user turn and the
    response as the assistant turn; ``system`` (None to drop it) opens the conversation, folded
    into the first user turn when the template rejects a system role. Otherwise
    :data:`PLAIN_TEMPLATE`: a header line, then per demonstration
    ``### Demonstration i / Prompt: / Preferred response: / Rejected response:``, then
    ``### Query / Prompt: / Response:``. Demonstration order is kept (the newest last), as
    :func:`~icrm_kernels.beta_posterior`'s discount assumes.
    """
    if isinstance(demonstrations, (str, bytes)) or not hasattr(demonstrations, "__iter__"):
        raise TypeError(f"demonstrations must be a sequence of (prompt, chosen, rejected), got "
                        f"{type(demonstrations).__name__}")
    demos = [_triple(d, i) for i, d in enumerate(demonstrations)]
    if isinstance(query, dict):
        try:
            qp, qr = str(query["prompt"]), str(query["response"])
        except KeyError as exc:
            raise ValueError(f"query must have keys 'prompt' and 'response' (missing {exc})") from None
    elif isinstance(query, (tuple, list)) and len(query) == 2:
        qp, qr = (str(x) for x in query)
    else:
        raise TypeError(f"query must be a (prompt, response) pair or a dict with those keys, got {type(query).__name__}")
    has_template = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    if use_chat_template and not has_template:
        raise ValueError("use_chat_template=True but tokenizer has no chat_template")
    if has_template and use_chat_template is not False:
        turns = []
        for p, c, r in demos:
            turns.append({"role": "user", "content": f"Prompt: {p}\nResponse A: {c}\nResponse B: {r}"})
            turns.append({"role": "assistant", "content": "Preferred: A"})
        turns.append({"role": "user", "content": qp})
        turns.append({"role": "assistant", "content": qr})
        if system:
            try:
                return tokenizer.apply_chat_template([{"role": "system", "content": system}] + turns, tokenize=False)
            except Exception:  # templates without a system role raise (e.g. Gemma's)
                turns[0] = dict(turns[0], content=f"{system}\n\n{turns[0]['content']}")
        return tokenizer.apply_chat_template(turns, tokenize=False)
    text = PLAIN_TEMPLATE["header"]
    for i, (p, c, r) in enumerate(demos, 1):
        text += PLAIN_TEMPLATE["demo"].format(i=i, prompt=p, chosen=c, rejected=r)
    return text + PLAIN_TEMPLATE["query"].format(prompt=qp, response=qr)
