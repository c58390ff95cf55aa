"""
Shared helpers for the tests: paths, a runner that drives the real scripts as a user would, prepare.py run in
this process, the message of a UserError, and small prepared datasets. Tests that need Tiny Shakespeare or
GPT-2's BPE files read them from ../shared/data beside the checkout (no network needed).
"""

import functools
import http.server
import json
import io
import os
import resource
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import pytest
import torch
# imported once here for the scripts that tests fork, which would each spend a second or so importing them: every
# optimizer imports dynamo, compile=True inductor
import torch._dynamo  # noqa: F401
import torch._inductor.compile_fx  # noqa: F401
import torch.distributed as dist

import prepare
from smallgpt.configurator import configure, ranges_in, script_settings
from smallgpt.errors import UserError
from smallgpt.metrics import pyplot
from smallgpt.tune_trials import run_as_main

pyplot()  # imported once here too: train.py draws with it

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
TIKTOKEN_CACHE = SHARED_DATA / "tiktoken_cache"

# tests run the scripts in forks of their process (run_script): Hugging Face's tokenizers, once it has used threads,
# warns in every fork that it turns them off
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))
# Under pytest -n, one test runs per core: a thread each (for this process and the scripts it starts) keeps them
# from fighting over the cores, which slows small products tenfold (torch read OMP_NUM_THREADS as it was imported)
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} is missing")
needs_gpt2_bpe = pytest.mark.skipif("TIKTOKEN_CACHE_DIR" not in os.environ,
                                    reason="GPT-2 BPE files: set TIKTOKEN_CACHE_DIR or provide ../shared/data")

# A tiny model that trains in seconds: flags for train.py
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--eval_iters=4",
        "--device=cpu", "--warmup_iters=5"]


def run_script(script, *args, cwd, env=None, max_file_size=None, input=""):
    """
    Run one of the project's scripts in cwd as `python script.py args...` runs it; return the CompletedProcess.
    The script runs in a fork of this process, which has imported torch and the library already (a new Python
    spends seconds on that), as tune.py runs its trials; with env, whose variables libraries read as they are
    imported, in a new Python. max_file_size: the most bytes the process may write to a file, as on a disk that
    fills up. input: what it reads on its standard input, as from a pipe.
    """
    argv = [str(ROOT / script), *map(str, args)]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))
    if env:
        return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, input=input,
                              env={**os.environ, **env}, timeout=600, preexec_fn=limit if max_file_size else None)
    return finish_fork(argv, *start_fork(argv, cwd, preexec=limit if max_file_size else None, input=input))


def run_ranks(script, *args, cwd, nproc=2):
    """
    Run one of the project's scripts as `torchrun --nproc_per_node=nproc script.py args...` runs it: nproc forks of
    this process, each with torchrun's environment, meeting at a store that this process holds as torchrun's agent
    does (its port chosen by the system, so that tests running side by side never collide). A CompletedProcess for
    each rank.
    """
    argv = [str(ROOT / script), *map(str, args)]
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    environment = dict(WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(store.port), TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0")
    forks = [start_fork(argv, cwd, {**environment, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in range(nproc)]
    return [finish_fork(argv, *fork) for fork in forks]


def start_fork(argv, cwd, environment=None, preexec=None, input=""):
    """
    (pid, stdout file, stderr file) of a fork of this process that runs argv's script in cwd with environment, input
    on its standard input.
    """
    out, err, stdin = (tempfile.TemporaryFile("w+") for _ in range(3))
    stdin.write(input)
    stdin.seek(0)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.dup2(stdin.fileno(), 0)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdin = open(0, closefd=False)  # pytest's own stands in for it in the test process
            os.chdir(cwd)
            os.environ.update(environment or {})
            signal.alarm(600)  # a script that hangs is killed, as subprocess.run's timeout would
            if preexec:
                preexec()
            torch.set_num_threads(1)  # a fork may not use the thread pool of a process that used it before
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = run_as_main(argv)
        finally:
            os._exit(code)
    stdin.close()
    return pid, out, err


def finish_fork(argv, pid, out, err):
    """The CompletedProcess of start_fork's process, once it has ended."""
    _, status = os.waitpid(pid, 0)
    with out, err:
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), out.read(), err.read())


@contextmanager
def inside(folder):
    """Work in folder, as a script run there does, and come back after."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def prepare_in(folder, *args):
    """Run prepare.py's main with args in this process, inside folder; return what it printed."""
    printed = io.StringIO()
    with inside(folder), redirect_stdout(printed):
        prepare.main([str(arg) for arg in args])
    return printed.getvalue()


def user_error(call, *fragments):
    """The message of the UserError that call() raises, which must name every fragment."""
    with pytest.raises(UserError) as error:
        call()
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return str(error.value)


def configure_as(script, argv):
    """What configure makes of argv for one of the scripts: its settings and their ranges, read from its source."""
    return configure(script_settings(ROOT / script), argv, ranges_in(ROOT / script))


def script_error(script, *args, cwd):
    """
    The message of the UserError that one of the scripts stops with when run in this process, in cwd, as `python
    script.py args...`: for the checks that need no more than the error itself (tests of each script check once, by
    running it, that such an error reaches the user as one line). The signal handlers, the excepthook and torch's
    random state, matmul precision and oneDNN switch are put back after.
    """
    saved = (sys.argv, sys.excepthook, torch.get_rng_state(), torch.get_float32_matmul_precision(),
             signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), torch.backends.mkldnn.enabled)
    sys.argv = [str(ROOT / script), *map(str, args)]
    try:
        with inside(cwd), pytest.raises(UserError) as error:
            runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv, sys.excepthook = saved[:2]
        torch.set_rng_state(saved[2])
        torch.set_float32_matmul_precision(saved[3])
        signal.signal(signal.SIGINT, saved[4])
        signal.signal(signal.SIGTERM, saved[5])
        torch.backends.mkldnn.enabled = saved[6]  # sample.py turns it off; bfloat16 is slow without it
    return str(error.value)


