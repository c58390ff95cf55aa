"""
train.py's checkpoints, out_dir/ckpt.pt, and where a model comes from. A checkpoint is self-contained (weights,
model shape, optimizer, progress, config and tokenizer), written atomically, and read back with weights_only=True,
so that a file can never run code.

- start_model: the model that train.py trains: new, resumed from its checkpoint, or pretrained (GPT-2's weights,
  a folder's or a checkpoint file's, checked against the data); with its shape, for a resume the checkpoint, and
  with lora_rank its LoRA adapters (smallgpt/lora.py): a LoRA checkpoint keeps them alone, with its base's name
  or path and checksum, and is read back onto that base, unchanged. A run never writes over what it starts from.
- record_base (python -m smallgpt.checkpoint LORA_CKPT --base=PATH): where a LoRA checkpoint's base is now.
- mark_stopped_early: note in the best evaluation's checkpoint that its run stopped early, for a resume to ask.
- load_model: the model and tokenizer spec of a checkpoint, of OpenAI's GPT-2 or of a Hugging Face folder, on the
  CPU (sample.py, eval.py); load_checkpoint: those of a checkpoint file (export.py, bench.py), a LoRA checkpoint's
  adapters merged into its base's weights.
- read_checkpoint, read_for_resuming: the file, or a UserError that says why it cannot be read or resumed.
What a run saves beside its weights, and restores, is smallgpt/training_state.py's.
"""

import os
import sys
from dataclasses import asdict

import torch

from model import GPT, GPTConfig
from smallgpt.errors import UserError, report_user_errors
from smallgpt.files import replaced_atomically
from smallgpt.hf_format import check_init_from, check_pretrained_tokenizer, pretrained_tokenizer
from smallgpt.lora import add_adapters, is_adapter, merge_adapters, parse_targets, weights_checksum
from smallgpt.tokenizer import GPT2_SPEC, same_tokenizer

# the settings that act on the transformer blocks, which the bigram model (n_layer=0) has none of
BLOCK_SETTINGS = ("rotary", "qk_norm", "muon_learning_rate", "activation_checkpointing", "chunked_loss")

# what a run tells save_training of itself: with the weights, the optimizer, the gradient scaler and the RNG
# states, what a resume needs; a run also gives "pretrained" (where its weights started) and, with max_seconds,
# its "budget"
RUN_KEYS = ("model_args", "iter_num", "best_val_loss", "best_iter", "config", "tokenizer")
TRAINING_KEYS = ("model", "optimizer", "scaler", "rng_cpu", "rng_cuda", *RUN_KEYS)
MODEL_KEYS = tuple(key for key in asdict(GPTConfig()) if key != "dropout")  # the model's shape and options
PRETRAINED_KEYS = tuple(key for key in MODEL_KEYS if key != "block_size")  # a pretrained model brings its own


def save_checkpoint(path, checkpoint):
    with replaced_atomically(path, what="checkpoint") as [tmp], open(tmp, "wb") as f:
        torch.save(checkpoint, f)  # through a Python file, whose errors say what went wrong


def read_checkpoint(path, required=("model", "model_args", "tokenizer"), device="cpu"):
    """The checkpoint at path as a dict; UserError when it is missing, unreadable or lacks a required key."""
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}: train a model first (python train.py), or point --out_dir at one")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, corrupted, a folder, or not a checkpoint at all
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                        f"it may be truncated or corrupted") from None
    missing = sorted(set(required) - (checkpoint.keys() if isinstance(checkpoint, dict) else set()))
    if missing:
        raise UserError(f"{path} was not written by this train.py (it lacks {', '.join(missing)})")
    return checkpoint


def load_checkpoint(path, dropout=None, read=None):
    """
    (model, tokenizer spec) of the checkpoint at path, on the CPU, with this dropout if given; a LoRA checkpoint's
    adapters folded into its base's weights (which must be as they were). UserError as read_checkpoint. read, if
    given, gets the real path of each file the weights come from: path, then a LoRA checkpoint's bases in turn.
    """
    read = [] if read is None else read
    read.append(os.path.realpath(path))
    checkpoint = read_checkpoint(path)
    model_args = {**checkpoint["model_args"], **({} if dropout is None else {"dropout": dropout})}
    if not checkpoint.get("lora"):
        model = GPT(GPTConfig(**model_args))
        model.load_state_dict(checkpoint["model"])
        return model, checkpoint["tokenizer"]
    return merge_adapters(with_adapters(path, checkpoint, model_args, read)), checkpoint["tokenizer"]


