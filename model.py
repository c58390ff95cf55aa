"""
The GPT language model: GPT-2's architecture under GPT-2's parameter names, so that nanoGPT's state dicts and
OpenAI's GPT-2 weights load into it.

- GPTConfig: the model's shape (n_layer=0: the lecture's bigram), its GELU, and three options beyond GPT-2, off by
  default: rotary position embeddings, QK-norm and a scale for attention's logits.
- CausalSelfAttention, MLP, Block: a transformer block, with a KVCache for generation.
- GPT: embeddings, blocks, final LayerNorm and the tied language-model head; forward, generate through the KV
  cache (how each token is drawn: smallgpt/sampling.py), optimizer groups (AdamW, or Muon from smallgpt/muon.py
  for the blocks' matrices), MFU, crop_block_size, and from_pretrained for GPT-2's weights (the format lives in
  smallgpt/hf_format.py).

References: OpenAI's GPT-2 (https://github.com/openai/gpt-2/blob/master/src/model.py), RoFormer (Su et al.
2021) for rotary embeddings, Dehghani et al. 2023 for QK-norm, https://kellerjordan.github.io/posts/muon/
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from smallgpt.chunked_loss import chunked_cross_entropy
from smallgpt.hf_format import load_pretrained
from smallgpt.muon import Muon
from smallgpt.sampling import sample_next


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the model sees
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12  # 0: the bigram model, each token's next-token logits read off a (vocab, vocab) table
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2; False is a little better and faster
    activation: str = "gelu_tanh"  # the MLP's GELU: GPT-2's tanh approximation, or 'gelu', the exact one
    # Beyond GPT-2, all off by default, so that the default model is GPT-2 and loads its weights:
    rotary: bool = False  # rotary position embeddings on queries and keys instead of learned ones (no wpe)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before attention
    # Attention's logits are q.k / sqrt(head size) times this. Under qk_norm they cannot pass sqrt(head size),
    # which leaves a small head's attention too flat: above 1 sharpens it.
    attn_scale: float = 1.0


# The MLP's nonlinearity: GPT-2's tanh approximation, or the exact GELU, which CPUs compute faster.
ACTIVATIONS = {"gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


class KVCache:
    """
    The keys and values of every token fed so far, for every layer, so that generation
    processes each token once. Filled from position 0: a call with several tokens must
    start on an empty cache (the prompt), later calls bring one token each.
    """

    def __init__(self, n_layer, max_length):
        self.n_layer = n_layer
        self.max_length = max_length
        self.length = 0  # tokens cached so far
        self.k = self.v = None  # for each layer (B, n_head, max_length, head_size), made on first use

    def update(self, layer, k, v):
        """Append this layer's new keys and values (B, nh, T, hs); return all of them so far."""
        if self.k is None:
            B, nh, _, hs = k.shape
            self.k = [k.new_empty(B, nh, self.max_length, hs) for _ in range(self.n_layer)]
            self.v = [torch.empty_like(t) for t in self.k]
        # narrow is one op where indexing is several, and this runs for every layer and every sampled token
        self.k[layer].narrow(2, self.length, k.size(2)).copy_(k)
        self.v[layer].narrow(2, self.length, v.size(2)).copy_(v)
        end = self.length + k.size(2)
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.layer = layer  # index into the KV cache
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.scale = config.attn_scale / math.sqrt(config.n_embd // config.n_head)
        # query, key and value projections for all heads, in one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rotation=None, cache=None, mask=None):
        B, T, C = x.size()  # batch, sequence length, n_embd
        hs = C // self.n_head
        qkv = self.c_attn(x).view(B, T, 3 * self.n_head, hs)  # the queries, keys and values of every head
        qk, v = qkv.split((2 * self.n_head, self.n_head), dim=2)  # (B, T, 2 * nh, hs), (B, T, nh, hs)
        if self.qk_norm:
            qk = F.rms_norm(qk, (hs,))
        if rotation is not None:
            qk = rotate(qk, *rotation)
        q, k = qk.transpose(1, 2).split(self.n_head, dim=1)  # (B, nh, T, hs) each
        v = v.transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, cached + T, hs)
        # Without a mask, several new tokens only ever come on an empty cache, where the causal mask is exact;
        # a single new token may look at everything before it, so it needs no mask.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=mask is None and T > 1, scale=self.scale)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble the heads side by side
        y = self.c_proj(y)
        # dropout only acts in training: not calling it otherwise saves sampling a call per layer
        return self.resid_dropout(y) if self.training else y


