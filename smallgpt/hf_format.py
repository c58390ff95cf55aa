"""
Hugging Face's GPT-2 format, in and out: config.json with the weights in model.safetensors (or
pytorch_model.bin), under transformers' names, as GPT2LMHeadModel.save_pretrained writes them.

- check_init_from: a model to start from must be one of a script's own starts, a GPT-2 model or a folder.
- load_pretrained: OpenAI's GPT-2 weights ('gpt2' ... 'gpt2-xl', downloaded from the Hugging Face Hub and cached
  there) or a local folder, into a model that GPT.from_pretrained builds (so this file needs no import of it).
- save_pretrained: a GPT in that format, for transformers and load_pretrained (export.py).
- pretrained_tokenizer, check_pretrained_tokenizer: the spec of the tokenizer that a pretrained model's ids are
  of (GPT-2's, or the BPE in a folder's tokenizer.json that export.py wrote), and that a dataset uses it.
Reading the weights needs safetensors and downloading them huggingface_hub (pip install -r
requirements-gpt2.txt); both are imported only when used. pytorch_model.bin is read with weights_only=True.
"""

import json
import os

import torch
import torch.nn as nn

from smallgpt.conversations import chat_template, jinja_template
from smallgpt.errors import UserError
from smallgpt.files import make_dir, read_text, replaced_atomically
from smallgpt.tokenizer import EOT, GPT2_SPEC, bpe_spec, hf_vocab, same_tokenizer

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


def check_init_from(init_from, starts):
    """UserError unless init_from is one of starts ({name: what it means, or None}), a GPT-2 model, a folder or a
    checkpoint file."""
    if init_from in starts or init_from in GPT2_MODELS or os.path.exists(init_from):
        return
    named = ", ".join(f"'{name}'" + (f" ({what})" if what else "") for name, what in starts.items())
    raise UserError(f"unknown init_from '{init_from}': use {named}, a GPT-2 model ({', '.join(GPT2_MODELS)}), "
                    f"a folder in Hugging Face's GPT-2 format or a checkpoint file (a ckpt.pt of train.py's)")


def load_pretrained(name_or_path, build_model):
    """
    A model with pretrained weights: name_or_path is one of GPT2_MODELS, downloaded from the Hugging Face Hub
    (which caches it, so later calls need no network), or a folder in Hugging Face's GPT-2 format;
    build_model(**shape) makes the model of GPTConfig's shape that its config.json describes. UserError, with a
    message that says what to do, for a name, folder or file that is not a GPT-2 model, a missing optional
    package or a failed download.
    """
    config_path, weights_path = pretrained_files(name_or_path)
    model = build_model(**gpt2_config_args(config_path))
    state = from_gpt2_names(read_weights(weights_path))
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise UserError(f"{weights_path} does not hold the weights that {config_path} describes: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise UserError(f"{weights_path} does not hold the weights that {config_path} describes: "
                            f"{key} is {tuple(state[key].shape)}, not {tuple(value.shape)}")
    model.load_state_dict(state)
    return model


