"""model.py: GPT-2's layout and names, nanoGPT compatibility, training-time behaviour and KV-cache generation."""

import math

import pytest
import torch

from conftest import user_error
from model import GPT, GPTConfig
from smallgpt.hf_format import save_pretrained
from smallgpt.sampling import sample_next


def tiny(**overrides):
    torch.manual_seed(0)
    args = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
    return GPT(GPTConfig(**{**args, **overrides}))


def nanogpt_keys(n_layer, bias):
    """The state-dict keys of a nanoGPT model (flash attention), which are GPT-2's names."""
    keys = ["transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"]
    kinds = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    keys += [f"transformer.h.{i}.{kind}.weight" for i in range(n_layer) for kind in kinds]
    keys += ["transformer.ln_f.weight"]
    if bias:
        keys += [f"transformer.h.{i}.{kind}.bias" for i in range(n_layer) for kind in kinds]
        keys += ["transformer.ln_f.bias"]
    return sorted(keys)


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_has_nanogpt_and_gpt2_names(bias):
    model = tiny(bias=bias)
    state = model.state_dict()
    assert sorted(state) == nanogpt_keys(2, bias)
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (48, 16)  # (3 * n_embd, n_embd), as nanoGPT's
    assert state["transformer.h.1.mlp.c_fc.weight"].shape == (64, 16)
    other = tiny(bias=bias)
    other.load_state_dict(state)  # strict: every key and shape matches
    idx = torch.randint(50, (2, 10))
    assert torch.equal(model(idx)[0], other(idx)[0])


def test_tied_embedding_and_gpt2_init():
    model = tiny(n_layer=8, n_embd=64, n_head=4)
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    proj_std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02, rel=0.1)
    assert proj_std == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.1)
    assert model.get_num_params() == model.get_num_params(non_embedding=False) - 16 * 64