def rotate(x, cos, sin):
    """
    Rotary position embedding: turn each channel pair (i, i + hs/2) of x (B, T, heads, hs) by its position's angle.
    cos and sin (T, 1, hs) hold each pair's cosine twice and its sine as (-sin, sin), so that the turned pair
    (x1 cos - x2 sin, x2 cos + x1 sin) is x cos + (x2, x1) sin, in three ops instead of eight.
    """
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.activation = ACTIVATIONS[config.activation]
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_proj(self.activation(self.c_fc(x)))
        return self.dropout(x) if self.training else x


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rotation=None, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), rotation, cache, mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config
        bigram = config.n_layer == 0  # the lecture's first model: the embedding's rows are the logits
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.vocab_size if bigram else config.n_embd),
            # learned position embeddings, unless rotary embeddings give the positions (or it is the bigram)
            **({} if config.rotary or bigram else dict(wpe=nn.Embedding(config.block_size, config.n_embd))),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=nn.Identity() if bigram else nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.rotary:
            # the angle of position t in channel pair i is t / 10000^(2i / hs), as in RoFormer (Su et al. 2021);
            # not saved with the weights: they follow from the config
            hs = config.n_embd // config.n_head
            angles = torch.outer(torch.arange(config.block_size), 10000.0 ** (-torch.arange(0, hs, 2) / hs))
            cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]  # (block_size, 1, hs/2) each
            self.register_buffer("rotary_cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (block_size, 1, hs)
            self.register_buffer("rotary_sin", torch.cat((-sin, sin), dim=-1), persistent=False)
        self.lm_head = nn.Identity() if bigram else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.activation_checkpointing = False  # recompute each block in the backward pass, not keep its activations
        self.chunked_loss = False  # the head and the loss over chunks of tokens: the whole logits never exist
        # Weight tying: the head that reads out tokens is the embedding that reads them in.
        # https://paperswithcode.com/method/weight-tying
        if not bigram:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the projections into the residual stream by 1/sqrt(number of residual
        # additions), so that the stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """
        The number of parameters. By default the position embeddings are not counted; the token
        embeddings are, since they are also the weights of the final layer.
        """
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None, loss_reduction="mean"):
        """
        idx (B, T) token ids -> (logits, loss). With targets (B, T), logits for every position
        (None with chunked_loss) and the mean cross-entropy (targets of -1 are ignored), or each
        token's (B * T,) with loss_reduction="none"; without, logits for the last position only
        (B, 1, vocab_size), which is all that sampling needs, and loss None. With a KVCache, idx
        continues the tokens already cached.
        """
        x = self.hidden_states(idx, cache)
        if targets is not None and self.chunked_loss:  # smallgpt/chunked_loss.py
            return None, chunked_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten(), loss_reduction)
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1,
                                   reduction=loss_reduction)
        else:
            logits = self.lm_head(x[:, -1:, :])  # (B, 1, vocab_size)
            loss = None
        return logits, loss

    def hidden_states(self, idx, cache=None, positions=None, mask=None):
        """
        idx (B, T) -> the last layer's output (B, T, C), which lm_head turns into logits. A row may instead hold
        several sequences that share a start (smallgpt/likelihood.py: a context and each of its endings): then
        positions (B, T) gives each token's position and mask (B, 1, T, T) is True where a token may attend.
        """
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        if positions is None and start + T > self.config.block_size:
            raise ValueError(f"cannot forward {start + T} tokens: block_size is {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        rotation = None
        if self.config.rotary:  # a view of the tables in the causal order (sampling's every step), else a gather
            where = slice(start, start + T) if positions is None else positions
            rotation = self.rotary_cos[where], self.rotary_sin[where]  # (T, 1, hs) or (B, T, 1, hs) each
        elif "wpe" in self.transformer:
            if positions is None:
                positions = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
            x = x + self.transformer.wpe(positions)  # (T, C) broadcast over the batch, or (B, T, C)
        if self.training:
            x = self.transformer.drop(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            if recompute:  # in the backward pass, replaying the random number generators: the same dropout masks
                x = torch.utils.checkpoint.checkpoint(block, x, rotation, use_reentrant=False)
            else:
                x = block(x, rotation, cache, mask)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def crop_block_size(self, block_size):
        """Shorten the context, e.g. to finetune a model trained with a longer block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.config.rotary:
            self.rotary_cos, self.rotary_sin = self.rotary_cos[:block_size], self.rotary_sin[:block_size]
        elif "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """
        A GPT with pretrained weights: OpenAI's 'gpt2', 'gpt2-medium', 'gpt2-large' or 'gpt2-xl', downloaded from
        the Hugging Face Hub, or a folder in Hugging Face's GPT-2 format. override_args may set dropout.
        """
        override_args = override_args or {}
        assert all(k == "dropout" for k in override_args)  # only dropout can be overridden
        return load_pretrained(name_or_path, lambda **shape: cls(GPTConfig(**shape, **override_args)))

    def store_weights_transposed(self):
        """
        Store every Linear weight transposed in memory (its shape, values and names stay). Sampling one token
        at a time multiplies each weight matrix by a single vector, which reads the whole matrix from memory; on
        x86 CPUs, MKL's matrix-vector product reads this layout faster (bench.py --part=sample measures it).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = module.weight.data.t().contiguous().t()

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, muon_learning_rate=0.0,
                             muon_momentum=0.95):
        """
        AdamW with weight decay on the matrices (2-D and up) only, not on biases and norm gains. With a
        muon_learning_rate, the transformer blocks' matrices are trained by Muon at that rate instead (their
        group's lr_scale is its ratio to learning_rate, for train.py's schedule), the rest by AdamW.
        """
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        muon_names = {name for name, p in params.items()
                      if muon_learning_rate and name.startswith("transformer.h.") and p.dim() == 2}
        decay_params = [p for name, p in params.items() if p.dim() >= 2 and name not in muon_names]
        nodecay_params = [p for p in params.values() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        if muon_names:
            optim_groups.append({"params": [params[name] for name in sorted(muon_names)], "weight_decay": weight_decay,
                                 "muon": True, "lr": muon_learning_rate,
                                 "lr_scale": muon_learning_rate / learning_rate})
            return Muon(optim_groups, lr=learning_rate, betas=betas, momentum=muon_momentum)
        # the fused kernel (CUDA and CPU) is one pass over all parameters instead of several ops per tensor
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def flops_per_token(self):
        """Training FLOPs per token (forward and backward), as in the PaLM paper's appendix B."""
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """
        Model FLOPs utilization: the fraction of peak_flops (FLOP/s) that fwdbwd_per_iter sequences
        of block_size tokens every dt seconds achieve. The default peak is an A100's bf16 312 TFLOPS;
        train.py passes the peak of the device it runs on.
        """
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, **sampling):
        """
        Continue each row of idx (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens).
        Call model.eval() first. See generate_stream for how the context is handled.
        """
        return torch.cat([idx, *self.generate_stream(idx, max_new_tokens, **sampling)], dim=1)

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, min_p=0.0,
                        penalties=None, tokenizer_vocab_size=None):
        """
        Yield the new tokens (B, 1) of each row of idx (B, T) one step at a time, as they are sampled (see
        smallgpt/sampling.py; penalties, if any, count the tokens in the cache): among the first
        tokenizer_vocab_size ids only, if given, so that the vocabulary's padding is never drawn.
        The prompt is processed once into a KV cache, then each new token costs one single-token step.
        Within block_size this gives exactly what recomputing the whole context at every step gives.
        Past block_size the learned position embeddings have no room left, so when the cache is full
        it is rebuilt from the last block_size // 2 tokens at positions 0, 1, ...: each new token then
        sees between half a block and a whole block of context, instead of a whole-block forward pass
        per token.
        """
        block_size = self.config.block_size
        cache = KVCache(self.config.n_layer, block_size)
        uncached = idx[:, -block_size:]  # tokens not yet in the cache: first the prompt, cropped to a block
        for _ in range(max_new_tokens):
            if cache.length + uncached.size(1) > block_size:
                cache.length = 0
                uncached = idx[:, -max(1, block_size // 2):]
            # inference mode: no_grad, and less bookkeeping per op, which is most of a one-token step's time;
            # its tensors stay inside (the cache, uncached), the caller gets ordinary ones
            with torch.inference_mode():
                if penalties and cache.length == 0:  # the tokens the model is about to see, counted afresh
                    penalties.restart(uncached, self.config.vocab_size)
                logits, _ = self(uncached, cache=cache)
                logits = logits[:, -1, :tokenizer_vocab_size]
                uncached = sample_next(penalties(logits) if penalties else logits, temperature, top_k, top_p,
                                       min_p)  # (B, 1)
                if penalties:
                    penalties.add(uncached)
            idx = torch.cat((idx, uncached), dim=1)
            yield idx[:, -1:]