def load_model(init_from, out_dir):
    """
    (model, tokenizer spec) on the CPU: the checkpoint in out_dir (init_from='resume') or at a path, OpenAI's
    GPT-2 by name, or a folder in Hugging Face's GPT-2 format, with GPT-2's BPE or the tokenizer.json of a BPE
    that export.py wrote.
    """
    check_init_from(init_from, {"resume": "the checkpoint in out_dir"})
    if init_from == "resume" or os.path.isfile(init_from):
        return load_checkpoint(os.path.join(out_dir, "ckpt.pt") if init_from == "resume" else init_from)
    tokenizer_spec = pretrained_tokenizer(init_from)
    model = GPT.from_pretrained(init_from)
    whose = "GPT-2's" if tokenizer_spec == GPT2_SPEC else "its tokenizer's"
    check_vocabulary(model, init_from, tokenizer_spec, whose)
    return model, tokenizer_spec


def check_vocabulary(model, init_from, tokenizer_spec, whose):
    """UserError if the pretrained model init_from has fewer tokens than the tokenizer whose ids it is to read."""
    if model.config.vocab_size < tokenizer_spec["vocab_size"]:
        raise UserError(f"{init_from} has {model.config.vocab_size} tokens, fewer than {whose} "
                        f"{tokenizer_spec['vocab_size']}: it is not a model of that tokenizer")


def start_model(init_from, model_args, ckpt_path, config, tokenizer_spec, data_dir, verbose):
    """
    (model, model_args, checkpoint, lora) for train.py, on the CPU: a new model of model_args
    (init_from='scratch'); the checkpoint at ckpt_path, if it can resume with this run's settings, and its model
    with its weights ('resume'); or the model to start from that init_from names (GPT-2's weights, a Hugging Face
    folder, a checkpoint file), whose shape model_args then take, its positions cropped to block_size. With
    config's lora_rank, LoRA adapters on it, every other weight frozen; lora is then what a checkpoint keeps of
    them (their settings, the base and its checksum), else None. Settings that act on blocks are refused for the
    bigram (n_layer=0), which has none.
    """
    checkpoint, lora, read = None, None, [os.path.realpath(ckpt_path)] if init_from == "resume" else []
    if init_from == "resume":
        checkpoint, model_args, changed = read_for_resuming(ckpt_path, model_args, config, tokenizer_spec)
        if verbose:
            print(f"resuming from {ckpt_path} at iter {checkpoint['iter_num']}"
                  + (f"; changed: {', '.join(changed)}" if changed else ""))
        lora = checkpoint.get("lora")
        if lora and config["lora_rank"]:  # asked again, with the same shape (read_for_resuming): this run's dropout
            lora = checkpoint["lora"] = {**lora, "dropout": config["lora_dropout"]}
    if lora:  # the adapters go on the base they were trained on, as it was
        model = with_adapters(ckpt_path, checkpoint, model_args, read)
    elif config["lora_rank"] and init_from in ("scratch", "resume"):
        raise UserError(f"lora_rank={config['lora_rank']} finetunes a trained model: start from one with "
                        f"--init_from=gpt2, a Hugging Face folder or a ckpt.pt" + (
                            " (a run resumes as it was trained: to finetune its weights with LoRA, start a new run "
                            f"with --init_from={ckpt_path} --out_dir=...)" if init_from == "resume" else ""))
    elif init_from in ("scratch", "resume"):
        check_memory(model_args, config["device"])
        model = GPT(GPTConfig(**model_args))
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
    else:  # GPT-2's weights, a Hugging Face folder's or a checkpoint's, with its shape
        model = start_from_pretrained(init_from, tokenizer_spec, data_dir, model_args["block_size"],
                                      model_args["dropout"], verbose, read)
        if os.path.realpath(ckpt_path) in read:  # however the path is spelled, or a base of a LoRA checkpoint's
            raise UserError(f"this run would write {ckpt_path} over the weights it starts from ({init_from}"
                            f"{' and its bases' if len(read) > 1 else ''}): choose another --out_dir")
        model_args = {**model_args, **{key: getattr(model.config, key) for key in PRETRAINED_KEYS}}
    if model.config.n_layer == 0:  # the bigram (config/bigram.py): a table of logits, and nothing else
        for key in BLOCK_SETTINGS:
            if config[key]:
                acts_on = (f"no blocks for {key} to act on" if key != "chunked_loss"
                           else "no head for chunked_loss to split (its table's rows are the logits)")
                raise UserError(f"n_layer=0, the bigram model, has {acts_on}: leave {key} out")
        if model_args["dropout"]:  # it would act on the table's rows, the logits themselves
            raise UserError("n_layer=0, the bigram model, has no hidden states for dropout, which would zero logits "
                            "at random: leave dropout at 0")
    if config["lora_rank"] and not lora:
        lora = {**lora_settings(config), **base_record(init_from, ckpt_path), "checksum": weights_checksum(model)}
        add_adapters(model, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
    if verbose:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M" + (
            f"; LoRA: {trainable:,} of them train, with AdamW alone" if lora else ""))
    return model, model_args, checkpoint, lora


