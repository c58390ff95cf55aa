"""
The whole GPT language model in one file: GPT-2's architecture, GPT-2's parameter names.

- GPTConfig: the model's shape, its GELU (GPT-2's tanh approximation or the exact one), and two options
  beyond GPT-2, off by default: rotary position embeddings and QK-norm.
- GPT: token and position embeddings, n_layer transformer blocks (causal self-attention
  and an MLP, each behind a LayerNorm on a residual stream), a final LayerNorm and a
  language-model head that shares its weights with the token embedding.
- GPT.generate, GPT.generate_stream: sampling with temperature, top-k and top-p, through a KV cache;
  GPT.lay_out_for_sampling lays the weights out in memory as a CPU's one-token products read them fastest.
- GPT.configure_optimizers: AdamW, or Muon for the blocks' matrices and AdamW for the rest (class Muon).
- GPT.estimate_mfu with peak_flops (a device's peak, measured on CPUs), GPT.crop_block_size, GPT.get_num_params.

A state dict saved by nanoGPT loads into this model, and the other way round.

Hugging Face's GPT-2 format, in and out:
- GPT.from_pretrained: OpenAI's GPT-2 weights ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', downloaded
  from the Hugging Face Hub and cached there) or a folder in Hugging Face's GPT-2 format (config.json and
  model.safetensors or pytorch_model.bin, as transformers' save_pretrained writes).
- GPT.save_pretrained: the model in that format, for transformers' GPT2LMHeadModel and GPT.from_pretrained.
- load_checkpoint: the model and tokenizer in a checkpoint of train.py.
Reading GPT-2's files needs safetensors, and downloading them huggingface_hub (pip install -r
requirements-gpt2.txt); both are imported only when used.

References:
1) OpenAI's GPT-2 TensorFlow implementation: https://github.com/openai/gpt-2/blob/master/src/model.py
2) "Language Models are Unsupervised Multitask Learners" (GPT-2) and "Attention Is All You Need".
3) Rotary embeddings: "RoFormer" (Su et al. 2021); QK-norm: "Scaling Vision Transformers to 22 Billion
   Parameters" (Dehghani et al. 2023); Muon: https://kellerjordan.github.io/posts/muon/
"""

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the model sees
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2; False is a little better and faster
    activation: str = "gelu_tanh"  # the MLP's GELU: GPT-2's tanh approximation, or 'gelu', the exact one (nanoGPT's)
    # Beyond GPT-2, all off by default, so that the default model is GPT-2 and loads its weights:
    rotary: bool = False  # rotary position embeddings on queries and keys instead of learned ones (no wpe)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before attention
    # Attention's logits are q.k / sqrt(head size) times this. Under qk_norm they cannot pass sqrt(head size),
    # which leaves a small head's attention too flat: above 1 sharpens it.
    attn_scale: float = 1.0


