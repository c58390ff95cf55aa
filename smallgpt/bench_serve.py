"""
bench.py's serve part: serve.py as a client sees it, beside sample.py's own speed in the same run. For the 6 x 384
model with GPT-2's vocabulary (random weights, as the sample part's) and the CPU recipe's model in out/ckpt.pt: the
tokens per second that sample.py generates, in this process as sample.py does (model.generate_stream, laid out by
ready_to_generate), then serve.py in a process of its own, streaming completions to 1 client (10 requests in turn)
and to 8 clients at once (2 requests each): tokens per second over all of them, and the median time to each
client's first token.

- bench_serve(opts, work_dir): the part.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from statistics import median

import torch

from smallgpt.bench_prepare import ROOT
from smallgpt.bench_speed import gpt2_vocab_model
from smallgpt.checkpoint import load_checkpoint
from smallgpt.errors import UserError
from smallgpt.sampling import ready_to_generate, whole_texts
from smallgpt.tokenizer import GPT2_SPEC, make_codec


def sample_speed(opts, ckpt_path, prompt, n_new, repeats=5):
    """sample.py's tokens per second, its loop printing each token's text to nowhere: n_new tokens after prompt (a
    text), the median of repeats."""
    onednn = torch.backends.mkldnn.enabled  # ready_to_generate may turn it off, as sample.py runs
    model, tokenizer_spec = load_checkpoint(ckpt_path)
    model = ready_to_generate(model, opts.device, opts.dtype)
    encode, decode = make_codec(tokenizer_spec)
    idx = torch.tensor([encode(prompt)], device=opts.device)
    seconds = []
    with open(os.devnull, "w") as nowhere:
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad(), opts.autocast:
                tokens = model.generate_stream(idx, n_new, temperature=0.8, top_k=200)
                for text in whole_texts((token.item() for token in tokens), decode):
                    print(text, end="", flush=True, file=nowhere)
            seconds.append(time.perf_counter() - start)
    torch.backends.mkldnn.enabled = onednn  # as it was, for the parts after this one
    return n_new / median(seconds)


def stream(port, prompt, n_new):
    """(seconds to the first piece, seconds in all) of one streamed completion of n_new tokens."""
    body = json.dumps({"prompt": prompt, "max_tokens": n_new, "temperature": 0.8, "top_k": 200,  # sample.py's top_k
                       "stream": True}).encode()
    start = time.perf_counter()
    first = None
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while not received.endswith(b"data: [DONE]\n\n"):
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError(f"serve.py ended the stream early: {received[-300:]!r}")
            received += piece
            if not received.startswith(b"HTTP/1.1 200") and len(received) >= 12:  # an error, answered whole
                raise ConnectionError(f"serve.py refused the request: {received.decode(errors='replace')}")
            if first is None and b"data: {" in received:
                first = time.perf_counter() - start
    if b'"finish_reason": "length"' not in received:  # every token asked for came: the figures count them so
        raise ConnectionError("a reply ended before its max_tokens")
    return first, time.perf_counter() - start


def serve_speed(ckpt_path, prompt, n_new, clients, rounds):
    """(tokens per second over all the replies, median seconds to a first token): clients at once, rounds each."""
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve.py"), f"--init_from={ckpt_path}",
                               "--port=0", "--max_tokens_limit=100000"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # its access log: a line a request
    try:
        line = server.stdout.readline()  # "serving ... on http://HOST:PORT/v1"
        if "http://" not in line:
            raise UserError(f"serve.py did not start on {ckpt_path}: run it alone to see why")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        stream(port, prompt, 4)  # the first request warms the server up
        timings, failures = [], []

        def client():
            try:
                for _ in range(rounds):
                    timings.append(stream(port, prompt, n_new))
            except ConnectionError as e:
                failures.append(e)

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        if failures:
            raise failures[0]
    finally:
        server.terminate()
        server.wait()
    return clients * rounds * n_new / wall, median(first for first, _ in timings)


def bench_serve(opts, work_dir):
    model = gpt2_vocab_model(opts.seed)
    gpt2_ckpt = os.path.join(work_dir, "gpt2-vocab.pt")
    torch.save({"model": model.state_dict(), "model_args": {**model.config.__dict__}, "tokenizer": GPT2_SPEC},
               gpt2_ckpt)
    models = [("6 x 384, GPT-2's vocabulary", gpt2_ckpt, "ROMEO: " * 16, 64)]
    if os.path.exists(os.path.join("out", "ckpt.pt")):
        models.append(("the CPU recipe's model, out/ckpt.pt", os.path.abspath(os.path.join("out", "ckpt.pt")),
                       "ROMEO:", 100))
    else:
        print("\n(no out/ckpt.pt for the recipe's model: run python train.py config/shakespeare_char_cpu.py)")
    for name, ckpt_path, prompt, n_new in models:
        print(f"\n## serve: {name}, {n_new} tokens a reply, streamed, temperature 0.8")
        alone = sample_speed(opts, ckpt_path, prompt, n_new)
        print(f"{'sample.py':30s} {alone:9,.1f} tokens/s")
        for clients, rounds in ((1, 10), (8, 2)):
            speed, first = serve_speed(ckpt_path, prompt, n_new, clients, rounds)
            print(f"{f'serve.py, {clients} client(s)':30s} {speed:9,.1f} tokens/s ({speed / alone:5.1%} of sample.py's)"
                  f"  first token after {first * 1000:,.0f} ms (median)")
