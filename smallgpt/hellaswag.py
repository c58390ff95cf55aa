"""
HellaSwag (Zellers et al., 2019): sentences to finish, each with four endings of which one is right. A model
picks the ending it finds most likely after the context, scored as build-nanogpt's hellaswag.py does it: `acc`
by the ending's summed cross-entropy, `acc_norm` by its mean per token.

- fetch_hellaswag(source, rank): the file to read: the validation split (10,042 examples) downloaded once into
  data/hellaswag and checked at every use; or any HellaSwag-format .jsonl, a path or an http(s) URL.
- read_examples(path, limit): [(context, endings, label)] of the first limit examples (0: all);
  load_examples(source, limit, rank): the same of the file that fetch_hellaswag gives.
- hellaswag_share(examples, tokenizer_spec, rank, world_size): this process's share of them, tokenized.
- hellaswag_accuracy(model, hellaswag, autocast): acc, acc_norm and the number of examples, over all processes.
"""

import hashlib
import json
import os
import urllib.parse

import torch
import torch.distributed as dist
from tqdm import tqdm

from smallgpt.documents import is_url
from smallgpt.errors import UserError
from smallgpt.files import download, make_dir, open_file
from smallgpt.likelihood import continuation_losses, lenient_encoder

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_DIR = os.path.join("data", "hellaswag")
HELLASWAG_PATH = os.path.join(HELLASWAG_DIR, "hellaswag_val.jsonl")
# the file's git blob id in rowanz/hellaswag: a SHA-1 of its size and its bytes
HELLASWAG_BLOB_ID = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"
EXAMPLES_PER_CHUNK = 256  # examples scored between two updates of the progress bar


def git_blob_id(path):
    """The id git gives the file's contents: the SHA-1 of 'blob SIZE\\0' and its bytes."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch_hellaswag(source="", rank=0):
    """
    The path of the HellaSwag file to read: source if it is a path; a URL is downloaded into data/hellaswag;
    without source, the validation split, downloaded on first use and checked against its known checksum at
    every use. Under torchrun, process 0 fetches the file while the others wait.
    """
    if source and not is_url(source):
        return source
    name = os.path.basename(urllib.parse.urlparse(source).path) or "hellaswag.jsonl"
    path = os.path.join(HELLASWAG_DIR, name) if source else HELLASWAG_PATH
    if rank == 0:
        make_dir(HELLASWAG_DIR, "the HellaSwag folder")
        if source:
            download(source, path, "pass a local file with --hellaswag_file=PATH")
        else:
            fetch_validation_split()
    if dist.is_initialized():
        dist.barrier()  # the file is in place for every process
    return path


def fetch_validation_split():
    """HELLASWAG_PATH, downloaded unless it is there and whole."""
    instead = f"download it by hand into {HELLASWAG_PATH}, or pass a HellaSwag-format .jsonl with --hellaswag_file="
    if os.path.isfile(HELLASWAG_PATH):
        if git_blob_id(HELLASWAG_PATH) == HELLASWAG_BLOB_ID:
            return
        print(f"{HELLASWAG_PATH} is not the HellaSwag validation split (its checksum differs): downloading it again")
    download(HELLASWAG_URL, HELLASWAG_PATH, instead)
    if git_blob_id(HELLASWAG_PATH) != HELLASWAG_BLOB_ID:
        os.remove(HELLASWAG_PATH)
        raise UserError(f"the file at {HELLASWAG_URL} is not the HellaSwag validation split that this version "
                        f"knows (its checksum differs); {instead}")


def read_examples(path, limit=0):
    """[(context, endings, label)] of the first limit examples of a HellaSwag-format .jsonl (0: all of them)."""
    examples = []
    with open_file(path, "HellaSwag file") as f:
        for number, line in enumerate(f, start=1):
            if limit and len(examples) == limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                context, endings, label = row["ctx"], row["endings"], row["label"]
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                problem = f"lacks {e}" if isinstance(e, KeyError) else "is not a JSON object"
                raise UserError(f"{path}, line {number}: {problem}; each line of a HellaSwag file holds "
                                f"\"ctx\", \"endings\" and \"label\"") from None
            if not (isinstance(context, str) and isinstance(endings, list) and len(endings) >= 2
                    and all(isinstance(ending, str) for ending in endings)
                    and type(label) is int and 0 <= label < len(endings)):
                raise UserError(f"{path}, line {number}: \"ctx\" must be a text, \"endings\" a list of at least two "
                                f"texts and \"label\" the index of the right one")
            examples.append((context, endings, label))
    if not examples:
        raise UserError(f"{path} holds no HellaSwag examples")
    return examples


def load_examples(source="", limit=0, rank=0):
    """read_examples of the file that fetch_hellaswag gives for source."""
    return read_examples(fetch_hellaswag(source, rank), limit)


def hellaswag_share(examples, tokenizer_spec, rank=0, world_size=1):
    """
    This process's share of the examples, as the model reads them: (share, number of examples in all), where the
    share lists (pairs, label), one (context ids, ending ids) pair per ending, the ending with its leading space.
    """
    encode = lenient_encoder(tokenizer_spec)
    share = []
    for context, endings, label in examples[rank::world_size]:
        context_ids = encode(context)
        share.append(([(context_ids, encode(" " + ending)) for ending in endings], label))
    return share, len(examples)


def hellaswag_accuracy(model, hellaswag, autocast, fsdp=False, progress=False, batch_tokens=None):
    """
    {"acc", "acc_norm", "examples"} of the model on a hellaswag_share, over all processes; fsdp and
    batch_tokens as in continuation_losses. progress shows a bar with the running acc_norm.
    """
    share, n_examples = hellaswag
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    most_per_process = -(-n_examples // world_size)
    chunks = max(1, -(-most_per_process // EXAMPLES_PER_CHUNK))  # as many in every process
    right = right_norm = seen = 0  # examples whose right ending has the lowest summed loss; the lowest mean
    with tqdm(total=n_examples, desc="hellaswag", unit=" examples", disable=None if progress else True) as bar:
        for k in range(chunks):
            chunk = share[k * EXAMPLES_PER_CHUNK:(k + 1) * EXAMPLES_PER_CHUNK]
            pairs = [pair for ending_pairs, _ in chunk for pair in ending_pairs]
            losses = iter(continuation_losses(model, pairs, autocast, batch_tokens, fsdp))
            for ending_pairs, label in chunk:
                scores = [next(losses) for _ in ending_pairs]  # (summed loss, tokens, greedy) of each ending
                sums = [loss for loss, _, _ in scores]
                means = [loss / max(n_tokens, 1) for loss, n_tokens, _ in scores]
                right += sums.index(min(sums)) == label
                right_norm += means.index(min(means)) == label
            seen += len(chunk)
            bar.update(min(len(chunk) * world_size, n_examples - bar.n))
            bar.set_postfix(acc_norm=f"{right_norm / max(seen, 1):.4f}")
    counts = torch.tensor([right, right_norm, len(share)], device=model.lm_head.weight.device)
    if dist.is_initialized():
        dist.all_reduce(counts)
    right, right_norm, n = counts.tolist()
    return {"acc": right / n, "acc_norm": right_norm / n, "examples": int(n)}