def save_pretrained(model, folder, tokenizer_vocab_size=50257):
    """
    Write folder/config.json and folder/model.safetensors in Hugging Face's GPT-2 format, which transformers
    (GPT2LMHeadModel.from_pretrained) and load_pretrained read, and generation_config.json, which has transformers'
    generate never draw the ids that pad the vocabulary beyond the tokenizer's tokenizer_vocab_size (the last of
    which is <|endoftext|>). GPT-2 has biases everywhere: a model without them gets zero biases, which compute the
    same. A model with an option beyond GPT-2 (rotary, qk_norm, attn_scale) cannot be written so: UserError.
    """
    cfg = model.config
    not_in_gpt2 = [name for name, on in (("rotary", cfg.rotary), ("qk_norm", cfg.qk_norm),
                                         ("attn_scale", cfg.attn_scale != 1.0), ("n_layer=0", cfg.n_layer == 0)) if on]
    if not_in_gpt2:
        raise UserError(f"cannot export to {folder}: GPT-2's format cannot hold this model: it uses "
                        f"{', '.join(not_in_gpt2)}, which GPT-2 has not")
    try:
        from safetensors.torch import save
    except ImportError:
        raise UserError(f"cannot export to {folder}: saving in Hugging Face's format needs safetensors: "
                        f"pip install safetensors") from None
    state = {key: value.detach().cpu() for key, value in model.state_dict().items() if key != "lm_head.weight"}
    for name, module in model.transformer.named_modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is None:
            state[f"transformer.{name}.bias"] = torch.zeros(module.weight.size(0))
    config = dict(GPT2_DEFAULTS, architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size,
                  n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                  activation_function="gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
                  attn_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, resid_pdrop=cfg.dropout,
                  bos_token_id=tokenizer_vocab_size - 1, eos_token_id=tokenizer_vocab_size - 1)
    generation = dict(bos_token_id=tokenizer_vocab_size - 1, eos_token_id=tokenizer_vocab_size - 1,
                      suppress_tokens=list(range(tokenizer_vocab_size, cfg.vocab_size)))
    make_dir(folder, "the model folder")
    paths = [os.path.join(folder, name) for name in ("model.safetensors", "config.json", "generation_config.json")]
    with replaced_atomically(*paths, what="model") as [weights_tmp, config_tmp, generation_tmp]:
        with open(weights_tmp, "wb") as f:  # written by Python, whose errors say what went wrong
            f.write(save(to_gpt2_names(state), metadata={"format": "pt"}))  # transformers wants the format
        for tmp, content in ((config_tmp, config), (generation_tmp, generation)):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)


def pretrained_tokenizer(name_or_path):
    """
    The spec of the tokenizer whose ids a pretrained model reads: the byte-level BPE of a folder's tokenizer.json
    as export.py writes it, else GPT-2's (OpenAI's models, folders without tokenizer.json, GPT-2's tokenizer.json).
    UserError for a tokenizer.json that is neither.
    """
    path = os.path.join(name_or_path, "tokenizer.json")
    if not os.path.isfile(path):
        return GPT2_SPEC
    return with_chat_template(bpe_of(path), os.path.join(name_or_path, "tokenizer_config.json"))


def bpe_of(path):
    """The spec of the BPE of a tokenizer.json: one that export.py wrote, or GPT-2's."""
    vocab = None
    try:
        model = json.loads(read_text(path, "tokenizer file"))["model"]
        vocab = model["vocab"]  # Hugging Face's name of each token -> its id; <|endoftext|> is added after them
        spec = bpe_spec(model["merges"], len(vocab) + 1, path)
        if vocab == hf_vocab(spec):
            return spec
    except (ValueError, KeyError, TypeError, UserError):  # not JSON, not a BPE, or not laid out as export.py does
        pass
    # GPT-2's own tokenizer.json has <|endoftext|> in its vocabulary, export.py's adds it after
    if isinstance(vocab, dict) and len(vocab) in (50256, 50257) and vocab.get(EOT, 50256) == 50256:
        return GPT2_SPEC
    raise UserError(f"{path} is neither a byte-level BPE as export.py writes it nor GPT-2's: no tokenizer here can "
                    f"read or write this model's ids")


def with_chat_template(spec, config_path):
    """spec with the chat template of a tokenizer_config.json's chat_template, where it is the one export.py wrote."""
    try:
        jinja = json.loads(read_text(config_path, "tokenizer config")).get("chat_template")
    except (UserError, ValueError, AttributeError):  # none, or not what export.py writes: no template of ours
        return spec
    template = chat_template(spec["tokenizer"])
    return {**spec, "chat": template} if jinja == jinja_template(template) else spec


def check_pretrained_tokenizer(name_or_path, tokenizer_spec, data_dir):
    """UserError unless data_dir's tokenizer_spec is the tokenizer whose ids the pretrained model reads."""
    pretrained = pretrained_tokenizer(name_or_path)
    if same_tokenizer(tokenizer_spec, pretrained):  # the data may have a chat template too
        return
    if pretrained == GPT2_SPEC:
        raise UserError(f"{name_or_path}'s weights need a dataset tokenized with GPT-2's BPE, but {data_dir} uses the "
                        f"{tokenizer_spec['tokenizer']} tokenizer; make one with: "
                        f"python prepare.py --input=YOUR_TEXT --tokenizer=gpt2")
    raise UserError(f"{name_or_path}'s weights need a dataset tokenized with the BPE of its tokenizer.json "
                    f"({pretrained['vocab_size']} tokens), but {data_dir} uses another tokenizer "
                    f"({tokenizer_spec['tokenizer']}, {tokenizer_spec['vocab_size']} tokens)")


