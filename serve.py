"""
Serve a model behind OpenAI's HTTP API, so that programs written for OpenAI talk to it unchanged: POST
/v1/completions for any model, POST /v1/chat/completions for one finetuned on conversations (chat.py's), GET
/v1/models; whole or streamed as server-sent events, as OpenAI's API answers (smallgpt/api.py).

    python serve.py                                   # out/ckpt.pt on http://127.0.0.1:8000/v1
    python serve.py --out_dir=out-chat --port=8080
    SMALLGPT_API_KEY=secret python serve.py --host=0.0.0.0  # beyond this machine: only with a key

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="out", messages=[{"role": "user", "content": "Hi!"}]).choices[0].message

One model answers one request at a time, in the order they come (a queue in front of it, which the main thread
serves); a client that goes away mid-stream stops its reply. Ctrl-C or SIGTERM stops the server. The standard
library's HTTP server is all it needs.
"""

import ipaddress
import json
import os
import queue
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from smallgpt.api import ApiError, StopText, chat_completion, chunk, completion, new_id, read_request
from smallgpt.checkpoint import load_model
from smallgpt.configurator import configure
from smallgpt.conversations import prompt
from smallgpt.devices import start_run
from smallgpt.errors import UserError
from smallgpt.sampling import Penalties, ready_to_generate, whole_texts
from smallgpt.tokenizer import EOT, make_codec

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (out_dir/ckpt.pt), a ckpt.pt, 'gpt2'...'gpt2-xl', or a Hugging Face GPT-2 folder
out_dir = "out"  # where train.py wrote ckpt.pt
host = "127.0.0.1"  # the address to listen on: this machine alone; beyond it only with an api_key
port = 8000  # [0, 65535]: 0 for any free port (the one taken is printed)
api_key = ""  # empty: SMALLGPT_API_KEY's; if set, every request must carry it as "Authorization: Bearer KEY"
max_tokens_limit = 1024  # [1, inf): the most tokens a request may ask for
max_body_bytes = 1 << 20  # [1, inf): the largest request body accepted
seed = 1337  # [0, 4294967295]: where the random draws start; a request's own seed makes its reply repeatable
device = "auto"  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # one of auto, float32, bfloat16, float16: auto: bfloat16 on CUDA where it runs, else float16
compile = False  # torch.compile the model
# -----------------------------------------------------------------------------
globals().update(configure(globals(), sys.argv[1:]))
# -----------------------------------------------------------------------------


