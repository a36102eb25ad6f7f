"""PolicyFeedbackAttention (incl. exact nn.MultiheadAttention conversion) and R2MRewardHead."""
import pytest
import torch

from conftest import counting_compile
from torch import nn

from icrm_kernels import r2m_omega
from icrm_kernels.nn import PolicyFeedbackAttention, R2MRewardHead


@pytest.fixture(autouse=True)
def small_program_share(monkeypatch):
    from icrm_kernels import _backend

    if _backend.HAS_TRITON:
        from icrm_kernels.triton import attention as tri

        with tri.launch_config(tokens_per_program=8):
            yield
    else:
        yield


def _mha_case(device, *, embed=8, kdim=6, heads=2, bias=True, lens=(3, 12, 1)):
    mha = nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=kdim, batch_first=True).to(device)
    if bias:
        with torch.no_grad():  # nn.MultiheadAttention zero-initialises its biases: make them count
            mha.in_proj_bias.normal_(0, 0.3)
            mha.out_proj.bias.normal_(0, 0.3)
    b, length = len(lens), max(lens)
    query = torch.randn(b, embed, device=device)
    states = torch.randn(b, length, kdim, device=device)
    mask = (torch.arange(length)[None, :] >= torch.tensor(lens)[:, None]).to(device)
    return mha, query, states, mask


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("heads,kdim", [(1, 8), (2, 6), (4, 5)])
def test_from_multihead_attention_exact(backend, device, bias, heads, kdim):
    mha, query, states, mask = _mha_case(device, kdim=kdim, heads=heads, bias=bias)
    mha.eval()
    mod = PolicyFeedbackAttention.from_multihead_attention(mha)
    assert (mod.b_q is not None) == bias
    expect = mha(query[:, None], states, states, key_padding_mask=mask, need_weights=False)[0][:, 0]
    got = mod(query, states, key_padding_mask=mask)
    torch.testing.assert_close(got, expect, atol=2e-5, rtol=2e-4)
    # packed layout gives the same
    lens = (~mask).sum(1)
    packed = states[~mask]
    cu = torch.zeros(len(lens) + 1, dtype=torch.int64, device=device)
    cu[1:] = torch.cumsum(lens, 0)
    torch.testing.assert_close(mod(query, packed, cu_seqlens=cu), expect, atol=2e-5, rtol=2e-4)


def test_from_multihead_attention_gradients_match(backend, device):
    mha, query, states, mask = _mha_case(device, heads=2)
    mod = PolicyFeedbackAttention.from_multihead_attention(mha)
    q1 = query.clone().requires_grad_(True)
    q2 = query.clone().requires_grad_(True)
    cot = torch.randn(query.shape, device=device)
    (mha(q1[:, None], states, states, key_padding_mask=mask, need_weights=False)[0][:, 0] * cot).sum().backward()
    (mod(q2, states, key_padding_mask=mask) * cot).sum().backward()
    torch.testing.assert_close(q2.grad, q1.grad, atol=2e-5, rtol=2e-4)
    torch.testing.assert_close(mod.w_o.grad, mha.out_proj.weight.grad.t(), atol=2e-5, rtol=2e-4)
    torch.testing.assert_close(mod.w_v.grad, mha.v_proj_weight.grad.t(), atol=2e-5, rtol=2e-4)
    torch.testing.assert_close(mod.w_q.grad, mha.q_proj_weight.grad.t(), atol=2e-5, rtol=2e-4)


def test_from_multihead_attention_rejects_unsupported():
    with pytest.raises(ValueError, match="add_bias_kv"):
        PolicyFeedbackAttention.from_multihead_attention(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True))
    with pytest.raises(ValueError, match="kdim"):
        PolicyFeedbackAttention.from_multihead_attention(nn.MultiheadAttention(8, 2, kdim=4, vdim=6, batch_first=True))
    with pytest.raises(TypeError, match="mha"):
        PolicyFeedbackAttention.from_multihead_attention(nn.Linear(2, 2))