def run_ok(script, *args, cwd):
    """Run one of the project's scripts, which must succeed; return its stdout."""
    result = run_script(script, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_clean_error(result, *fragments):
    """A failure as users should see it: non-zero exit, one line on stderr, no traceback, naming the fragments."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does to torch.load without weights_only."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


def sample_text(n_chars=40_000):
    """Some English-like text: the start of Tiny Shakespeare where it is at hand, else a made-up play."""
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text(encoding="utf-8")[:n_chars]
    lines = ["ROMEO:\nBut soft, what light through yonder window breaks?\n",
             "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n"]
    return "".join(lines[i % 2] for i in range(n_chars // 50))[:n_chars]


def with_char_data(folder):
    """folder with data/shakespeare_char prepared from 40k characters of text; returns folder."""
    (folder / "text.txt").write_text(sample_text(), encoding="utf-8")
    prepare_in(folder, "--input=text.txt", "--dataset=shakespeare_char")
    return folder


# the finished run that tests read: 30 steps of TINY, logged every 5, evaluated every 10
FINISHED_RUN = [*TINY, "--log_interval=5", "--eval_interval=10", "--lr_decay_iters=30", "--max_iters=30"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """
    (folder, stdout) of a tiny character model's finished run: folder holds data/shakespeare_char and out/ (ckpt.pt,
    metrics.jsonl, loss.png) of train.py with FINISHED_RUN. Shared by the tests that read it; a test that writes
    works on a copy.
    """
    folder = with_char_data(tmp_path_factory.mktemp("finished"))
    return folder, run_ok("train.py", *FINISHED_RUN, cwd=folder)


@pytest.fixture
def char_data(tmp_path):
    return with_char_data(tmp_path)


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def parse_losses(stdout):
    """{iter: train-step loss} and {step: val loss} from train.py's log lines."""
    train, val = {}, {}
    for line in stdout.splitlines():
        if line.startswith("iter "):
            head, rest = line.split(":", 1)
            train[int(head.split()[1])] = float(rest.split(",")[0].split()[1])
        elif line.startswith("step "):
            head, rest = line.split(":", 1)
            val[int(head.split()[1])] = float(rest.split("val loss")[1].split(",")[0])
    return train, val


def write_chats(path, conversations):
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in conversations), encoding="utf-8")
    return path


def spelling(n, words=("king", "crown", "queen", "sword", "night", "horse", "grace", "blood")):
    """n conversations that spell a word, a system prompt in every third."""
    chats = []
    for i in range(n):
        word = words[i % len(words)]
        chats.append([*([{"role": "system", "content": "Spell it."}] if i % 3 == 0 else []),
                      {"role": "user", "content": f"Spell {word}."}, {"role": "assistant", "content": "-".join(word)}])
    return chats


@pytest.fixture(scope="session")
def spelled(tmp_path_factory):
    """A folder with a char model trained from scratch to spell 8 words in out/, and the data it learned from."""
    folder = tmp_path_factory.mktemp("spelled")
    write_chats(folder / "chats.jsonl", spelling(400))
    prepare_in(folder, "--input=chats.jsonl", "--dataset=chats")
    stdout = run_ok("train.py", *TINY, "--dataset=chats", "--max_iters=300", "--eval_interval=300", "--log_interval=50",
                    "--learning_rate=1e-2", "--n_embd=64", "--block_size=128", cwd=folder)
    return folder, stdout