def check_memory(model_args, device):
    """UserError, before allocating, if a model of model_args would not fit in this machine's memory: its weights, and
    on a CPU their gradients and AdamW's two moments too."""
    with torch.device("meta"):  # shapes alone
        params = sum(p.numel() for p in GPT(GPTConfig(**model_args)).parameters())
    on_cpu = device == "cpu" or device == "auto" and not torch.cuda.is_available()
    need, have = params * 4 * (4 if on_cpu else 1), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        vocab = model_args["vocab_size"]
        instead = (f"the bigram's table is vocab_size x vocab_size ({vocab:,} x {vocab:,}): use a smaller vocabulary "
                   f"(python prepare.py --tokenizer=bpe, or --tokenizer=char)" if model_args["n_layer"] == 0 else
                   "use a smaller model (n_layer, n_embd) or vocabulary")
        raise UserError(f"a model of {params / 1e6:,.0f}M parameters needs {need / 2**30:.1f} GiB for its weights"
                        f"{', gradients and AdamW state' if on_cpu else ''}, more than this machine's "
                        f"{have / 2**30:.1f} GiB: {instead}")


def base_record(init_from, ckpt_path):
    """Where a LoRA checkpoint at ckpt_path finds its base init_from: a name, or a path, whole and from ckpt_path's
    folder (for the two moved together)."""
    if not os.path.exists(init_from):  # GPT-2 by name
        return {"base": init_from}
    return {"base": os.path.abspath(init_from),
            "base_from_checkpoint": os.path.relpath(init_from, os.path.dirname(os.path.abspath(ckpt_path)))}


def base_of(path, lora):
    """The base of the LoRA checkpoint at path: beside it as it was (a copy of both keeps to its own), else where
    it was recorded."""
    beside = os.path.normpath(os.path.join(os.path.dirname(path), lora.get("base_from_checkpoint", "")))
    return beside if "base_from_checkpoint" in lora and os.path.exists(beside) else lora["base"]


