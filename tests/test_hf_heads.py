"""R2M and ICRM heads patched into Hugging Face reward models (icrm_kernels.integrations.hf).

Tiny models built from configs (no downloads), five families; PEFT in both orders; save and
reload; torch.compile without a recompile per RL step; hostile inputs named.
"""
import json
import warnings

import pytest
import torch

from conftest import counting_compile

transformers = pytest.importorskip("transformers")

from icrm_kernels import beta_stats  # noqa: E402
from icrm_kernels.integrations import hf as ihf  # noqa: E402
from icrm_kernels.integrations.hf import (  # noqa: E402
    R2MScoreHead,
    apply_icrm,
    apply_r2m,
    format_demonstrations,
    get_head,
    load_pretrained,
)
from icrm_kernels.nn import BetaRewardHead  # noqa: E402

V, D, DP = 40, 16, 12
COMMON = dict(vocab_size=V, hidden_size=D, num_hidden_layers=1, num_attention_heads=2, num_labels=1, pad_token_id=0)
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(intermediate_size=32, num_key_value_heads=2, **COMMON),
    "qwen2": lambda: transformers.Qwen2Config(intermediate_size=32, num_key_value_heads=2, **COMMON),
    "mistral": lambda: transformers.MistralConfig(intermediate_size=32, num_key_value_heads=2, **COMMON),
    "gemma2": lambda: transformers.Gemma2Config(intermediate_size=32, num_key_value_heads=2, head_dim=8, **COMMON),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(intermediate_size=32, **COMMON),
}


def make(family="llama", seed=0):
    torch.manual_seed(seed)
    cfg = FAMILIES[family]()
    cls = getattr(transformers, ihf.SUPPORTED_MODEL_TYPES[family])
    return cls(cfg).eval()


