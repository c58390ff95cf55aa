"""
bench.py's prepare part, and the whole processes that the quality parts run too.

- bench_prepare(opts): MB/s and peak memory of prepare.py on opts.char_megabytes of text at character level and
  opts.gpt2_megabytes with GPT-2's BPE (Tiny Shakespeare repeated), against nanoGPT's way (the whole text in memory,
  a Python dict per character, tiktoken's encode_ordinary on one core), each timed as a whole process; both must
  write the same token ids. Then a learned BPE on both files: learning, then encoding; then GPT-2's BPE on the text
  laid out as paragraphs with blank lines between them and every line indented.
- run(args, cwd, env), run_prepare(args, cwd): a command's stdout and wall time; prepare.py's, with its peak memory.
"""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from smallgpt.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join("data", "shakespeare_char")  # as python prepare.py makes it


# nanoGPT's data/shakespeare_char/prepare.py and data/shakespeare/prepare.py, down to the work they do: read the
# whole text, split it 90/10, encode each split in one call, write uint16 ids. A script of its own, as nanoGPT's
# is, so that both sides are timed as the processes a user runs (interpreter, imports, tokenizer loading and all).
NANOGPT_PREPARE = """
import os, sys
import numpy as np
path, out_dir, tokenizer = sys.argv[1:]
with open(path, encoding="utf-8") as f:
    data = f.read()
n = len(data)
train_data, val_data = data[:int(n * 0.9)], data[int(n * 0.9):]
if tokenizer == "char":
    stoi = {ch: i for i, ch in enumerate(sorted(set(data)))}
    encode = lambda s: [stoi[c] for c in s]
else:
    import tiktoken
    encode = tiktoken.get_encoding("gpt2").encode_ordinary
os.makedirs(out_dir, exist_ok=True)
np.array(encode(train_data), dtype=np.uint16).tofile(os.path.join(out_dir, "train.bin"))
np.array(encode(val_data), dtype=np.uint16).tofile(os.path.join(out_dir, "val.bin"))
"""


# prepare.py as a user runs it, in a process that then prints its peak memory in kB: Linux's VmHWM, which starts
# afresh at exec (ru_maxrss would count the memory of bench.py, from which the process was forked)
PREPARE_WITH_PEAK = ("import os, runpy, sys; sys.argv = sys.argv[1:]; "
                     "sys.path.insert(0, os.path.dirname(sys.argv[0])); "
                     "runpy.run_path(sys.argv[0], run_name='__main__'); "
                     "print('peak', next(line.split()[1] for line in open('/proc/self/status') if 'VmHWM' in line))")


def run(args, cwd, env=None):
    """Run a command (with these environment variables more); return (stdout, wall seconds), or raise its error."""
    t0 = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise UserError(f"{' '.join(map(str, args))} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout, time.perf_counter() - t0


def run_prepare(args, cwd):
    """prepare.py with args: (wall seconds, peak memory in MB, seconds spent learning a BPE)."""
    stdout, wall = run([sys.executable, "-c", PREPARE_WITH_PEAK, os.path.join(ROOT, "prepare.py"), *args], cwd)
    lines = stdout.splitlines()
    learned = [line for line in lines if line.startswith("learned a BPE")]
    return wall, int(lines[-1].split()[1]) / 1024, float(learned[0].split(" in ")[1].rstrip("s")) if learned else 0.0


def bench_prepare(opts):
    source = os.path.join(DATA_DIR, "input.txt")
    if not os.path.exists(source):
        raise UserError(f"{source} is missing: run python prepare.py first")
    with open(source, encoding="utf-8") as f:
        text = f.read()
    print("\n## prepare: Tiny Shakespeare repeated; whole processes, median of 3 runs each")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for megabytes in (opts.char_megabytes, opts.gpt2_megabytes):
            paths[megabytes] = os.path.join(tmp, f"text_{megabytes}mb.txt")
            with open(paths[megabytes], "w", encoding="utf-8") as f:
                f.write(text * -(-megabytes * 10**6 // len(text)))  # at least that many megabytes
        for tokenizer, megabytes in (("char", opts.char_megabytes), ("gpt2", opts.gpt2_megabytes)):
            path, theirs_dir = paths[megabytes], os.path.join(tmp, "data", f"nanogpt_{tokenizer}")
            ours = [run_prepare([f"--input={path}", f"--tokenizer={tokenizer}", f"--dataset=ours_{tokenizer}"], tmp)
                    for _ in range(3)]
            theirs = [run([sys.executable, "-c", NANOGPT_PREPARE, path, theirs_dir, tokenizer], tmp)[1]
                      for _ in range(3)]
            ours_dir = os.path.join(tmp, "data", f"ours_{tokenizer}")
            same = all(same_token_ids(os.path.join(ours_dir, name), os.path.join(theirs_dir, name))
                       for name in ("train.bin", "val.bin"))
            size, (wall, peak, _), theirs = os.path.getsize(path) / 1e6, np.median(ours, axis=0), np.median(theirs)
            print(f"{tokenizer:4s} {size:5.0f} MB: prepare.py {size / wall:6.1f} MB/s ({wall:5.1f}s, peak memory "
                  f"{peak:4.0f} MB), nanoGPT's way {size / theirs:6.1f} MB/s ({theirs:5.1f}s), speedup "
                  f"{theirs / wall:.2f}x, same token ids: {'yes' if same else 'NO'}")
        for megabytes in (opts.gpt2_megabytes, opts.char_megabytes):  # a BPE of the default size, learned, then encoded
            path = paths[megabytes]
            rows = [run_prepare([f"--input={path}", "--tokenizer=bpe", "--dataset=ours_bpe"], tmp) for _ in range(3)]
            size, (wall, peak, learning) = os.path.getsize(path) / 1e6, np.median(rows, axis=0)
            print(f"bpe  {size:5.0f} MB: prepare.py {size / wall:6.1f} MB/s ({wall:5.1f}s, peak memory "
                  f"{peak:4.0f} MB), of which learning from train {learning:4.1f}s ({size * 0.9 / learning:4.1f} "
                  f"MB/s), encoding and writing {wall - learning:4.1f}s ({size / (wall - learning):4.1f} MB/s)")
        # web text and verse: a blank line between the lines, and every line indented, so that no newline stands
        # between two words
        path, paragraphs = os.path.join(tmp, "paragraphs.txt"), text.replace("\n", "\n\n ")
        with open(path, "w", encoding="utf-8") as f:
            f.write(paragraphs * -(-opts.char_megabytes * 10**6 // len(paragraphs)))
        rows = [run_prepare([f"--input={path}", "--tokenizer=gpt2", "--dataset=paragraphs"], tmp) for _ in range(3)]
        size, (wall, peak, _) = os.path.getsize(path) / 1e6, np.median(rows, axis=0)
        print(f"gpt2 {size:5.0f} MB of paragraphs, lines indented: prepare.py {size / wall:6.1f} MB/s ({wall:5.1f}s, "
              f"peak memory {peak:4.0f} MB)")


def same_token_ids(a, b):
    return np.array_equal(np.fromfile(a, np.uint16), np.fromfile(b, np.uint16))
