"""
OpenAI's HTTP API as serve.py speaks it: a request's body checked field by field, the responses and the chunks of a
stream in OpenAI's shapes, and its errors as OpenAI words them, so that clients written for OpenAI (its Python and
JavaScript packages, chat front-ends, lm-evaluation-harness's local-completions) need no change.

- ApiError(status, message, param, code): a request refused, as its JSON body says it.
- read_request(body, chat, max_tokens_limit): the settings of a completions or chat completions request.
- completion(...), chat_completion(...), chunk(...): the bodies a response carries; new_id(kind): their ids.
- StopText: a reply's text as it grows, held back while it may be the start of a stop string.
"""

import json
import math
import time
import uuid

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """A request that cannot be served: its HTTP status and OpenAI's JSON body of the error."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error"}
        self.status = status
        self.body = {"error": {"message": message, "type": kind.get(status, "invalid_request_error"), "param": param,
                               "code": code}}


def number(request, field, default, low, high, whole=False):
    """A number field of a request within [low, high], or its default when absent (or null)."""
    value = request.get(field)
    if value is None:
        return default
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not low <= value <= high:
        what = "an integer" if whole else "a number"
        raise ApiError(400, f"'{field}' must be {what} from {low} to {high}, got {value!r}", field)
    return value


def read_request(body, chat, max_tokens_limit):
    """
    The settings of a request's JSON body: the prompt (a text, or a chat's messages), max_tokens (None: the server's
    choice), temperature, top_p, top_k, stop strings, seed, the penalties, n and stream; ApiError (400) for anything
    malformed or out of range.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the body is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise ApiError(400, "the body must be a JSON object")
    for field in ("logprobs", "echo", "suffix", "tools", "logit_bias"):
        if request.get(field):
            raise ApiError(400, f"'{field}' is not supported by this server", field)
    settings = {"model": request.get("model"),
                "max_tokens": number(request, "max_tokens", None, 1, max_tokens_limit, True),
                "temperature": number(request, "temperature", 1.0, 0, 2),
                "top_p": number(request, "top_p", 1.0, 0, 1),
                "top_k": number(request, "top_k", None, 1, 2**31 - 1, True),  # not OpenAI's: vLLM's and llama.cpp's
                "seed": number(request, "seed", None, -2**63, 2**63 - 1, True),
                "frequency_penalty": number(request, "frequency_penalty", 0.0, -2, 2),
                "presence_penalty": number(request, "presence_penalty", 0.0, -2, 2),
                "n": number(request, "n", 1, 1, 8, True), "stream": request.get("stream", False)}
    if chat and "max_completion_tokens" in request:  # the newer name of max_tokens
        settings["max_tokens"] = number(request, "max_completion_tokens", None, 1, max_tokens_limit, True)
    if settings["top_p"] == 0:
        raise ApiError(400, "'top_p' must be above 0", "top_p")
    if not isinstance(settings["stream"], bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    stop = request.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 strings, none empty", "stop")
    settings["stop"] = stop
    if chat:
        settings["messages"] = read_messages(request.get("messages"))
    else:
        settings["prompt"] = request.get("prompt")
        if isinstance(settings["prompt"], list) and len(settings["prompt"]) == 1:
            settings["prompt"] = settings["prompt"][0]  # a batch of one
        if not isinstance(settings["prompt"], str) or not settings["prompt"]:
            raise ApiError(400, "'prompt' must be a text that is not empty", "prompt")
    return settings


def read_messages(messages):
    """A chat's messages, each {"role", "content"}; a content of text parts is joined."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a list of messages that is not empty", "messages")
    read = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        role = "system" if role == "developer" else role  # OpenAI's newer name for the system prompt
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
            content = "".join(str(part.get("text", "")) for part in content)
        if role not in ROLES or not isinstance(content, str):
            raise ApiError(400, f"messages[{i}] must have a 'role' of {', '.join(ROLES)} and a text 'content'",
                           f"messages[{i}]")
        read.append({"role": role, "content": content})
    return read


def new_id(kind):
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(id, model, choices, prompt_tokens, completion_tokens):
    """A whole text completion: choices are (text, finish_reason)."""
    return {"id": id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                        for i, (text, reason) in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_completion(id, model, choices, prompt_tokens, completion_tokens):
    """A whole chat completion: choices are (text, finish_reason)."""
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason} for i, (text, reason) in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(id, model, chat, index, text=None, finish_reason=None, first=False):
    """A chunk of a stream: a piece of choice index's text, or (finish_reason) its end; a chat's first: the role."""
    if chat:
        delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [choice]}
    choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    return {"id": id, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice]}


class StopText:
    """
    A reply's text as it grows (add), and the part of it safe to send: a tail that may be the start of a stop string
    waits for the next piece. stopped: whether a stop string came, in which case the text ends before it.
    """

    def __init__(self, stop):
        self.stop, self.text, self.sent, self.stopped = stop, "", 0, False

    def add(self, piece):
        """The text that can be sent now, after piece."""
        self.text += piece
        found = [self.text.find(s) for s in self.stop if s in self.text]
        if found:
            self.text, self.stopped = self.text[:min(found)], True
            return self.flush()
        held = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        ready = self.text[self.sent:len(self.text) - held]
        self.sent += len(ready)
        return ready

    def flush(self):
        """The rest of the text, at the end of the reply."""
        rest = self.text[self.sent:]
        self.sent = len(self.text)
        return rest
