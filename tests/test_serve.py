"""
serve.py on 127.0.0.1 with clients no one here wrote: OpenAI's own Python package (completions and chat completions,
whole and streamed), curl, and a load of concurrent streaming clients; every error class in OpenAI's shape, a client
that goes away mid-stream, SIGTERM and Ctrl-C.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest
import torch

from conftest import ROOT, TINY, run_ok, script_error, with_char_data
from smallgpt.api import StopText
from smallgpt.tune_trials import run_as_main

openai = pytest.importorskip("openai")


@contextmanager
def serving(folder, *args, stop=signal.SIGTERM):
    """serve.py running in a fork of this process in folder, on a free port: yields (base URL, its log so far); stop
    (SIGTERM, as a cluster's scheduler stops it, or SIGINT, as Ctrl-C does) must end it cleanly."""
    read_end, write_end = os.pipe()
    log_path = folder / f"serve-{len(list(folder.glob('serve-*.log')))}.log"
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            os.chdir(folder)
            torch.set_num_threads(1)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = run_as_main([str(ROOT / "serve.py"), "--port=0", "--device=cpu", *args])
        finally:
            os._exit(code)
    os.close(write_end)
    out = os.fdopen(read_end)
    first = out.readline()  # the server says where it listens once it does: no waiting on a clock
    assert first.startswith("serving "), first + log_path.read_text()
    try:
        yield first.split(" on ")[1].strip(), log_path
    finally:
        os.kill(pid, stop)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and out.read() == "stopped\n", log_path.read_text()
        out.close()


@pytest.fixture(scope="module")
def chat_server(spelled):
    with serving(spelled[0]) as (url, log):
        yield url, log


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A folder with a tiny character model of text alone in out/, of 512 positions: long replies, in a second."""
    folder = with_char_data(tmp_path_factory.mktemp("text"))
    run_ok("train.py", *TINY, "--block_size=512", "--max_iters=10", "--eval_interval=10", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def text_server(text_model):
    with serving(text_model, stop=signal.SIGINT) as (url, log):
        yield url, log


def client(url, **options):
    return openai.OpenAI(base_url=url, api_key="none", max_retries=0, **options)


@pytest.mark.slow
def test_openai_chat_completions_whole_and_streamed(chat_server):
    url, _ = chat_server
    ask = dict(model="out", messages=[{"role": "system", "content": "Spell it."},
                                      {"role": "user", "content": "Spell crown."}], temperature=0)
    whole = client(url).chat.completions.create(**ask)
    assert whole.choices[0].message.content == "c-r-o-w-n" and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == 10 and whole.usage.total_tokens == whole.usage.prompt_tokens + 10
    chunks = list(client(url).chat.completions.create(**ask, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "c-r-o-w-n"
    short = client(url).chat.completions.create(**ask, max_tokens=4)  # the space before a reply is a token too
    assert short.choices[0].message.content == "c-r" and short.choices[0].finish_reason == "length"
    stopped = client(url).chat.completions.create(**ask, stop=["o"])
    assert stopped.choices[0].message.content == "c-r-" and stopped.choices[0].finish_reason == "stop"
    free = {**ask, "messages": [{"role": "user", "content": "Spell the hall."}], "temperature": 2}  # nothing learned
    drawn = [client(url).chat.completions.create(**free, seed=seed, n=2, max_tokens=20) for seed in (1, 1, 2)]
    texts = [[choice.message.content for choice in response.choices] for response in drawn]
    assert texts[0] == texts[1] != texts[2] and len(texts[0]) == 2  # a seed makes a reply repeatable


@pytest.mark.slow
def test_openai_completions_give_sample_pys_text(text_server, text_model):
    url, _ = text_server
    response = client(url).completions.create(model="out", prompt="ROMEO:", max_tokens=40, temperature=0, seed=7)
    sampled = run_ok("sample.py", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=40", "--top_k=1",
                     "--device=cpu", cwd=text_model)
    assert "ROMEO:" + response.choices[0].text + "\n" == sampled.split("---------------")[0]
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 40
    streamed = client(url).completions.create(model="out", prompt="ROMEO:", max_tokens=40, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == response.choices[0].text
    top_1 = client(url).completions.create(model="out", prompt="ROMEO:", max_tokens=40, extra_body={"top_k": 1})
    assert top_1.choices[0].text == response.choices[0].text  # top_k, as vLLM takes it: the most likely alone
    assert [model.id for model in client(url).models.list()] == ["out"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_serving_in_half_precision_gives_sample_pys_text_in_it(text_model, dtype):
    with serving(text_model, f"--dtype={dtype}") as (url, _):
        response = client(url).completions.create(model="out", prompt="ROMEO:", max_tokens=30, temperature=0)
    sampled = run_ok("sample.py", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=30", "--top_k=1",
                     f"--dtype={dtype}", "--device=cpu", cwd=text_model)
    assert "ROMEO:" + response.choices[0].text + "\n" == sampled.split("---------------")[0]


@pytest.mark.slow
def test_curl(chat_server):
    url, _ = chat_server
    result = subprocess.run(["curl", "-sS", "-N", f"{url}/chat/completions", "-H", "Content-Type: application/json",
                             "-d", json.dumps({"model": "out", "messages": [{"role": "user", "content": "Spell king."}],
                                               "temperature": 0, "stream": True})],
                            capture_output=True, text=True, timeout=60)
    events = [line[len("data: "):] for line in result.stdout.splitlines() if line]
    assert events[-1] == "[DONE]" and all(line.startswith("{") for line in events[:-1]), result.stdout
    assert "".join(json.loads(event)["choices"][0]["delta"].get("content", "") for event in events[:-1]) == "k-i-n-g"


@pytest.mark.slow
def test_sixteen_streaming_clients_at_once_all_get_whole_answers(chat_server):
    url, _ = chat_server
    words = ["king", "crown", "queen", "sword", "night", "horse", "grace", "blood"]
    answers = {}

    def talk(k):
        for word in (words[k % 8], words[(k + 3) % 8]):
            stream = client(url).chat.completions.create(
                model="out", messages=[{"role": "user", "content": f"Spell {word}."}], temperature=0, stream=True)
            chunks = list(stream)
            answers[k, word] = ("".join(chunk.choices[0].delta.content or "" for chunk in chunks),
                                chunks[-1].choices[0].finish_reason)

    threads = [threading.Thread(target=talk, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(answers) == 32
    expected = {word: client(url).chat.completions.create(  # one at a time, the same greedy replies
        model="out", messages=[{"role": "user", "content": f"Spell {word}."}], temperature=0).choices[0].message.content
        for word in words}
    assert all(answer == (expected[word], "stop") for (_, word), answer in answers.items())


def request(url, path, body=None, headers=None, method="POST"):
    """
    (status, JSON body) of a raw request: http.client, to send what no client library would. A body that is a number
    is a length declared, the body itself never sent (the server answers from the headers alone).
    """
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    if isinstance(body, int):
        connection.putrequest(method, path)
        connection.putheader("Content-Length", str(body))
        connection.endheaders()
    else:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers or {})
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


@pytest.mark.slow
def test_every_error_is_openais_shape_and_the_server_goes_on(chat_server, text_server):
    url, _ = chat_server
    chat = {"model": "out", "messages": [{"role": "user", "content": "Spell king."}]}
    cases = [
        ("/v1/chat/completions", b"{not json", 400, "the body is not JSON", None),
        ("/v1/chat/completions", {**chat, "temperature": 3}, 400, "'temperature' must be a number from 0 to 2",
         None),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0]", None),
        ("/v1/chat/completions", {**chat, "top_k": 0}, 400, "'top_k' must be an integer from 1", None),
        ("/v1/chat/completions", {**chat, "model": "gpt-9"}, 404, "The model 'gpt-9' does not exist",
         "model_not_found"),
        ("/v1/chat/completions", {**chat, "max_tokens": 120}, 400, "maximum context length is 128 tokens",
         "context_length_exceeded"),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": "a\x04"}]}, 400,
         "which ends a turn in this model's template", None),
        ("/v1/completions", {"model": "out", "prompt": "k" * 200}, 400, "maximum context length is 128 tokens",
         "context_length_exceeded"),
        ("/v1/completions", {"model": "out", "prompt": "東京"}, 400, "the model cannot read the prompt", None),
        ("/v1/completions", 2 << 20, 413, "more than this server's 1048576", None),
        ("/v1/nothing", chat, 404, "unknown path /v1/nothing", None),
    ]
    for path, body, status, message, code in cases:
        got, payload = request(url, path, body)
        assert got == status and message in payload["error"]["message"], (path, payload)
        assert payload["error"]["code"] == code and set(payload["error"]) == {"message", "type", "param", "code"}
    got, payload = request(text_server[0], "/v1/chat/completions", chat)
    assert got == 400 and "has no chat template: use /v1/completions" in payload["error"]["message"]
    assert client(url).chat.completions.create(**chat, temperature=0).choices[0].message.content == "k-i-n-g"


@pytest.mark.slow
def test_a_key_keeps_out_who_lacks_it(spelled):
    with serving(spelled[0], "--api_key=sesame") as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, payload = request(url, "/v1/models", headers=headers, method="GET")
            assert status == 401 and payload["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(url).models.list()
        assert [model.id for model in openai.OpenAI(base_url=url, api_key="sesame").models.list()] == ["out"]


@pytest.mark.slow
def test_a_client_that_goes_away_mid_stream_stops_its_reply(text_server):
    """A reply of 500 tokens, which the tiny model takes most of a second over: the client leaves after the first."""
    url, log = text_server
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = json.dumps({"model": "out", "prompt": "ROMEO:", "max_tokens": 500, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:  # by hand: closed when the test says
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: {" not in received:  # its first piece, and then the client is gone
            piece = sock.recv(4096)
            assert piece, received
            received += piece
        sock.shutdown(socket.SHUT_RDWR)
    # the next request is answered once the server has noticed, and said so
    assert client(url).completions.create(model="out", prompt="ROMEO:", max_tokens=5).choices[0].finish_reason
    stopped = re.search(r"the client went away: its reply stopped after (\d+) tokens", log.read_text())
    assert stopped and int(stopped[1]) < 500, log.read_text()


def test_listening_beyond_this_machine_needs_a_key(tmp_path):
    message = script_error("serve.py", "--host=0.0.0.0", cwd=tmp_path)  # refused before any model is read
    assert "host=0.0.0.0 would let any machine that reaches this one use the model: set an API key" in message


def test_a_stop_string_is_held_back_until_it_is_known_not_to_come():
    text = StopText(["END", "xyz"])
    assert [text.add(piece) for piece in ("ab", "cE", "N", "x", "y", "q")] == ["ab", "c", "", "EN", "", "xyq"]
    assert text.flush() == "" and not text.stopped
    text = StopText(["END"])
    assert [text.add(piece) for piece in ("aE", "NDb")] == ["a", ""] and text.stopped and text.text == "a"