def batch(b=3, s=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (b, s), generator=g)
    ids[0, 5:] = 0  # right padding
    ids[1, :2] = 0  # left padding
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def policy(b=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([4, 0, 6][:b] + [3] * max(0, b - 3))
    cu = torch.zeros(b + 1, dtype=torch.int64)
    cu[1:] = lens.cumsum(0)
    return torch.randn(int(cu[-1]), DP, generator=g), cu


def _rand_head(model):
    with torch.no_grad():
        for p in get_head(model).attention.parameters():
            p.normal_(0, 0.5)


# ------------------------------------------------------------------------------------ R2M
@pytest.mark.parametrize("family", list(FAMILIES))
def test_r2m_in_place_equal_at_omega_one_and_reload(family, tmp_path):
    rm = make(family)
    inputs = batch()
    with torch.no_grad():
        base = rm(**inputs).logits
    linear = rm.score
    cls = type(rm)
    assert apply_r2m(rm, policy_dim=DP, attn_dim=8, total_steps=10) is rm
    assert type(rm) is cls and isinstance(rm.score, R2MScoreHead) and rm.score.linear is linear
    assert rm.config.icrm == {"head": "r2m", "policy_dim": DP, "attn_dim": 8, "num_heads": 1, "bias": False,
                              "total_steps": 10, "floor": 0.6}
    _rand_head(rm)
    states, cu = policy()
    kw = dict(inputs, policy_states=states, policy_cu_seqlens=cu)
    rm.score.set_step(0)  # omega = 1: the unpatched model's rewards, bit for bit, on both paths
    with torch.no_grad():
        out = rm(**kw)
    assert isinstance(out, transformers.modeling_outputs.SequenceClassifierOutput)
    assert torch.equal(out.logits, base)
    assert torch.equal(rm(**kw).logits.detach(), base)
    rm.score.set_step(7)
    with torch.no_grad():
        fused = rm(**kw).logits
    train = rm(**kw).logits
    assert train.requires_grad and not torch.allclose(fused, base)
    torch.testing.assert_close(train.detach(), fused, atol=2e-5, rtol=2e-4)
    # R2M's formula on the pooled hidden state: phi(omega H + (1 - omega) H_hat)
    with torch.no_grad():
        hid = rm.base_model(**inputs).last_hidden_state
        idx = ihf._pool_index(rm, inputs["input_ids"], hid)
        h = hid[torch.arange(3), idx]
        om = rm.score.omega
        want = linear(om * h + (1 - om) * rm.score.attention(h, states, cu_seqlens=cu))
    torch.testing.assert_close(fused, want, atol=2e-5, rtol=2e-4)
    # padded layout = packed layout
    lens = (cu[1:] - cu[:-1]).tolist()
    padded = torch.zeros(3, max(lens), DP)
    mask = torch.ones(3, max(lens), dtype=torch.bool)
    for i, n in enumerate(lens):
        padded[i, :n] = states[int(cu[i]):int(cu[i + 1])]
        mask[i, :n] = False
    with torch.no_grad():
        got = rm(**inputs, policy_states=padded, policy_padding_mask=mask).logits
    torch.testing.assert_close(got, fused, atol=1e-5, rtol=1e-5)

    rm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["icrm"]["head"] == "r2m"
    rm2 = load_pretrained(tmp_path).eval()
    assert type(rm2) is cls and rm2.score.omega == rm.score.omega
    with torch.no_grad():
        assert torch.equal(rm2(**kw).logits, fused)


def test_r2m_patch_by_type_then_plain_from_pretrained(tmp_path):
    rm = apply_r2m(make("llama"), policy_dim=DP, total_steps=10)
    _rand_head(rm)
    rm.score.set_step(3)
    rm.save_pretrained(tmp_path)
    states, cu = policy()
    with torch.no_grad():
        want = rm(**batch(), policy_states=states, policy_cu_seqlens=cu).logits
    ihf.apply_icrm_heads_to_llama()
    rm2 = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(rm2.score, R2MScoreHead) and rm2.score.omega == rm.score.omega
    with torch.no_grad():
        got = rm2(**batch(), policy_states=states, policy_cu_seqlens=cu).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # an unpatched config still builds the plain model
    plain = transformers.LlamaForSequenceClassification(FAMILIES["llama"]())
    assert isinstance(plain.score, torch.nn.Linear)


def test_r2m_set_step_does_not_recompile():
    rm = apply_r2m(make("llama"), policy_dim=DP, attn_dim=8, total_steps=20)
    _rand_head(rm)
    inputs = batch()
    states, cu = policy()
    with counting_compile() as (compile_, graphs):
        compiled = compile_(rm)
        for grad in (False, True):
            for t in range(20):
                rm.score.set_step(t)
                with torch.set_grad_enabled(grad):
                    got = compiled(**inputs, policy_states=states, policy_cu_seqlens=cu).logits
                    want = rm(**inputs, policy_states=states, policy_cu_seqlens=cu).logits
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(graphs) == 2  # one graph per grad mode, none per step


def test_r2m_warns_once_when_omega_stuck_at_one():
    rm = apply_r2m(make("llama"), policy_dim=DP, total_steps=10)
    states, cu = policy()
    with pytest.warns(RuntimeWarning, match="set_step"):
        rm(**batch(), policy_states=states, policy_cu_seqlens=cu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rm(**batch(), policy_states=states, policy_cu_seqlens=cu)  # once
        rm2 = apply_r2m(make("llama"), policy_dim=DP, total_steps=10)
        rm2.score.set_step(0)  # set explicitly: step 0 of R2M's schedule, no warning
        out = rm2(**batch(), policy_states=states, policy_cu_seqlens=cu)
    out.logits.sum().backward()
    assert float(rm2.score.attention.w_q.grad.abs().max()) == 0.0  # what the warning is about
    with pytest.warns(RuntimeWarning, match="total_steps=1"):
        apply_r2m(make("llama"), policy_dim=DP, total_steps=1)


def test_r2m_hostile_inputs_named():
    rm = apply_r2m(make("llama"), policy_dim=DP, total_steps=10)
    rm.score.set_step(2)
    inputs = batch()
    states, cu = policy()
    with pytest.raises(ValueError, match="policy_states"):
        rm(**inputs)
    with pytest.raises(ValueError, match="policy_states"):
        rm(**inputs, policy_states=torch.randn(10, DP + 1), policy_cu_seqlens=cu)
    with pytest.raises(ValueError, match="policy_cu_seqlens"):
        rm(**inputs, policy_states=states, policy_cu_seqlens=torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError, match="policy_cu_seqlens"):
        rm(**inputs, policy_states=states)
    with pytest.raises(ValueError, match="policy_states"):
        rm(**inputs, policy_states=torch.randn(2, 5, DP))
    with pytest.raises(TypeError, match="policy_states"):
        rm(**inputs, policy_states=[[0.0] * DP], policy_cu_seqlens=cu)
    with pytest.raises(TypeError, match="policy_padding_mask"):
        rm(**inputs, policy_states=torch.randn(3, 5, DP), policy_padding_mask=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="policy_padding_mask"):
        rm(**inputs, policy_states=torch.randn(3, 5, DP), policy_padding_mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="policy_padding_mask"):
        rm(**inputs, policy_states=states, policy_cu_seqlens=cu, policy_padding_mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="policy_dim"):
        apply_r2m(make("llama"), policy_dim=0, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        apply_r2m(make("llama"), policy_dim=DP, total_steps=0)
    with pytest.raises(TypeError, match="total_steps"):
        apply_r2m(make("llama"), policy_dim=DP)  # required keyword
    with pytest.raises(ValueError, match="already"):
        apply_icrm(rm)
    with pytest.raises(TypeError, match="model"):
        apply_r2m("llama", policy_dim=DP, total_steps=10)


def test_models_without_a_scalar_score_head():
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=1))
    with pytest.raises(ValueError, match="no `score`.*classifier"):
        apply_r2m(bert, policy_dim=DP, total_steps=10)
    with pytest.raises(ValueError, match="score"):
        apply_icrm(bert)
    cfg = FAMILIES["llama"]()
    cfg.num_labels = 2
    with pytest.raises(ValueError, match="num_labels=1"):
        apply_icrm(transformers.LlamaForSequenceClassification(cfg))


def test_shared_config_is_not_leaked():
    cfg = FAMILIES["llama"]()
    a = transformers.LlamaForSequenceClassification(cfg)
    b = transformers.LlamaForSequenceClassification(cfg)
    apply_icrm(a)
    assert not hasattr(b.config, "icrm") and not hasattr(cfg, "icrm")
    apply_r2m(b, policy_dim=DP, total_steps=5)  # not "already patched"


# ----------------------------------------------------------------------------------- ICRM
@pytest.mark.parametrize("family", list(FAMILIES))
def test_icrm_outputs_stats_and_reloads(family, tmp_path):
    rm = make(family)
    old_weight = rm.score.weight.detach().clone()
    apply_icrm(rm)
    assert isinstance(rm.score, BetaRewardHead) and torch.equal(rm.score.mean_head.weight, old_weight)
    inputs = batch()
    with torch.no_grad():
        out = rm(**inputs)
    assert type(out).__name__ == "ICRMSequenceClassifierOutput" and out.logits.shape == (3, 1)
    assert (out.alpha > 0).all() and (out.beta > 0).all()
    torch.testing.assert_close(out.logits[:, 0], out.alpha / (out.alpha + out.beta))
    rm.config.icrm["reward"] = "logit_mean"
    with torch.no_grad():
        out2 = rm(**inputs)
    torch.testing.assert_close(out2.logits[:, 0], beta_stats(out.alpha, out.beta).logit_mean)
    rm.config.icrm["reward"] = "mean"
    rm.save_pretrained(tmp_path)
    rm2 = load_pretrained(tmp_path).eval()
    assert isinstance(rm2.score, BetaRewardHead)
    with torch.no_grad():
        again = rm2(**inputs)
    assert torch.equal(again.logits, out.logits) and torch.equal(again.alpha, out.alpha)


def test_icrm_labels_give_the_elbo_and_train():
    rm = apply_icrm(make("llama"), reward="log_mean")
    assert rm.config.icrm["reward"] == "log_mean"
    out = rm(**batch(), labels=torch.tensor([1.0, 0.0, 1.0]))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert rm.score.conc_head.weight.grad is not None
    with pytest.raises(ValueError, match="reward"):
        apply_icrm(make("llama"), reward="median")
    tup = rm(**batch(), return_dict=False)
    assert isinstance(tup, tuple)


def test_trl_style_call():
    """TRL's reward trainer / PPO scoring: ``reward_model(**inputs).logits[:, 0]`` and ``.config``."""
    inputs = batch()
    icrm = apply_icrm(make("qwen2"))
    r = icrm(**inputs).logits[:, 0]
    assert r.shape == (3,) and icrm.config.icrm["head"] == "beta"
    # RewardTrainer.compute_loss: use_cache=False, then logits.squeeze(-1) chunked into chosen/rejected
    out = icrm(**inputs, use_cache=False)
    assert out.logits.squeeze(-1).shape == (3,) and torch.equal(out.logits[:, 0], r)
    r2m = apply_r2m(make("qwen2"), policy_dim=DP, total_steps=10)
    states, cu = policy()
    r2m.score.set_step(1)
    assert r2m(**inputs, policy_states=states, policy_cu_seqlens=cu).logits[:, 0].shape == (3,)


# ----------------------------------------------------------------------------------- PEFT
peft = pytest.importorskip("peft")


def _bump(model, names):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in names):
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_peft_lora_then_apply(family, tmp_path):
    targets = ["query_key_value"] if family == "gpt_neox" else ["q_proj", "v_proj"]
    pm = peft.get_peft_model(make(family), peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=targets))
    apply_r2m(pm, policy_dim=DP, attn_dim=8, total_steps=10)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert any("score.modules_to_save.default.attention.w_q" in n for n in trainable)
    assert any("score.modules_to_save.default.linear.weight" in n for n in trainable)
    assert not any("original_module" in n for n in trainable)
    pm.score.set_step(4)
    states, cu = policy()
    kw = dict(batch(), policy_states=states, policy_cu_seqlens=cu)
    pm(**kw).logits.sum().backward()
    assert all(p.grad is not None for n, p in pm.named_parameters() if "lora_B" in n or "attention.w_q" in n
               and p.requires_grad)
    _bump(pm, ["lora_B", "modules_to_save"])
    with torch.no_grad():
        want = pm(**kw).logits
    pm.save_pretrained(tmp_path)
    base = apply_r2m(make(family), policy_dim=DP, attn_dim=8, total_steps=10)
    pm2 = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    assert get_head(pm2).omega == get_head(pm).omega
    with torch.no_grad():
        assert torch.equal(pm2(**kw).logits, want)