def with_adapters(path, checkpoint, model_args, read):
    """
    The model of the LoRA checkpoint at path: its base, as it was, with the checkpoint's adapters on it; read: the
    real paths of the files read so far, path last (a base among them is a loop).
    """
    lora = checkpoint["lora"]
    base = base_as_trained(path, lora, base_of(path, lora), model_args, read)
    add_adapters(base, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
    missing, unexpected = base.load_state_dict(checkpoint["model"], strict=False)
    if unexpected or any(is_adapter(name) for name in missing):
        raise UserError(f"{path} does not hold the adapters its settings describe: missing "
                        f"{[name for name in missing if is_adapter(name)][:3]}, unexpected {unexpected[:3]}")
    return base


def base_as_trained(path, lora, base_path, model_args, read):
    """The base at base_path of the LoRA checkpoint at path, its positions as the adapters were trained on; a
    UserError unless its weights are those the adapters were trained on."""
    if os.path.realpath(base_path) in read:
        raise UserError(f"{path} holds LoRA adapters whose base is {base_path}, in a loop ("
                        f"{' -> '.join(read + [os.path.realpath(base_path)])}): the base's weights were written over; "
                        f"train the adapters again from a base")
    if not os.path.exists(base_path) and (lora.get("base_from_checkpoint") or base_path.endswith(".pt")):
        raise UserError(f"{path} holds LoRA adapters for {base_path}, which is not there: put it back, or record "
                        f"where it is now with python -m smallgpt.checkpoint {path} --base=PATH")
    try:
        base = base_model(base_path, model_args["dropout"], read)
    except UserError as e:
        raise UserError(f"{path} holds LoRA adapters for {base_path}, which cannot be loaded: {e}") from None
    if model_args["block_size"] < base.config.block_size:
        base.crop_block_size(model_args["block_size"])
    if weights_checksum(base) != lora["checksum"]:
        raise UserError(f"{path} holds LoRA adapters for {base_path}, whose weights are not those they were trained "
                        f"on (sha256 {weights_checksum(base)[:12]}, not {lora['checksum'][:12]}): put back the base "
                        f"it was trained on")
    return base


def record_base(path, base_path):
    """Record in the LoRA checkpoint at path that its base is now at base_path, which must hold the same weights."""
    checkpoint = read_checkpoint(path)
    if not checkpoint.get("lora"):
        raise UserError(f"{path} holds no LoRA adapters, and so no base")
    base_as_trained(path, checkpoint["lora"], base_path, checkpoint["model_args"], [os.path.realpath(path)])
    checkpoint["lora"] = {**checkpoint["lora"], **base_record(base_path, path)}
    save_checkpoint(path, checkpoint)


def base_model(init_from, dropout=None, read=None):
    """A model to start from, on the CPU, its positions as they are: a checkpoint file of train.py's, OpenAI's
    GPT-2 by name, or a folder in Hugging Face's GPT-2 format."""
    if os.path.isfile(init_from) or init_from.endswith(".pt"):
        return load_checkpoint(init_from, dropout, read)[0]
    return GPT.from_pretrained(init_from, {} if dropout is None else dict(dropout=dropout))


def start_from_pretrained(init_from, tokenizer_spec, data_dir, block_size, dropout, verbose=True, read=None):
    """
    The pretrained model init_from to train on data_dir's ids: its tokenizer must be the data's, block_size
    may crop its positions (never add to them), dropout is this run's.
    """
    if os.path.isfile(init_from):  # a checkpoint carries its tokenizer
        model, spec = load_checkpoint(init_from, dropout, read)
        if not same_tokenizer(spec, tokenizer_spec):  # a chat template may be new: the ids mean what they meant
            raise UserError(f"{init_from} was trained with another tokenizer ({describe_tokenizer(spec)}) than "
                            f"{data_dir}'s ({describe_tokenizer(tokenizer_spec)}): finetune it on data of its own")
    else:
        check_pretrained_tokenizer(init_from, tokenizer_spec, data_dir)  # the weights were trained on its ids
        model = GPT.from_pretrained(init_from, dict(dropout=dropout))
        check_vocabulary(model, init_from, tokenizer_spec, f"{data_dir}'s tokenizer's")
    if block_size > model.config.block_size:
        raise UserError(f"block_size={block_size} is longer than the {model.config.block_size} positions of "
                        f"{init_from}; use --block_size={model.config.block_size} or less")
    if verbose:
        shape = ", ".join(f"{k}={getattr(model.config, k)}" for k in ("n_layer", "n_head", "n_embd", "vocab_size"))
        print(f"initializing from {init_from}: {shape}, block_size {model.config.block_size} -> {block_size}")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
    return model


def read_for_resuming(path, model_args, config, tokenizer_spec):
    """
    (checkpoint, model_args, changes) for resuming the checkpoint at path with this run's model_args, config and
    dataset's tokenizer_spec: the tokenizer and the model must be the checkpoint's, or a UserError says how they
    differ (a pretrained model's shape is taken from the checkpoint); changes lists the other settings that differ.
    """
    try:
        checkpoint = read_checkpoint(path, TRAINING_KEYS)
        return checkpoint, *resume_settings(checkpoint, model_args, config, tokenizer_spec)
    except UserError as e:
        raise UserError(f"cannot resume: {e}") from None


def resume_settings(checkpoint, model_args, config, tokenizer_spec):
    if checkpoint["tokenizer"] != tokenizer_spec:
        raise UserError(f"the checkpoint was trained with another tokenizer "
                        f"({describe_tokenizer(checkpoint['tokenizer'])}) than data/{config['dataset']}'s "
                        f"({describe_tokenizer(tokenizer_spec)}); resume with the dataset it was trained on, or start "
                        f"a new --out_dir")
    # a checkpoint from before an architecture option existed was trained with GPTConfig's default for it
    saved_args = {**asdict(GPTConfig()), **checkpoint["model_args"]}
    if checkpoint.get("pretrained"):  # the shape came from the pretrained model, not from this config
        model_args = {**model_args, **{key: saved_args[key] for key in PRETRAINED_KEYS}}
    different = [f"{key}={saved_args[key]!r} (asked {model_args[key]!r})" for key in MODEL_KEYS
                 if saved_args[key] != model_args[key]]
    lora, asked = checkpoint.get("lora"), lora_settings(config)
    if lora and config["lora_rank"]:  # asked again: the adapters' shape is the model's too (their dropout may change)
        same = lambda key: sorted(lora[key]) == sorted(asked[key]) if key == "targets" else lora[key] == asked[key]
        different += [f"lora_{key}={lora[key]!r} (asked {asked[key]!r})" for key in ("rank", "alpha", "targets")
                      if not same(key)]
    if different:
        raise UserError(f"the checkpoint's model differs: {', '.join(different)}; "
                        f"use the settings it was trained with, or a new --out_dir")
    stopped = checkpoint.get("stopped_early")
    if stopped and 0 < config.get("patience", 0) <= stopped["patience"] and config["max_iters"] <= stopped["max_iters"]:
        raise UserError(f"the run stopped early at iter {stopped['iter']}: no better val loss in {stopped['patience']} "
                        f"evaluations after iter {checkpoint['iter_num']}, whose weights the checkpoint holds; to "
                        f"train on from there, raise --patience or --max_iters (--patience=0: no early stop)")
    saved = checkpoint["config"]  # settings newer than the checkpoint are not changes
    changes = [f"{key} {saved[key]!r} -> {value!r}" for key, value in config.items()
               if key != "init_from" and key in saved and saved[key] != value
               and not (lora and not config["lora_rank"] and key.startswith("lora_"))]  # not asked: the checkpoint's
    if not lora and bool(saved.get("muon_learning_rate")) != bool(config["muon_learning_rate"]):  # LoRA: AdamW alone
        raise UserError(f"muon_learning_rate {saved.get('muon_learning_rate', 0.0)!r} -> "
                        f"{config['muon_learning_rate']!r} would switch between AdamW and Muon, whose states "
                        f"differ; keep it on (or off) as it was, or start a new --out_dir")
    return model_args, changes


def lora_settings(config):
    """The LoRA adapters that train.py's settings ask for: rank, alpha, dropout and targets."""
    return {"rank": config["lora_rank"], "alpha": config["lora_alpha"], "dropout": config["lora_dropout"],
            "targets": list(parse_targets(config["lora_targets"]))}


def describe_tokenizer(spec):
    return f"{spec['tokenizer']}, {spec['vocab_size']} tokens"


def mark_stopped_early(path, iter_num, patience, max_iters):
    """Record in the checkpoint at path, if any, that its run stopped early at iter_num with that patience."""
    if os.path.exists(path):
        checkpoint = read_checkpoint(path, TRAINING_KEYS)
        checkpoint["stopped_early"] = {"iter": iter_num, "patience": patience, "max_iters": max_iters}
        save_checkpoint(path, checkpoint)


if __name__ == "__main__":  # python -m smallgpt.checkpoint out-notes/ckpt.pt --base=moved/ckpt.pt
    report_user_errors()
    if len(sys.argv) != 3 or not sys.argv[2].startswith("--base="):
        raise UserError("usage: python -m smallgpt.checkpoint LORA_CKPT --base=PATH, where its base is now")
    record_base(sys.argv[1], sys.argv[2][len("--base="):])
    print(f"{sys.argv[1]}: its base is {os.path.abspath(sys.argv[2][len('--base='):])}")