# The MLP's nonlinearity. The two compute nearly the same function, but on CPUs the exact one runs 3x faster.
ACTIVATIONS = {"gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


# OpenAI's GPT-2 models, as the Hugging Face Hub names them
GPT2_MODELS = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
# the weight files of a Hugging Face model folder, the preferred first
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# transformers' GPT-2 keeps these weights in Conv1D layers, shaped (in, out): the transpose of nn.Linear's (out, in)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# transformers' names of the GELUs that GPT2Config's activation_function may name, and ours
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# transformers' GPT2Config defaults, for the keys that a config.json leaves out
GPT2_DEFAULTS = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                     n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                     scale_attn_by_inverse_layer_idx=False, tie_word_embeddings=True, add_cross_attention=False)


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

    def forward(self, x, rotation=None, cache=None):
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
        # Several new tokens only ever come on an empty cache, where the causal mask is exact;
        # a single new token may look at everything before it, so it needs no mask.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=T > 1, scale=self.scale)  # (B, nh, T, hs)
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

    def forward(self, x, rotation=None, cache=None):
        x = x + self.attn(self.ln_1(x), rotation, cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            # learned position embeddings, unless rotary embeddings give the positions
            **({} if config.rotary else dict(wpe=nn.Embedding(config.block_size, config.n_embd))),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.rotary:
            # the angle of position t in channel pair i is t / 10000^(2i / hs), as in RoFormer (Su et al. 2021);
            # not saved with the weights: they follow from the config
            hs = config.n_embd // config.n_head
            angles = torch.outer(torch.arange(config.block_size), 10000.0 ** (-torch.arange(0, hs, 2) / hs))
            cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]  # (block_size, 1, hs/2) each
            self.register_buffer("rotary_cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (block_size, 1, hs)
            self.register_buffer("rotary_sin", torch.cat((-sin, sin), dim=-1), persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the head that reads out tokens is the embedding that reads them in.
        # https://paperswithcode.com/method/weight-tying
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
        if non_embedding and not self.config.rotary:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None):
        """
        idx (B, T) token ids -> (logits, loss). With targets (B, T), logits for every position
        and the mean cross-entropy (targets of -1 are ignored); without, logits for the last
        position only (B, 1, vocab_size), which is all that sampling needs, and loss None.
        With a KVCache, idx continues the tokens already cached.
        """
        device = idx.device
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"cannot forward {start + T} tokens: block_size is {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        rotation = None
        if self.config.rotary:
            rotation = self.rotary_cos[start:start + T], self.rotary_sin[start:start + T]  # (T, 1, hs) each
        else:
            pos = torch.arange(start, start + T, dtype=torch.long, device=device)  # (T,)
            x = x + self.transformer.wpe(pos)  # (T, C) position embeddings, broadcast over the batch
        if self.training:
            x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rotation, cache)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.length += T
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, -1:, :])  # (B, 1, vocab_size)
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shorten the context, e.g. to finetune a model trained with a longer block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.config.rotary:
            self.rotary_cos, self.rotary_sin = self.rotary_cos[:block_size], self.rotary_sin[:block_size]
        else:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """
        A GPT with pretrained weights: name_or_path is one of GPT2_MODELS, downloaded from the Hugging Face
        Hub (which caches it, so later calls need no network), or a folder in Hugging Face's GPT-2 format.
        The shape is the pretrained model's; override_args may set dropout. Raises ValueError for a name,
        folder or file that is not a GPT-2 model, ImportError for a missing optional package and OSError
        for a failed download, each with a message that says what to do.
        """
        override_args = override_args or {}
        assert all(k == "dropout" for k in override_args)  # only dropout can be overridden
        config_path, weights_path = pretrained_files(name_or_path)
        config_args = gpt2_config_args(config_path)
        state = from_gpt2_names(read_weights(weights_path))
        model = cls(GPTConfig(**config_args, **override_args))
        expected = model.state_dict()
        missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
        if missing or unexpected:
            raise ValueError(f"{weights_path} does not hold the weights that {config_path} describes: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        for key, value in expected.items():
            if state[key].shape != value.shape:
                raise ValueError(f"{weights_path} does not hold the weights that {config_path} describes: "
                                 f"{key} is {tuple(state[key].shape)}, not {tuple(value.shape)}")
        model.load_state_dict(state)
        return model

    def save_pretrained(self, folder):
        """
        Write folder/config.json and folder/model.safetensors in Hugging Face's GPT-2 format, which
        transformers (GPT2LMHeadModel.from_pretrained) and GPT.from_pretrained read. GPT-2 has biases
        everywhere: a model without them gets zero biases, which compute the same. A model with an option
        beyond GPT-2 (rotary, qk_norm, attn_scale) cannot be written so: ValueError.
        """
        cfg = self.config
        beyond = [name for name, on in (("rotary", cfg.rotary), ("qk_norm", cfg.qk_norm),
                                        ("attn_scale", cfg.attn_scale != 1.0)) if on]
        if beyond:
            raise ValueError(f"GPT-2's format cannot hold this model: it uses {', '.join(beyond)}, which GPT-2 has not")
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ImportError("saving in Hugging Face's format needs safetensors: pip install safetensors") from None
        state = {key: value.detach().cpu() for key, value in self.state_dict().items() if key != "lm_head.weight"}
        for name, module in self.transformer.named_modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is None:
                state[f"transformer.{name}.bias"] = torch.zeros(module.weight.size(0))
        config = dict(GPT2_DEFAULTS, architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size,
                      n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                      activation_function="gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
                      attn_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, resid_pdrop=cfg.dropout)
        os.makedirs(folder, exist_ok=True)
        with replaced_atomically(os.path.join(folder, "model.safetensors")) as tmp:
            save_file(to_gpt2_names(state), tmp, metadata={"format": "pt"})  # transformers wants the format
        with replaced_atomically(os.path.join(folder, "config.json")) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    def lay_out_for_sampling(self):
        """
        Store every Linear weight transposed in memory (its shape, values and names stay). Sampling one token
        at a time multiplies each weight matrix by a single vector, which reads the whole matrix from memory; on
        x86 CPUs, MKL's matrix-vector product reads this layout about twice as fast (bench.py --part=sample).
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
        hidden = {name for name, p in params.items()
                  if muon_learning_rate and name.startswith("transformer.h.") and p.dim() == 2}
        decay_params = [p for name, p in params.items() if p.dim() >= 2 and name not in hidden]
        nodecay_params = [p for p in params.values() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        if hidden:
            optim_groups.append({"params": [params[name] for name in sorted(hidden)], "weight_decay": weight_decay,
                                 "muon": True, "lr": muon_learning_rate, "lr_scale": muon_learning_rate / learning_rate})
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
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """
        Continue each row of idx (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens).
        Call model.eval() first. See generate_stream for how the context is handled.
        """
        return torch.cat([idx, *self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p)], dim=1)

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """
        Yield the new tokens (B, 1) of each row of idx (B, T) one step at a time, as they are sampled.
        The prompt is processed once into a KV cache, then each new token costs one single-token step.
        Within block_size this gives exactly what recomputing the whole context at every step gives.
        Past block_size the learned position embeddings have no room left, so when the cache is full
        it is rebuilt from the last block_size // 2 tokens at positions 0, 1, ...: each new token then
        sees between half a block and a whole block of context (nanoGPT's recomputation always sees
        the last full block, at the cost of a whole-block forward pass per token).
        """
        block_size = self.config.block_size
        cache = KVCache(self.config.n_layer, block_size)
        fresh = idx[:, -block_size:]  # tokens not yet in the cache: first the prompt, cropped to a block
        for _ in range(max_new_tokens):
            if cache.length + fresh.size(1) > block_size:
                cache.length = 0
                fresh = idx[:, -max(1, block_size // 2):]
            # inference mode: no_grad, and less bookkeeping per op, which is most of a one-token step's time;
            # its tensors stay inside (the cache, fresh), the caller gets ordinary ones
            with torch.inference_mode():
                logits, _ = self(fresh, cache=cache)
                fresh = sample_next(logits[:, -1, :], temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, fresh), dim=1)
            yield idx[:, -1:]


def peak_flops(device, dtype):
    """
    Peak FLOP/s of one device at dtype ('float32', 'bfloat16', 'float16'), for MFU: the data sheet's dense
    figure for GPUs; on a CPU, the best of several 1024 x 1024 matrix products, measured now.
    """
    device_type = device.split(":")[0]
    if device_type == "cuda":
        name = torch.cuda.get_device_name(device)
        # dense bf16/fp16 tensor-core peaks, from the vendors' data sheets
        table = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
                 ("4090", 165e12), ("A10", 125e12), ("V100", 125e12), ("T4", 65e12)]
        peak = next((flops for key, flops in table if key in name), 312e12)
        return peak if dtype != "float32" else peak / 2  # TF32 runs at half the 16-bit rate
    if device_type == "mps":
        return 10e12  # roughly an M-series GPU's fp32 peak
    a = torch.full((1024, 1024), 0.5, dtype=getattr(torch, dtype))  # not random: the RNG state belongs to training
    best = 0.0
    for _ in range(8):  # the first products run slow while the cores wake up
        t = time.perf_counter()
        for _ in range(4):
            a @ a
        best = max(best, 4 * 2 * 1024**3 / (time.perf_counter() - t))
    return best


class Muon(torch.optim.Optimizer):
    """
    Muon (Keller Jordan, 2024: https://kellerjordan.github.io/posts/muon/) for the param groups marked
    muon=True, AdamW for the others. Muon keeps a momentum of each matrix's gradient and steps along its
    Nesterov update made orthogonal: the same singular vectors, every singular value near 1, so that
    no direction dominates the step. Newton-Schulz iterations make it orthogonal with matrix products
    alone; all the matrices of one shape go through them together, as one batch, in float32.
    """

    def __init__(self, param_groups, lr, betas, momentum=0.95, eps=1e-8):
        super().__init__(param_groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["muon"]:
                self.muon_step(group, params)
            else:
                self.adamw_step(group, params)
        return loss

    # Each update below is one call over all the group's tensors (torch._foreach_*), not one call per tensor: the
    # same arithmetic, but on a GPU every call is a kernel launch, and a small model's step is made of launches.
    def muon_step(self, group, params):
        by_shape = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, same_shape in by_shape.items():
            grads = [p.grad for p in same_shape]
            momenta = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in same_shape]
            torch._foreach_lerp_(momenta, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, momenta, group["momentum"])  # Nesterov: look one step ahead
            # a wide matrix's orthogonal update has smaller entries than a tall one's: scale it up to match
            step_size = group["lr"] * max(1.0, shape[0] / shape[1]) ** 0.5
            torch._foreach_mul_(same_shape, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(same_shape, orthogonalize(torch.stack(updates)).unbind(0), alpha=-step_size)

    def adamw_step(self, group, params):
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_div(exp_avg_sqs, [1 - beta2 ** s["step"] for s in states])
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        step_sizes = [-group["lr"] / (1 - beta1 ** s["step"]) for s in states]
        torch._foreach_addcdiv_(params, exp_avgs, denominators, step_sizes)


def orthogonalize(G, steps=5):
    """
    G (n, rows, cols) -> n matrices with G's singular vectors and singular values between about 0.7 and 1.2:
    Muon's quintic Newton-Schulz iteration, whose coefficients trade exactness for fast convergence.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    wide = G.size(1) <= G.size(2)
    X = G if wide else G.mT  # iterate on the smaller Gram matrix X @ X^T
    X = X / (X.norm(dim=(1, 2), keepdim=True) + 1e-7)  # singular values at most 1
    for _ in range(steps):
        A = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)  # (a + bA + cA^2) X
    return X if wide else X.mT


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """Draw one token per row from logits (B, vocab_size): temperature, then top-k, then top-p (nucleus)."""
    logits = logits / temperature
    candidates = None  # the token id of each column of logits, once top-k or top-p has sorted them
    if top_k is not None and top_k < logits.size(-1):
        logits, candidates = torch.topk(logits, top_k)  # (B, top_k) each, the most likely first
    if top_p is not None and top_p < 1.0:
        if candidates is None:
            logits, candidates = torch.sort(logits, dim=-1, descending=True)
        # keep the most likely tokens until their probabilities add up to top_p
        probs = F.softmax(logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # the most likely always stays
        logits = logits.masked_fill(outside, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    # The column whose probability over an exponential random number is largest is a draw from probs (the
    # exponential race, which torch.multinomial uses inside too, without its checks that cost more than the draw)
    column = (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1, keepdim=True)  # (B, 1)
    return column if candidates is None else candidates.gather(-1, column)


# -----------------------------------------------------------------------------
# Hugging Face's GPT-2 format: config.json, and the weights under transformers' names

def pretrained_files(name_or_path):
    """(config.json, weights file) of a local model folder, or of a GPT-2 model downloaded from the Hub."""
    if os.path.isdir(name_or_path):
        config_path = os.path.join(name_or_path, "config.json")
        if not os.path.isfile(config_path):
            hint = (f"; it holds a checkpoint of train.py, which python export.py --out_dir={name_or_path} converts"
                    if os.path.isfile(os.path.join(name_or_path, "ckpt.pt")) else "")
            raise ValueError(f"{name_or_path} has no config.json, so it is not a model in Hugging Face's format{hint}")
        weights = [os.path.join(name_or_path, name) for name in HF_WEIGHTS
                   if os.path.isfile(os.path.join(name_or_path, name))]
        if not weights:
            raise ValueError(f"{name_or_path} has a config.json but no weights: neither {' nor '.join(HF_WEIGHTS)}")
        return config_path, weights[0]
    if name_or_path not in GPT2_MODELS:
        raise ValueError(f"'{name_or_path}' is neither a GPT-2 model ({', '.join(GPT2_MODELS)}) nor a folder")
    # every GPT-2 repository on the Hub has model.safetensors, the format that can be read without unpickling
    repo_id = GPT2_MODELS[name_or_path]
    return hub_download(repo_id, "config.json"), hub_download(repo_id, HF_WEIGHTS[0])


def hub_download(repo_id, filename):
    """The local path of a file of a Hugging Face Hub repository, downloaded into the Hub's cache if not there yet."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import LocalEntryNotFoundError
    except ImportError:
        raise ImportError("downloading GPT-2 from the Hugging Face Hub needs huggingface_hub: "
                          "pip install huggingface_hub safetensors") from None
    try:
        return hf_hub_download(repo_id, filename)
    except LocalEntryNotFoundError:
        raise OSError(f"cannot download {repo_id}/{filename}: the Hugging Face Hub ({constants.ENDPOINT}) is out of "
                      f"reach (or HF_HUB_OFFLINE=1) and the file is not in its cache ({constants.HF_HUB_CACHE}); "
                      f"check your connection, or use a local model folder") from None
    except OSError as e:  # huggingface_hub's HTTP errors are OSErrors
        reason = " ".join(line.strip() for line in str(e).splitlines()[:3] if line.strip())
        raise OSError(f"cannot download {repo_id}/{filename} from the Hugging Face Hub: {reason}") from None


def gpt2_config_args(config_path):
    """GPTConfig's arguments from a config.json; ValueError where it describes anything but GPT-2's architecture."""
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not a model configuration: it holds a {type(config).__name__}")
    c = {**GPT2_DEFAULTS, **config}
    if c["model_type"] != "gpt2":
        raise ValueError(f"{config_path} describes a {c['model_type']} model, not GPT-2")
    gpt2_like = {
        "activation_function": c["activation_function"] in HF_ACTIVATIONS,
        "layer_norm_epsilon": c["layer_norm_epsilon"] == 1e-5,
        "n_inner": c["n_inner"] in (None, 4 * c["n_embd"]),
        "scale_attn_weights": c["scale_attn_weights"] is True,
        "scale_attn_by_inverse_layer_idx": c["scale_attn_by_inverse_layer_idx"] is False,
        "tie_word_embeddings": c["tie_word_embeddings"] is True,
        "add_cross_attention": c["add_cross_attention"] is False,
    }
    unlike = [f"{key}={c[key]!r} (GPT-2: {GPT2_DEFAULTS[key]!r})" for key, ok in gpt2_like.items() if not ok]
    if unlike:
        raise ValueError(f"{config_path} is not GPT-2's architecture, the only one this model implements: "
                         f"{', '.join(unlike)}")
    if c["n_embd"] % c["n_head"] != 0:
        raise ValueError(f"{config_path}: n_embd ({c['n_embd']}) is not divisible by n_head ({c['n_head']})")
    return dict(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["n_positions"],
                vocab_size=c["vocab_size"], bias=True, activation=HF_ACTIVATIONS[c["activation_function"]])


def read_weights(path):
    """The tensors of a model.safetensors or pytorch_model.bin file, read without unpickling anything."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"reading {path} needs safetensors: pip install safetensors") from None
    try:
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not weights at all
        raise ValueError(f"{path} is not a readable weights file ({type(e).__name__}); "
                         f"it may be truncated or corrupted") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a weights file: it does not hold a dictionary of tensors")
    return state


def from_gpt2_names(hf_state):
    """
    Our state dict from transformers' GPT-2 one: with or without the 'transformer.' prefix (GPT2Model saves
    leave it out), without the causal-mask buffers of older files (attn.bias, attn.masked_bias) or the
    language-model head (it is the token embedding), and with the Conv1D weights transposed.
    """
    state = {}
    for key, value in hf_state.items():
        key = key.removeprefix("transformer.")
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
            continue
        state[f"transformer.{key}"] = value.t() if key.endswith(CONV1D_WEIGHTS) else value
    if "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def to_gpt2_names(state):
    """transformers' GPT2LMHeadModel state dict from ours (less the tied head): the Conv1D weights transposed."""
    return {key: (value.t() if key.endswith(CONV1D_WEIGHTS) else value).contiguous() for key, value in state.items()}


@contextmanager
def replaced_atomically(path):
    """Yield a temporary path to write, then rename it to path: an interrupted write leaves path as it was."""
    tmp = path + ".tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """
    (model, tokenizer description) from a checkpoint that train.py wrote, on the CPU. Read with weights_only=True,
    so that a malicious file cannot run code; ValueError when path is missing or not such a checkpoint.
    """
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}: train a model first (python train.py), or point --out_dir at one")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a checkpoint at all
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                         f"it may be truncated or corrupted") from None
    if not isinstance(checkpoint, dict) or not {"model", "model_args", "tokenizer"} <= checkpoint.keys():
        raise ValueError(f"{path} was not written by this project's train.py: it lacks the model or its tokenizer")
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    return model, checkpoint["tokenizer"]