@pytest.mark.parametrize("head", ["r2m", "beta"])
def test_apply_then_peft_modules_to_save(head, tmp_path):
    def patched():
        m = make("mistral")
        return apply_r2m(m, policy_dim=DP, total_steps=10) if head == "r2m" else apply_icrm(m)

    pm = peft.get_peft_model(patched(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                        modules_to_save=["score"]))
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("score.modules_to_save" in n for n in trainable)
    # the R2M head's inner linear layer is not wrapped a second time
    assert not any("modules_to_save.default.linear.modules_to_save" in n for n in trainable)
    kw = batch()
    if head == "r2m":
        pm.score.set_step(6)
        states, cu = policy()
        kw.update(policy_states=states, policy_cu_seqlens=cu)
    _bump(pm, ["lora_B", "modules_to_save"])
    with torch.no_grad():
        want = pm(**kw).logits
    pm.save_pretrained(tmp_path)
    pm2 = peft.PeftModel.from_pretrained(patched(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(pm2(**kw).logits, want)


# ------------------------------------------------------------------------- demonstrations
DEMOS = [("2+2?", "4", "5"), {"prompt": "capital of France?", "chosen": "Paris", "rejected": "Lyon"}]


def test_format_demonstrations_plain():
    text = format_demonstrations(DEMOS, ("3+3?", "6"))
    assert text.startswith(ihf.PLAIN_TEMPLATE["header"])
    assert "### Demonstration 1\nPrompt: 2+2?\nPreferred response: 4\nRejected response: 5" in text
    assert "### Demonstration 2\nPrompt: capital of France?" in text
    assert text.endswith("### Query\nPrompt: 3+3?\nResponse: 6")
    assert format_demonstrations([], {"prompt": "p", "response": "r"}).endswith("Response: r")
    with pytest.raises(TypeError, match="demonstrations\\[0\\]"):
        format_demonstrations([("a", "b")], ("p", "r"))
    with pytest.raises(ValueError, match="demonstrations\\[0\\]"):
        format_demonstrations([{"prompt": "a"}], ("p", "r"))
    with pytest.raises(TypeError, match="query"):
        format_demonstrations(DEMOS, "p")
    with pytest.raises(TypeError, match="demonstrations"):
        format_demonstrations("abc", ("p", "r"))


def _tokenizer(chat_template=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["Prompt Response A B Preferred user assistant system 2+2? 4 5 6"],
                            trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.chat_template = chat_template
    return fast


def test_format_demonstrations_chat_template():
    tmpl = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}")
    text = format_demonstrations(DEMOS, ("3+3?", "6"), _tokenizer(tmpl))
    assert text.startswith("<|system|>")
    assert "<|user|>Prompt: 2+2?\nResponse A: 4\nResponse B: 5\n<|assistant|>Preferred: A" in text
    assert text.endswith("<|user|>3+3?\n<|assistant|>6\n")
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
              "<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}")
    text = format_demonstrations(DEMOS, ("3+3?", "6"), _tokenizer(strict))
    assert text.startswith("<|user|>Judge")  # system folded into the first user turn
    plain = format_demonstrations(DEMOS, ("3+3?", "6"), _tokenizer(None))
    assert plain == format_demonstrations(DEMOS, ("3+3?", "6"))
    with pytest.raises(ValueError, match="chat_template"):
        format_demonstrations(DEMOS, ("3+3?", "6"), _tokenizer(None), use_chat_template=True)
