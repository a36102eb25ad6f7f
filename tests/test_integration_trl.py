"""IcrmGRPOTrainer with TRL's real GRPOTrainer on CPU: a tiny policy built from a config, a
word-level tokenizer trained locally, a synthetic dataset; two optimizer steps each."""
import math

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from icrm_kernels.integrations.trl import IcrmGRPOTrainer, R2MStepCallback, trl_preset  # noqa: E402

WORDS = "the a cat dog sat ran on mat log fast slow red blue big small".split()


def _tokenizer():
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def _policy(tokenizer):
    cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def reward_len(completions, **kwargs):
    return [float(len(c)) for c in completions]


def reward_red(completions, **kwargs):  # None for some completions: TRL's "unscorable" rule
    return [None if "blue" in c else float(c.count("red")) for c in completions]


def _train(cls, tmp_path, scale_rewards="group", reward_funcs=(reward_len,), **kw):
    tokenizer = _tokenizer()
    ds = datasets.Dataset.from_dict({"prompt": [" ".join(WORDS[i:i + 3]) for i in range(8)]})
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=6, max_steps=2, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                      save_strategy="no", learning_rate=1e-3, bf16=False, scale_rewards=scale_rewards,
                      disable_tqdm=True)
    trainer = cls(model=_policy(tokenizer), reward_funcs=list(reward_funcs), args=args, train_dataset=ds,
                  processing_class=tokenizer, **kw)
    trainer.train()
    return trainer, [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_auto_preset_trains_like_trl(tmp_path, scale_rewards):
    """Same seed, same losses over two steps. batch and none: bit for bit. group: TRL's float32
    nanstd and the package's shifted two-pass std round differently, so a loss may differ in its
    last bits (measured: 6e-8 on one of the two steps)."""
    _, want = _train(GRPOTrainer, tmp_path / "trl", scale_rewards, reward_funcs=(reward_len, reward_red))
    trainer, got = _train(IcrmGRPOTrainer, tmp_path / "icrm", scale_rewards, reward_funcs=(reward_len, reward_red))
    assert trainer.advantage_preset == trl_preset(scale_rewards)
    assert len(got) == len(want) == 2
    if scale_rewards == "group":
        for g, w in zip(got, want):
            assert math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-7), (got, want)
    else:
        assert got == want


@pytest.mark.parametrize("preset", ["bnpo", "dler", "verl_rloo", "win_rate"])
def test_other_presets_train(tmp_path, preset, monkeypatch):
    calls = []
    original = IcrmGRPOTrainer.compute_advantages

    def spy(self, rewards_per_func, num_generations):
        out = original(self, rewards_per_func, num_generations)
        calls.append(out)
        return out

    monkeypatch.setattr(IcrmGRPOTrainer, "compute_advantages", spy)
    trainer, losses = _train(IcrmGRPOTrainer, tmp_path, advantage_preset=preset, win_rate_temperature=None)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert len(calls) >= 1  # the trainer trained on the package's advantages
    _, trl_losses = _train(GRPOTrainer, tmp_path / "trl")
    if preset == "dler":  # batch-whitened group-mean advantages: another loss than TRL's group std
        assert losses != trl_losses
    # the advantages the trainer trained on are the package's for that preset
    r = torch.tensor([[1.0], [2.0], [2.0], [5.0]])
    adv = trainer.compute_advantages(r, 4)
    assert adv.shape == (4,) and torch.isfinite(adv).all()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="advantage_preset must be"):
        _train(IcrmGRPOTrainer, tmp_path, advantage_preset="grpoo")
    with pytest.raises(ValueError, match="must not set 'group_size'"):
        _train(IcrmGRPOTrainer, tmp_path, advantage_options={"group_size": 4})
    with pytest.raises(ValueError, match="baseline"):
        _train(IcrmGRPOTrainer, tmp_path, advantage_preset="trl_group", advantage_options={"baseline": "median"})
    with pytest.raises(TypeError, match="set_step"):
        R2MStepCallback(object())


def test_step_callback_drives_head(tmp_path):
    steps = []

    class Head:
        def set_step(self, t):
            steps.append(t)

    trainer, _ = _train(IcrmGRPOTrainer, tmp_path, callbacks=[R2MStepCallback(Head())])
    assert steps == [0, 1]


def test_r2m_reward_function_in_trl(tmp_path):
    """An R2M reward model (apply_r2m on a tiny LlamaForSequenceClassification) scores TRL's
    completions with the policy's hidden states; the trainer binds its policy and the step
    follows the trainer."""
    from transformers import LlamaForSequenceClassification

    from icrm_kernels.integrations.hf import apply_r2m
    from icrm_kernels.integrations.trl import R2MRewardFunction

    tokenizer = _tokenizer()
    cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, num_labels=1,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1)
    rm = apply_r2m(LlamaForSequenceClassification(cfg).eval(), policy_dim=16, total_steps=10)
    fn = R2MRewardFunction(rm, tokenizer, tokenizer)
    trainer, losses = _train(IcrmGRPOTrainer, tmp_path, reward_funcs=(fn,))
    assert fn.policy is trainer.model
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert int(rm.score.step) == 1  # set from trainer_state at the second step
    # the scores are the patched model's on the same inputs
    prompts, completions = ["the cat sat", "a dog ran"], [" on mat", " fast"]
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    got = fn(prompts, completions, completion_ids=ids)
    states, cu = fn.policy_states(prompts, ids)
    assert states.shape == (sum(len(i) for i in ids), 16) and cu.tolist() == [0, len(ids[0]), len(ids[0]) + len(ids[1])]
    enc = tokenizer([p + c for p, c in zip(prompts, completions)], return_tensors="pt", padding=True,
                    padding_side="right", add_special_tokens=False)
    with torch.no_grad():
        want = rm(**enc, policy_states=states, policy_cu_seqlens=cu).logits[:, 0]
    torch.testing.assert_close(torch.tensor(got), want.float())
    with pytest.raises(TypeError, match="apply_r2m"):
        R2MRewardFunction(LlamaForSequenceClassification(cfg), tokenizer, tokenizer)