def test_forward_shapes_and_initial_loss():
    model = tiny()
    idx = torch.randint(50, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 50)
    assert loss.item() == pytest.approx(math.log(50), abs=0.3)  # a fresh model guesses uniformly
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 50) and loss is None
    with pytest.raises(ValueError, match="block_size is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_targets_of_minus_one_are_ignored():
    model = tiny()
    idx = torch.randint(50, (2, 8))
    targets = idx.clone()
    targets[:, 4:] = -1
    _, loss = model(idx, targets)
    logits, _ = model(idx, idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 50), idx[:, :4].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dropout_acts_only_in_training():
    model = tiny(dropout=0.5)
    idx = torch.randint(50, (2, 16))
    model.eval()
    assert torch.equal(model(idx, idx)[1], model(idx, idx)[1])
    model.train()
    assert not torch.equal(model(idx, idx)[1], model(idx, idx)[1])
    # each site, not only attention's: the embeddings', and the MLP's output
    x = torch.randn(2, 16, 16)
    mlp = model.transformer.h[0].mlp
    assert not torch.equal(mlp(x), mlp(x))
    assert (model.transformer.drop(x) == 0).any()


def test_causal_attention_ignores_the_future():
    model = tiny()
    idx = torch.randint(50, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 50
    assert torch.allclose(model(idx, idx)[0][:, :10], model(changed, changed)[0][:, :10])


def recompute_greedy(model, idx, max_new_tokens):
    """nanoGPT's generation: the whole (cropped) context through the model for every new token."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


@pytest.mark.parametrize("prompt_len", [1, 5, 16])
def test_kv_cache_greedy_equals_recomputing_within_block_size(prompt_len):
    model = tiny(n_layer=3, vocab_size=60)
    model.eval()
    torch.manual_seed(1)
    idx = torch.randint(60, (2, prompt_len))
    n_new = 16 - prompt_len if prompt_len < 16 else 1
    cached = model.generate(idx, n_new, top_k=1)
    assert cached.shape == (2, prompt_len + n_new)
    assert torch.equal(cached, recompute_greedy(model, idx, n_new))


def test_generation_beyond_block_size_rebuilds_the_cache_from_the_last_half_block():
    model = tiny()
    model.eval()
    idx = torch.randint(50, (1, 10))
    out = model.generate(idx, 30, top_k=1)
    assert out.shape == (1, 40) and torch.equal(out[:, :10], idx)
    # up to a full block of context, the same as recomputing; then the cache is full, and token 17
    # is predicted from the last 8 tokens, placed at positions 0..7
    assert torch.equal(out[:, :17], recompute_greedy(model, idx, 7))
    logits, _ = model(out[:, 9:17])
    assert out[0, 17] == logits[0, -1].argmax()
    # a prompt longer than the block is cropped to its last block_size tokens, as in nanoGPT
    long_prompt = torch.randint(50, (1, 40))
    assert torch.equal(model.generate(long_prompt, 1, top_k=1)[:, -1:],
                       recompute_greedy(model, long_prompt[:, -16:], 1)[:, -1:])


def test_sampling_with_temperature_top_k_and_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    torch.manual_seed(0)
    draws = lambda **kw: {sample_next(logits, **kw).item() for _ in range(300)}
    assert draws() == {0, 1, 2, 3}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.75) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    assert draws(top_p=0.8) == {0, 1}  # exactly reached: the next token is not needed
    assert draws(top_p=0.81) == {0, 1, 2}
    assert draws(top_p=0.1) == {0}  # the most likely token always stays
    assert draws(temperature=0.01) == {0}
    batch = sample_next(torch.zeros(5, 7), top_k=3)
    assert batch.shape == (5, 1)


def test_sampled_tokens_follow_the_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)
    torch.manual_seed(0)
    frequencies = lambda **kw: torch.bincount(sample_next(logits, **kw)[:, 0], minlength=4) / 20000
    assert torch.allclose(frequencies(), probs, atol=0.015)
    # top-k and top-p renormalize what they keep; the token ids stay those of the full vocabulary
    assert torch.allclose(frequencies(top_k=2), torch.tensor([0.625, 0.375, 0, 0]), atol=0.015)
    assert torch.allclose(frequencies(top_p=0.9), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95, atol=0.015)
    shuffled = torch.tensor([0.15, 0.05, 0.5, 0.3]).log().expand(20000, 4)
    assert torch.allclose(torch.bincount(sample_next(shuffled, top_k=2)[:, 0], minlength=4) / 20000,
                          torch.tensor([0, 0, 0.625, 0.375]), atol=0.015)


def test_generate_draws_from_the_tokenizer_ids_alone_not_the_padding():
    model = tiny().eval()  # 50 ids, of which a tokenizer of 7 uses the first 7
    idx = torch.zeros(8, 1, dtype=torch.long)
    assert model.generate(idx, 30, temperature=3.0).max() >= 7
    assert model.generate(idx, 30, temperature=3.0, tokenizer_vocab_size=7).max() < 7


def test_crop_block_size():
    model = tiny()
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model.transformer.wpe.weight.shape == (8, 16)
    assert model(torch.randint(50, (1, 8)))[0].shape == (1, 1, 50)
    model.eval()
    assert model.generate(torch.randint(50, (1, 3)), 20, top_k=1).shape == (1, 23)


def test_optimizer_decays_matrices_only():
    model = tiny()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n_params = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert n_params == model.get_num_params(non_embedding=False)


def test_estimate_mfu_counts_the_flops_of_a_training_step():
    from torch.utils.flop_counter import FlopCounterMode
    model = tiny(n_embd=128, n_head=4, bias=False)  # wide enough that the products are nearly all of it
    x = torch.randint(50, (4, 16))  # 4 sequences of block_size tokens
    with FlopCounterMode(display=False) as counter:  # the step's products, as torch counts them
        _, loss = model(x, x)
        loss.backward()
    # PaLM's count (6 per parameter and token, and attention's) against torch's: within 15%
    assert model.estimate_mfu(4, dt=1.0, peak_flops=counter.get_total_flops() * 2) == pytest.approx(0.5, rel=0.15)


# -----------------------------------------------------------------------------
# the options beyond GPT-2, and Muon

OPTIONS = dict(rotary=True, qk_norm=True, activation="gelu")


def test_options_change_only_what_they_name():
    # rotary embeddings replace the learned positions; QK-norm and the GELU have no weights
    assert sorted(tiny(**OPTIONS).state_dict()) == [key for key in nanogpt_keys(2, bias=True)
                                                    if key != "transformer.wpe.weight"]
    assert tiny(rotary=True).get_num_params() == tiny(rotary=True).get_num_params(non_embedding=False)
    x = torch.randn(3, 16)
    assert torch.equal(tiny().transformer.h[0].mlp.activation(x), torch.nn.functional.gelu(x, approximate="tanh"))
    assert torch.equal(tiny(activation="gelu").transformer.h[0].mlp.activation(x), torch.nn.functional.gelu(x))


def test_attn_scale_multiplies_the_attention_logits():
    torch.manual_seed(0)
    model = tiny(qk_norm=True, attn_scale=1.5)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 6, model.config.n_embd)
    hs = model.config.n_embd // model.config.n_head
    q, k, v = attn.c_attn(x).view(2, 6, 3, model.config.n_head, hs).unbind(2)  # (B, T, nh, hs) each
    rms_norm = torch.nn.functional.rms_norm
    q, k, v = (t.transpose(1, 2) for t in (rms_norm(q, (hs,)), rms_norm(k, (hs,)), v))
    logits = 1.5 * q @ k.mT / hs ** 0.5 + torch.full((6, 6), float("-inf")).triu(1)
    expected = attn.c_proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, -1))
    with torch.no_grad():
        assert torch.allclose(attn(x), expected, atol=1e-5)
    # the default, 1, is attention as GPT-2 has it
    default, explicit = tiny(), tiny(attn_scale=1.0)  # the same seed: the same weights
    idx = torch.randint(50, (2, 8))
    assert torch.equal(default(idx, idx)[1], explicit(idx, idx)[1])


def test_rotary_attention_depends_on_relative_positions_only():
    model = tiny(rotary=True)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)  # (B, T, heads, hs)
    cos, sin = model.rotary_cos, model.rotary_sin
    rotate = lambda x, i: model_rotate(x, cos[i:i + 1], sin[i:i + 1])
    score = lambda i, j: (rotate(q, i) * rotate(k, j)).sum()
    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)
    # and a rotation keeps lengths
    assert torch.allclose(model_rotate(q, cos[5:6], sin[5:6]).norm(), q.norm())
    # channels i and i + hs/2 turn together by position / 10000^(2i / hs)
    angle = 5 * 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    q1, q2 = q.chunk(2, dim=-1)
    turned = torch.cat((q1 * angle.cos() - q2 * angle.sin(), q2 * angle.cos() + q1 * angle.sin()), dim=-1)
    assert torch.allclose(model_rotate(q, cos[5:6], sin[5:6]), turned, atol=1e-6)


def model_rotate(x, cos, sin):
    from model import rotate
    return rotate(x, cos, sin)


@pytest.mark.parametrize("prompt_len", [1, 7])
def test_kv_cache_greedy_equals_recomputing_with_every_option(prompt_len):
    model = tiny(n_layer=3, **OPTIONS)
    model.eval()
    idx = torch.randint(50, (2, prompt_len))
    assert torch.equal(model.generate(idx, 16 - prompt_len, top_k=1), recompute_greedy(model, idx, 16 - prompt_len))
    # beyond block_size too, and after cropping the context
    assert model.generate(idx, 30, top_k=1).shape == (2, prompt_len + 30)
    model.crop_block_size(8)
    assert model.rotary_cos.shape[0] == 8 and model.generate(idx[:, :1], 20, top_k=1).shape == (2, 21)


def test_orthogonalize_sets_every_singular_value_near_one():
    from smallgpt.muon import orthogonalize
    torch.manual_seed(0)
    for shape in [(3, 32, 96), (3, 96, 32), (2, 48, 48)]:
        # a badly conditioned gradient: singular values spread over two orders of magnitude
        u, _, v = torch.linalg.svd(torch.randn(shape), full_matrices=False)
        g = u @ torch.diag_embed(torch.logspace(0, -2, min(shape[1:])).expand(shape[0], -1)) @ v
        out = orthogonalize(g)
        assert out.shape == g.shape
        # the same singular vectors, each singular value between 0.5 and 1.25
        s = u.mT @ out @ v.mT
        diagonal = torch.diagonal(s, dim1=1, dim2=2)
        assert torch.allclose(s, torch.diag_embed(diagonal), atol=1e-4)
        assert diagonal.min() > 0.5 and diagonal.max() < 1.25, (shape, diagonal.min(), diagonal.max())


def test_muon_trains_the_blocks_matrices_and_adamw_the_rest():
    from smallgpt.muon import Muon
    model = tiny(bias=False)
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu", muon_learning_rate=0.05)
    assert isinstance(optimizer, Muon)
    names = {p: name for name, p in model.named_parameters()}
    decay, no_decay, muon = optimizer.param_groups
    assert all(names[p].startswith("transformer.h.") and p.dim() == 2 for p in muon["params"])
    assert len(muon["params"]) == 2 * 4 and muon["lr"] == 0.05 and muon["lr_scale"] == pytest.approx(5)
    assert [names[p] for p in decay["params"]] == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.get_num_params(False)
    # a few steps on one batch: the loss falls, and every matrix in one shape group moved
    idx = torch.randint(50, (4, 16))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = []
    for _ in range(10):
        _, loss = model(idx, idx)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_muon_orthogonalizes_same_shaped_matrices_as_if_one_at_a_time():
    from smallgpt.muon import Muon, orthogonalize
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(3)]
    grads = [torch.randn(8, 4) for _ in params]
    start = [p.detach().clone() for p in params]
    optimizer = Muon([{"params": params, "muon": True, "lr": 0.1, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95))
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    for p, g, p0 in zip(params, grads, start):
        # first step: momentum = 0.05 g, Nesterov update = g lerp (0.05 g) by 0.95;
        # a tall 8 x 4 matrix steps sqrt(2) further
        expected = p0 - 0.1 * 2 ** 0.5 * orthogonalize((0.0975 * g)[None])[0]
        assert torch.allclose(p, expected, atol=1e-6)


def test_muon_steps_its_adamw_groups_as_torch_adamw_does():
    from smallgpt.muon import Muon
    torch.manual_seed(0)
    shapes = [(6, 5), (5,), (3, 4)]
    ours = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    groups = lambda params: [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]
    optimizer = Muon(groups(ours), lr=1e-2, betas=(0.9, 0.95))
    reference = torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for step in range(6):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        if step == 2:  # a parameter without a gradient skips a step, and its bias correction falls behind
            ours[1].grad = theirs[1].grad = None
        optimizer.step()
        reference.step()
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert optimizer.state[ours[1]]["step"] == 5 and optimizer.state[ours[0]]["step"] == 6


def test_sampling_layout_keeps_every_weight_and_the_sampled_tokens():
    model = tiny(vocab_size=60).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    idx = torch.randint(60, (2, 5))
    torch.manual_seed(3)
    expected = model.generate(idx, 10, temperature=0.8)
    model.store_weights_transposed()
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert c_fc.stride() == (1, c_fc.size(0))  # stored (in, out): each output's weights strided in memory
    torch.manual_seed(3)
    assert torch.equal(model.generate(idx, 10, temperature=0.8), expected)


def test_streamed_tokens_are_ordinary_tensors():
    """Steps run in inference mode; what the caller gets must still work with autograd-recording code."""
    model = tiny().eval()
    tokens = list(model.generate_stream(torch.zeros((1, 1), dtype=torch.long), 3, top_k=1))
    assert len(tokens) == 3 and not any(t.is_inference() for t in tokens)
    assert torch.cat(tokens, dim=1).shape == (1, 3)


def test_the_bigram_reads_each_tokens_logits_off_its_table(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=0, block_size=8, vocab_size=11))
    idx = torch.randint(11, (2, 8))
    logits, loss = model(idx, idx)
    assert torch.equal(logits, model.transformer.wte.weight[idx])  # no positions, no blocks, no norm, no head
    assert model.get_num_params() == 11 * 11 and list(model.state_dict()) == ["transformer.wte.weight"]
    assert model.eval().generate(idx[:, :2], 20, top_k=1).shape == (2, 22)  # through the cache, past block_size
    user_error(lambda: save_pretrained(model, str(tmp_path / "hf"), 11), "it uses n_layer=0, which GPT-2 has not")