def test_module_constructor_checks():
    with pytest.raises(ValueError, match="num_heads"):
        PolicyFeedbackAttention(8, 6, attn_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="policy_dim"):
        PolicyFeedbackAttention(8, 0)
    m = PolicyFeedbackAttention(8, 6, attn_dim=4, num_heads=2, bias=True)
    assert tuple(m.w_q.shape) == (8, 4) and tuple(m.w_k.shape) == (6, 4) and tuple(m.w_o.shape) == (4, 8)
    assert "num_heads=2" in repr(m)


def _head(device, bias=True):
    score = nn.Linear(8, 1).to(device)
    attn = PolicyFeedbackAttention(8, 6, attn_dim=4, num_heads=2, bias=bias).to(device)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.5)
    return R2MRewardHead(score, attn, total_steps=100, floor=0.6)


def test_reward_head_parameters_are_attention_and_score():
    head = _head("cpu")
    got = {id(p) for p in head.parameters()}
    want = {id(p) for p in head.attention.parameters()} | {id(p) for p in head.score.parameters()}
    assert got == want
    assert all(p.requires_grad for p in head.parameters())


@pytest.mark.parametrize("step", [0, 30, 50, 100])
def test_reward_head_fused_equals_module_path(backend, device, step):
    head = _head(device)
    head.set_step(step)
    assert head.omega == pytest.approx(r2m_omega(step, 100, 0.6))
    hidden = torch.randn(4, 8, device=device)
    lens = torch.tensor([5, 0, 19, 2])
    states = torch.randn(int(lens.sum()), 6, device=device)
    cu = torch.zeros(5, dtype=torch.int64)
    cu[1:] = torch.cumsum(lens, 0)
    cu = cu.to(device)
    r_train = head(hidden, states, cu_seqlens=cu)  # differentiable path
    with torch.no_grad():
        r_fused = head(hidden, states, cu_seqlens=cu)  # fused r2m_reward kernel
        h_hat = head.attention(hidden, states, cu_seqlens=cu)
        expect = head.score(head.omega * hidden + (1 - head.omega) * h_hat).squeeze(-1)
    assert r_train.requires_grad and not r_fused.requires_grad
    torch.testing.assert_close(r_train.detach(), expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r_fused, expect, atol=2e-5, rtol=2e-4)
    # the empty sequence's reward is φ(ω·H)
    with torch.no_grad():
        torch.testing.assert_close(r_fused[1], head.score(head.omega * hidden[1]).squeeze(-1), atol=1e-5, rtol=1e-5)


def test_reward_head_trains(device):
    head = _head(device)
    hidden = torch.randn(2, 8, device=device)
    states = torch.randn(2, 7, 6, device=device)
    r = head(hidden, states)
    r.sum().backward()
    for name, p in head.named_parameters():
        if name != "attention.b_k":  # the key bias cancels in the softmax
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_reward_head_state_dict_keeps_step():
    head = _head("cpu")
    head.set_step(42)
    other = _head("cpu")
    other.load_state_dict(head.state_dict())
    assert other.omega == pytest.approx(head.omega)
    with pytest.raises(ValueError, match="step"):
        head.set_step(-1)


def test_reward_head_checks():
    with pytest.raises(ValueError, match="out_features"):
        R2MRewardHead(nn.Linear(8, 2), policy_dim=6)
    with pytest.raises(ValueError, match="rm_dim"):
        R2MRewardHead(nn.Linear(8, 1), PolicyFeedbackAttention(7, 6))
    head = R2MRewardHead(nn.Linear(8, 1), policy_dim=6, total_steps=10)
    assert head.attention.policy_dim == 6 and head.omega == 1.0