def is_loopback(host):
    """Whether host is this machine alone (127.0.0.1, ::1, localhost), which no other machine reaches."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or 0.0.0.0's kin
        return False


api_key = api_key or os.environ.get("SMALLGPT_API_KEY", "")
if not is_loopback(host) and not api_key:
    raise UserError(f"host={host} would let any machine that reaches this one use the model: set an API key with "
                    f"--api_key=... or SMALLGPT_API_KEY, or serve this machine alone with --host=127.0.0.1")
device, dtype, autocast, _, _ = start_run(device, dtype, seed)  # smallgpt/devices.py
model, tokenizer_spec = load_model(init_from, out_dir)
model = ready_to_generate(model, device, dtype, compile)
model_id = os.path.basename(os.path.normpath(out_dir)) if init_from == "resume" else init_from
block_size = model.config.block_size
encode, decode = make_codec(tokenizer_spec)
template = tokenizer_spec.get("chat")
end_of_text = encode(EOT)[0] if tokenizer_spec["tokenizer"] != "char" else None  # a BPE's document ends with it
turn_end = encode(template["turn_end"])[0] if template else None
replies = queue.Queue()  # the replies asked for, in the order they came: the main thread generates them, one at a time


def prompt_ids(request, chat):
    """
    (the ids of a request's prompt, the most tokens its reply may take); ApiError for a prompt this model cannot read,
    or cannot answer within block_size.
    """
    try:
        if chat:
            if template is None:
                raise ApiError(400, f"model '{model_id}' was not finetuned on conversations and has no chat template: "
                                    f"use /v1/completions", "messages")
            if any(template["turn_end"] in message["content"] for message in request["messages"]):
                raise ApiError(400, f"a message holds {template['turn_end']!r}, which ends a turn in this model's "
                                    f"template", "messages")
            ids = prompt(request["messages"], template, encode, turn_end)
        else:
            ids = encode(request["prompt"])
    except ValueError as e:  # a character model meets a character it has never seen
        raise ApiError(400, f"the model cannot read the prompt: {e}", "messages" if chat else "prompt") from None
    room = block_size - len(ids)
    # a chat's reply may take the rest of the context; a completion takes 16 tokens, as OpenAI's, unless told
    max_tokens = request["max_tokens"] or (room if chat else min(16, room))
    if max_tokens > room or max_tokens < 1:
        raise ApiError(400, f"This model's maximum context length is {block_size} tokens. However, you requested "
                            f"{len(ids) + max(max_tokens, 1)} tokens ({len(ids)} in the prompt, {max(max_tokens, 1)} "
                            f"for the completion). Please reduce the prompt or the completion's max_tokens.",
                       "max_tokens", "context_length_exceeded")
    return ids, max_tokens


class Reply:
    """
    A request's replies to generate, on the main thread: for a stream, send(k, piece) writes each piece of choice k's
    text to the client as it comes, from the main thread itself (a client that stops reading for Handler.timeout is
    dropped). done is set once choices holds each (text, tokens, finish_reason), or error says why generating failed.
    """

    def __init__(self, ids, max_tokens, request, chat, send=None):
        self.ids, self.max_tokens, self.request, self.chat, self.send = ids, max_tokens, request, chat, send
        self.choices, self.error, self.done = [], None, threading.Event()
        self.cancelled = False  # the client went away: the rest need not be generated

    def generate(self):
        try:
            for k in range(self.request["n"]):
                if self.request["seed"] is not None:  # the same seed, the same text
                    torch.manual_seed(self.request["seed"] + k)
                self.choices.append(generate(self, lambda piece: piece and self.send and self.write(k, piece)))
        except Exception as e:  # a reply that fails is answered with the error; the server goes on
            self.error = ApiError(500, f"generating the reply failed: {type(e).__name__}: {e}")
        finally:
            self.done.set()

    def write(self, k, piece):
        try:
            self.send(k, piece)
        except OSError:  # the client went away, or stopped reading for longer than Handler.timeout
            self.cancelled = True


def generate(reply, send):
    """
    One reply to reply.ids, its text given to send piece by piece as it is generated; returns (text, tokens,
    finish_reason). Stops at the end of the turn (or of the text), a stop string, max_tokens, or a client gone.
    """
    stop_ids = {turn_end, end_of_text}  # the end of a turn, of a text: where a model is done
    request, text, tokens = reply.request, StopText(reply.request["stop"]), []

    def until_stopped():
        sampling = dict(temperature=request["temperature"] or 1.0, top_p=request["top_p"],
                        top_k=1 if request["temperature"] == 0 else request["top_k"],
                        penalties=Penalties(1.0, request["frequency_penalty"], request["presence_penalty"]))
        for token in model.generate_stream(torch.tensor([reply.ids], device=device), reply.max_tokens, **sampling,
                                           tokenizer_vocab_size=tokenizer_spec["vocab_size"]):
            token = token.item()
            if token in stop_ids or reply.cancelled:
                return
            tokens.append(token)
            yield token

    with torch.no_grad(), autocast:
        for piece in whole_texts(until_stopped(), decode):
            piece = piece.lstrip() if reply.chat and not text.text else piece  # the template's space before a reply
            send(text.add(piece))
            if text.stopped:
                break
    send(text.flush())
    stopped = text.stopped or len(tokens) < reply.max_tokens
    return text.text, len(tokens), "stop" if stopped else "length"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections kept open, as clients expect
    timeout = 60  # seconds a client may take to send its request, or leave a stream unread, before it is dropped

    def do_GET(self):
        self.answer(lambda: (200, {"object": "list", "data": [
            {"id": model_id, "object": "model", "created": 0, "owned_by": "smallgpt"}]}) if self.path.rstrip("/") in (
            "/v1/models", "/models") else None)

    def do_POST(self):
        route = {"/v1/completions": False, "/v1/chat/completions": True}
        path = self.path.rstrip("/")
        self.answer(lambda: self.complete(route[path]) if path in route else None)

    def answer(self, respond):
        """respond() gives (status, body) or None for a path unknown; errors are answered in OpenAI's shape."""
        try:
            if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                raise ApiError(401, "Incorrect API key provided: send it as 'Authorization: Bearer KEY'", None,
                               "invalid_api_key")
            response = respond()
            if response is None:
                raise ApiError(404, f"unknown path {self.path}: this server has /v1/models, /v1/completions and "
                                    f"/v1/chat/completions")
        except ApiError as e:
            response = e.status, e.body
        if response != "streamed":
            try:
                self.send_json(*response)
            except (BrokenPipeError, ConnectionResetError):  # the client went away before its answer
                self.close_connection = True

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def complete(self, chat):
        """A completions (chat: chat completions) request: (status, body), or "streamed" once sent as a stream."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > max_body_bytes:
            self.close_connection = True  # the body stays unread
            raise ApiError(413, f"the body has {length} bytes, more than this server's {max_body_bytes}")
        request = read_request(self.rfile.read(length), chat, max_tokens_limit)
        if request["model"] not in (None, model_id):
            raise ApiError(404, f"The model '{request['model']}' does not exist: this server has '{model_id}'",
                           "model", "model_not_found")
        ids, max_tokens = prompt_ids(request, chat)
        id = new_id("chatcmpl" if chat else "cmpl")
        if request["stream"]:
            self.stream(id, Reply(ids, max_tokens, request, chat, send=lambda k, piece: self.event(
                chunk(id, model_id, chat, k, piece), soon=True)))
            return "streamed"
        reply = Reply(ids, max_tokens, request, chat)
        replies.put(reply)
        reply.done.wait()
        if reply.error:
            raise reply.error
        completion_tokens = sum(tokens for _, tokens, _ in reply.choices)
        return 200, (chat_completion if chat else completion)(
            id, model_id, [(text, reason) for text, _, reason in reply.choices], len(ids), completion_tokens)

    def event(self, body, soon=False):
        """One server-sent event: a chunk, or (None) the stream's end; soon: sent with those of the next 20 ms."""
        self.unsent.append(f"data: {json.dumps(body) if body else '[DONE]'}\n\n")
        if not soon or time.monotonic() > self.sent_at + 0.02:
            self.wfile.write("".join(self.unsent).encode())
            self.unsent, self.sent_at = [], time.monotonic()

    def stream(self, id, reply):
        """Server-sent events, as OpenAI's: a chunk for each piece of text, one with each choice's finish, [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends where the connection does
        self.end_headers()
        self.close_connection = True
        self.unsent, self.sent_at = [], 0.0
        try:
            for k in range(reply.request["n"] if reply.chat else 0):  # a chat's first chunk of each choice: the role
                self.event(chunk(id, model_id, True, k, first=True))
            replies.put(reply)  # the main thread writes the text's chunks from here
            reply.done.wait()
            if reply.error:  # as OpenAI's API says an error in a stream
                self.event(reply.error.body)
            elif not reply.cancelled:
                for k, (_, _, finish_reason) in enumerate(reply.choices):
                    self.event(chunk(id, model_id, reply.chat, k, finish_reason=finish_reason))
                self.event(None)
        except OSError:  # the client went away, or stopped reading
            reply.cancelled = True
        if reply.cancelled:
            tokens = sum(tokens for _, tokens, _ in reply.choices)
            self.log_message(f"the client went away: its reply stopped after {tokens} tokens")


server = ThreadingHTTPServer((host, port), Handler)
server.daemon_threads = True  # requests in flight do not keep the server from stopping
threading.Thread(target=server.serve_forever, daemon=True).start()  # each request on a thread of its own too
signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as Ctrl-C does
print(f"serving {model_id} on http://{host}:{server.server_address[1]}/v1", flush=True)
try:
    # this thread generates every reply: torch's parallel products start their OpenMP threads once for the main thread,
    # anew for each product on any other (several times slower for a small model)
    while True:
        try:  # a signal may reach any thread, torch's too: the main thread sees it once it wakes, within 0.5 s
            reply = replies.get(timeout=0.5)
        except queue.Empty:
            continue
        reply.generate()
except KeyboardInterrupt:
    print("stopped", flush=True)
finally:
    server.shutdown()
    server.server_close()
