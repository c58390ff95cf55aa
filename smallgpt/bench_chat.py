"""
bench.py's chat part: a task that a small model learns on a CPU in minutes, from data the repository has. Words of
Tiny Shakespeare's training text, in conversations that ask to spell a word ("Spell crown." "c-r-o-w-n") or to
count a letter in it ("How many o's in crown?" "one"); a fifth of the words are held out, and only they are asked
in the test. The CPU recipe's model of Tiny Shakespeare is the base, the conversations prepared with its characters
(prepare.py --tokenizer_from). Compared in one run, by exact match on the held-out questions, each reply greedy:
the base, prompted with the template and a few solved examples before the question; the base finetuned in full;
and with LoRA. Also the share of replies that end where their turn ends (with the template's marker).

- bench_chat(opts, work_dir): the part; chat_task(text, n_train, n_test, seed): its conversations.
- exact_match(ckpt_path, tests, shots, examples): a model's share of right replies, and of replies that ended.
"""

import json
import os
import random
import re
import sys

import torch

from smallgpt.bench_prepare import DATA_DIR, ROOT, run
from smallgpt.bench_quality import RECIPE
from smallgpt.checkpoint import load_checkpoint
from smallgpt.conversations import prompt
from smallgpt.errors import UserError
from smallgpt.tokenizer import make_codec

NUMBERS = ["none", "one", "two", "three", "four", "five", "six", "seven", "eight"]
# the finetuning runs: 300 steps of 24 conversations packed into rows of 128 characters, from the base's weights
FINETUNE = ["--dataset=chat", "--batch_size=24", "--block_size=128", "--max_iters=300",
            "--lr_decay_iters=300", "--warmup_iters=20", "--eval_interval=300", "--eval_iters=10"]
RUNS = {"full finetuning": ["--learning_rate=1e-3"], "LoRA (rank 8)": ["--lora_rank=8", "--learning_rate=1e-2"]}
SHOTS = 4  # solved examples before the base's question
REPLY_TOKENS = 24  # a reply's most characters: the longest answer is a word of 8 letters spelled, 15


def chat_task(text, n_train, n_test, seed):
    """(training conversations, test conversations): n_train of the words but a held-out fifth, n_test of those."""
    rng = random.Random(seed)
    words = sorted({word.lower() for word in re.findall(r"[A-Za-z]+", text) if 3 <= len(word) <= 8})
    rng.shuffle(words)
    held_out, known = words[:len(words) // 5], words[len(words) // 5:]

    def conversation(word):
        if rng.random() < 0.5:
            return [{"role": "user", "content": f"Spell {word}."}, {"role": "assistant", "content": "-".join(word)}]
        letter = rng.choice(word)
        return [{"role": "user", "content": f"How many {letter}'s in {word}?"},
                {"role": "assistant", "content": NUMBERS[word.count(letter)]}]

    return [conversation(rng.choice(known)) for _ in range(n_train)], [conversation(word) for word in held_out[:n_test]]


def exact_match(ckpt_path, tests, template, shots=0, examples=()):
    """
    (share of replies exactly right, share that ended with the turn's marker) of the model in ckpt_path, greedy, on
    the tests; with shots, that many of the examples' conversations come first in each test's conversation.
    """
    model, spec = load_checkpoint(ckpt_path)
    model.eval()
    encode, decode = make_codec(spec)
    end_id = encode(template["turn_end"])[0]
    rng = random.Random(0)
    right = ended = 0
    for messages in tests:
        before = [message for example in rng.sample(list(examples), shots) for message in example]
        ids = prompt([*before, *messages[:-1]], template, encode, end_id)[-model.config.block_size:]
        reply = []
        with torch.no_grad():
            for token in model.generate_stream(torch.tensor([ids]), REPLY_TOKENS, top_k=1,
                                               tokenizer_vocab_size=spec["vocab_size"]):
                if token.item() == end_id:
                    ended += 1
                    break
                reply.append(token.item())
        right += decode(reply).strip() == messages[-1]["content"]
    return right / len(tests), ended / len(tests)


def bench_chat(opts, work_dir):
    print("\n## chat: spell a word, count a letter in it; 6,000 conversations of the words of Tiny Shakespeare's "
          "training text, 400 questions on held-out words; the base: config/shakespeare_char_cpu.py")
    source = os.path.join(DATA_DIR, "input.txt")
    if not os.path.exists(source):
        raise UserError(f"{source} is missing: run python prepare.py first")
    with open(source, encoding="utf-8") as f:
        text = f.read()
    train, tests = chat_task(text[:int(len(text) * 0.9)], 6000, 400, opts.seed)
    with open(os.path.join(work_dir, "chat.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"messages": messages}) + "\n" for messages in train)
    run([sys.executable, os.path.join(ROOT, "prepare.py"), "--input=chat.jsonl", "--dataset=chat",
         f"--tokenizer_from={DATA_DIR}"], work_dir)
    with open(os.path.join(work_dir, "data", "chat", "meta.json"), encoding="utf-8") as f:
        template = json.load(f)["chat"]
    train_py = [sys.executable, os.path.join(ROOT, "train.py")]
    device = [f"--device={opts.device}", f"--seed={opts.seed}"]
    _, base_wall = run([*train_py, RECIPE, "--out_dir=out-base", *device], work_dir)
    right, ended = exact_match(os.path.join(work_dir, "out-base", "ckpt.pt"), tests, template, SHOTS, train)
    print(f"{'the base, ' + str(SHOTS) + ' examples first':28s} exact match {right:6.1%}  ended {ended:6.1%}  "
          f"(trained in {base_wall:.1f}s)")
    for name, args in RUNS.items():
        out_dir = os.path.join(work_dir, f"out-{name.split()[0].lower()}")
        base = os.path.join(work_dir, "out-base", "ckpt.pt")  # a LoRA checkpoint names it as given: read from here
        _, wall = run([*train_py, *FINETUNE, *args, *device, f"--init_from={base}", f"--out_dir={out_dir}"], work_dir)
        right, ended = exact_match(os.path.join(out_dir, "ckpt.pt"), tests, template)
        print(f"{name:28s} exact match {right:6.1%}  ended {ended:6.1%}  (finetuned in {wall:.1f}s)")