def pretrained_files(name_or_path):
    """(config.json, weights file) of a local model folder, or of a GPT-2 model downloaded from the Hub."""
    if os.path.isdir(name_or_path):
        config_path = os.path.join(name_or_path, "config.json")
        if not os.path.isfile(config_path):
            hint = (f"; it holds a checkpoint of train.py, which python export.py --out_dir={name_or_path} converts"
                    if os.path.isfile(os.path.join(name_or_path, "ckpt.pt")) else "")
            raise UserError(f"{name_or_path} has no config.json, so it is not a model in Hugging Face's format{hint}")
        weights = [os.path.join(name_or_path, name) for name in HF_WEIGHTS
                   if os.path.isfile(os.path.join(name_or_path, name))]
        if not weights:
            raise UserError(f"{name_or_path} has a config.json but no weights: neither {' nor '.join(HF_WEIGHTS)}")
        return config_path, weights[0]
    if name_or_path not in GPT2_MODELS:
        raise UserError(f"'{name_or_path}' is neither a GPT-2 model ({', '.join(GPT2_MODELS)}) nor a folder")
    # every GPT-2 repository on the Hub has model.safetensors, the format that can be read without unpickling
    repo_id = GPT2_MODELS[name_or_path]
    return hub_download(repo_id, "config.json"), hub_download(repo_id, HF_WEIGHTS[0])


def hub_download(repo_id, filename):
    """The local path of a file of a Hugging Face Hub repository, downloaded into the Hub's cache if not there yet."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.utils import LocalEntryNotFoundError
    except ImportError:
        raise UserError("downloading GPT-2 from the Hugging Face Hub needs huggingface_hub: "
                        "pip install huggingface_hub safetensors") from None
    try:
        return hf_hub_download(repo_id, filename)
    except LocalEntryNotFoundError:
        raise UserError(f"cannot download {repo_id}/{filename}: the Hugging Face Hub ({constants.ENDPOINT}) is out of "
                        f"reach (or HF_HUB_OFFLINE=1) and the file is not in its cache ({constants.HF_HUB_CACHE}); "
                        f"check your connection, or use a local model folder") from None
    except OSError as e:  # huggingface_hub's HTTP errors are OSErrors
        reason = " ".join(line.strip() for line in str(e).splitlines()[:3] if line.strip())
        raise UserError(f"cannot download {repo_id}/{filename} from the Hugging Face Hub: {reason}") from None


def gpt2_config_args(config_path):
    """GPTConfig's arguments from a config.json; UserError where it describes anything but GPT-2's architecture."""
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"cannot read {config_path}: {e.strerror}") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a model configuration: it holds a {type(config).__name__}")
    c = {**GPT2_DEFAULTS, **config}
    if c["model_type"] != "gpt2":
        raise UserError(f"{config_path} describes a {c['model_type']} model, not GPT-2")
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
        raise UserError(f"{config_path} is not GPT-2's architecture, the only one this model implements: "
                        f"{', '.join(unlike)}")
    if c["n_embd"] % c["n_head"] != 0:
        raise UserError(f"{config_path}: n_embd ({c['n_embd']}) is not divisible by n_head ({c['n_head']})")
    return dict(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["n_positions"],
                vocab_size=c["vocab_size"], bias=True, activation=HF_ACTIVATIONS[c["activation_function"]])


def read_weights(path):
    """The tensors of a model.safetensors or pytorch_model.bin file, read without unpickling anything."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"reading {path} needs safetensors: pip install safetensors") from None
    try:
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not weights at all
        raise UserError(f"{path} is not a readable weights file ({type(e).__name__}); "
                        f"it may be truncated or corrupted") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a weights file: it does not hold a dictionary of tensors")
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