# ---------------------------------------------------------------- Hugging Face integration
class _Backbone(nn.Module):
    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)

    def forward(self, input_ids=None, attention_mask=None):
        return (self.emb(input_ids).cumsum(1),)


class _TinyClassifier(nn.Module):
    """Shaped like a *ForSequenceClassification: `base_model` + a linear `score` (no transformers needed)."""

    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.score = nn.Linear(8, 1, bias=False)

    @property
    def base_model(self):
        return self.backbone


def test_hf_wrapper_on_a_classifier_shaped_module(device):
    from icrm_kernels.integrations.hf_r2m import R2MRewardModel, reward_token_hidden

    model = _TinyClassifier().to(device)
    r2m = R2MRewardModel.wrap(model, policy_dim=6, attn_dim=4, total_steps=10)
    assert r2m.head.score is model.score  # the RM's own head, shared
    assert {id(p) for p in r2m.trainable_parameters()} == {id(p) for p in r2m.head.parameters()}
    assert not any(p.requires_grad for p in model.backbone.parameters())
    ids = torch.randint(0, 11, (3, 5), device=device)
    am = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], device=device)  # right, left, none
    h = reward_token_hidden(model.backbone(ids)[0], am)
    full = model.backbone(ids)[0]
    torch.testing.assert_close(h, torch.stack([full[0, 2], full[1, 4], full[2, 4]]))
    states = torch.randn(3, 4, 6, device=device)
    r2m.set_step(3)
    r = r2m(ids, am, states)
    expect = r2m.head(h, states)
    torch.testing.assert_close(r, expect)
    r.sum().backward()
    assert model.score.weight.grad is not None


def test_hf_tiny_llama_if_transformers_importable():
    transformers = pytest.importorskip("transformers")
    from icrm_kernels.integrations.hf_r2m import R2MRewardModel

    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    rm = transformers.LlamaForSequenceClassification(cfg).eval()
    r2m = R2MRewardModel.wrap(rm, policy_dim=12, attn_dim=8, total_steps=4)
    ids = torch.randint(1, 32, (2, 6))
    am = torch.ones(2, 6, dtype=torch.long)
    states = torch.randn(9, 12)
    cu = torch.tensor([0, 4, 9])
    r2m.set_step(0)  # ω = 1: the RM's own reward
    with torch.no_grad():
        r = r2m(ids, am, states, cu_seqlens=cu)
        base = rm(input_ids=ids, attention_mask=am).logits.squeeze(-1)
    torch.testing.assert_close(r, base, atol=1e-5, rtol=1e-5)


def test_reward_head_step_is_graph_data_under_compile():
    """set_step writes the step buffer in place; a compiled head reads omega from it (no guard on
    the step), so 20 steps compile once per grad mode; eager keeps the Python-float omega."""
    head = _head("cpu")
    for t in (0, 13, 50, 100, 250):
        head.set_step(t)
        assert float(head.omega_tensor()) == pytest.approx(head.omega, abs=1e-12)
        assert isinstance(head.omega, float)
    hidden, states = torch.randn(3, 8), torch.randn(3, 5, 6)
    with counting_compile() as (compile_, graphs):
        compiled = compile_(head)
        for grad in (False, True):
            for t in range(0, 100, 5):
                head.set_step(t)
                with torch.set_grad_enabled(grad):
                    torch.testing.assert_close(compiled(hidden, states), head(hidden, states), atol=1e-5, rtol=1e-5)
    assert len(graphs) == 2


def test_reward_head_step_mirror_follows_the_buffer():
    """A checkpoint loader that writes the buffer directly (HF's from_pretrained) is seen by eager omega."""
    head = _head("cpu")
    with torch.no_grad():
        head.step.copy_(torch.tensor(50))
    assert head.omega == pytest.approx(r2m_omega(50, 100, 0.6))
    head.set_step(torch.tensor(20))
    assert int(head.step) == 20 and head.omega == pytest.approx(r2m_omega(20, 100, 0.6))
