"""A real (tiny) model behind the HTTP APIs of serving engines, in a thread: what midline.model.remote talks to in
tests.

`ModelServer(engine)` serves a midline `Engine` on 127.0.0.1 at `url`:

- `POST /v1/completions`: OpenAI-compatible text completion. The prompt's special-token strings are parsed into
  special tokens, as vLLM and llama.cpp do; streamed as server-sent events ending in `data: [DONE]`, or answered
  whole without `"stream": true`.
- `POST /infill`: llama.cpp's fill-in-the-middle endpoint: `input_prefix`, `input_suffix` and `input_extra`
  laid out by the model's FIM format in PSM order, as llama.cpp does with a model's FIM tokens; streamed as
  `data:` events whose last one has `"stop": true`.
- `POST /completion`: llama.cpp's completion endpoint: `prompt` as token ids or text (special tokens parsed);
  `return_tokens` adds each event's token ids.
- `POST /api/generate`: Ollama's generation with `"raw": true`, streamed as JSON lines.

A greedy request that asks for log-probabilities (OpenAI `logprobs`, llama.cpp `n_probs`, Ollama `logprobs`) gets
each token's in the shape that server sends (vLLM's `token_logprobs`, llama.cpp's `completion_probabilities`,
Ollama's `logprobs`); it is generated a token at a time (each `generate` call reuses the cached prefix) so every
event carries its own tokens'.

Tokens go out as they are generated (chunked transfer encoding), and a client that closes the connection stops
the generation at the next write, as the real servers do. Knobs for failure tests: `token_delay_s`,
`first_byte_delay_s`, `fail` (an HTTP status and JSON body to answer with), `garbage` (raw bytes to send as
the stream), `feed` (a raw answer sent piece by piece: huge bodies, endless trickles), `ignore_stream` (answer
whole even when asked to stream) and `api_key` (required as a Bearer token).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from midline.model.backend import Generation
from midline.model.fim import FimPrompt, Snippet

Token = tuple[int, float, str]  # a generated token: id, log-probability, its text


@dataclass
class Feed:
    """A raw answer: `pieces()` written one by one, `delay_s` apart, chunked, or as a `length`-byte body when given.

    The pieces are produced lazily (a huge answer is never in the server's memory); a client that closes the
    connection ends the feed at the next write.
    """

    pieces: Callable[[], Iterator[bytes]]
    content_type: str = "text/event-stream"
    length: int | None = None
    delay_s: float = 0.0


def answer(text: str) -> Feed:
    """An OpenAI-compatible stream whose one event is `text` (the served model's answer, planted)."""
    event = {"id": "cmpl-test", "object": "text_completion", "model": "tiny",
             "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
    return Feed(lambda: iter([b"data: " + json.dumps(event).encode() + b"\n\n", b"data: [DONE]\n\n"]))


class ModelServer:
    """The HTTP server and its knobs; use as a context manager (it serves from a daemon thread)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.reset()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.model_server = self  # type: ignore[attr-defined]
        self._idle = threading.Condition()
        self._in_flight = 0
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def reset(self) -> None:
        """Knobs back to a healthy, fast server; records cleared."""
        self.token_delay_s = 0.0
        self.first_byte_delay_s = 0.0
        self.fail: tuple[int, Any] | None = None
        self.garbage: bytes | None = None
        self.feed: Feed | None = None
        self.ignore_stream = False
        self.api_key: str | None = None
        self.requests: list[dict[str, Any]] = []  # path, payload, headers, prompt_ids of each request
        self.tokens_generated = 0  # over all requests
        self.finished = threading.Event()  # set when a generation ends...
        self.last_finish: str | None = None  # ...with how: eot, length, stop (a stop string) or disconnected

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being answered (a closed client's generation stops at its next token)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def __enter__(self) -> ModelServer:
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        ms: ModelServer = self.server.model_server  # type: ignore[attr-defined]
        with ms._idle:
            ms._in_flight += 1
        try:
            self._post(ms)
        finally:
            with ms._idle:
                ms._in_flight -= 1
                ms._idle.notify_all()

    def _post(self, ms: ModelServer) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            payload = json.loads(body)
        except ValueError:
            return self._answer(400,
                                {"error": {"message": "the request body is not JSON", "type": "invalid_request_error"}})
        record: dict[str, Any] = {"path": self.path, "payload": payload, "headers": dict(self.headers),
                                  "prompt_ids": None}
        ms.requests.append(record)
        if ms.api_key is not None and self.headers.get("Authorization") != f"Bearer {ms.api_key}":
            return self._answer(401,
                                {"error": {"message": "invalid API key", "type": "authentication_error", "code": 401}})
        if ms.fail is not None:
            return self._answer(*ms.fail)
        protocol = {"/v1/completions": _OpenAI, "/infill": _LlamaCpp, "/completion": _LlamaCppCompletion,
                    "/api/generate": _Ollama}.get(self.path)
        if protocol is None:
            return self._answer(404, {"error": {"message": f"File Not Found: {self.path}", "type": "not_found_error"}})
        if ms.first_byte_delay_s:
            time.sleep(ms.first_byte_delay_s)
        if ms.feed is not None:
            return self._feed(ms, ms.feed)
        if ms.garbage is not None:
            self._start_stream("text/event-stream")
            self._chunk(ms.garbage)
            return self._end_stream()
        try:
            request = protocol(ms.engine, payload)
        except (KeyError, TypeError, ValueError) as exc:
            return self._answer(400, {"error": {"message": f"bad request: {exc!r}", "type": "invalid_request_error"}})
        record["prompt_ids"] = request.ids
        self._generate(ms, request, stream=bool(payload.get("stream")) and not ms.ignore_stream)

    def _generate(self, ms: ModelServer, request: _Protocol, stream: bool) -> None:
        sent, hit_stop, disconnected = "", False, False
        pending: list[Token] = []  # tokens not yet sent (one that adds no text goes with the next)

        def on_token(text: str, token: Token | None = None) -> bool:  # Engine.generate's should_stop, after a token
            nonlocal sent, hit_stop, disconnected
            ms.tokens_generated += 1
            cuts = [i for i in (text.find(s) for s in request.stop) if i >= 0]
            if cuts:
                text, hit_stop = text[: min(cuts)], True
            if token is not None and not cuts:
                pending.append(token)
            if text.startswith(sent) and len(text) > len(sent):
                request.tokens += pending
                tokens = list(pending)
                pending.clear()
                if stream:
                    try:
                        self._chunk(request.event(text[len(sent) :], tokens))
                    except OSError:  # the client closed the connection: stop generating
                        disconnected = True
                        return True
                sent = text
            if ms.token_delay_s:
                time.sleep(ms.token_delay_s)
            return hit_stop

        if stream:
            self._start_stream(request.content_type)
        if request.logprobs and request.temperature == 0:
            generation = _stepwise(ms.engine, request, on_token)
        else:
            generation = ms.engine.generate(
                request.ids, max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                top_p=request.top_p, seed=request.seed, should_stop=on_token,
            )
        finish = "disconnected" if disconnected else "stop" if hit_stop else generation.finish_reason
        try:
            if stream:
                if not disconnected:
                    self._chunk(request.last(finish, len(generation.token_ids)))
                    self._end_stream()
            else:
                self._answer(200, request.whole(sent, finish, len(generation.token_ids)))
        except OSError:
            finish = "disconnected"
        ms.last_finish = finish
        ms.finished.set()

    def _feed(self, ms: ModelServer, feed: Feed) -> None:
        """Send `feed`'s pieces until they end or the client goes away (`last_finish`: "fed" or "disconnected")."""
        self.send_response(200)
        self.send_header("Content-Type", feed.content_type)
        if feed.length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(feed.length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for piece in feed.pieces():
                if feed.length is None:
                    self._chunk(piece)
                else:
                    self.wfile.write(piece)
                if feed.delay_s:
                    time.sleep(feed.delay_s)
            if feed.length is None:
                self._end_stream()
            ms.last_finish = "fed"
        except OSError:  # the client closed the connection
            ms.last_finish = "disconnected"
        ms.finished.set()

    # -- HTTP plumbing --------------------------------------------------------------------------

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


def _stepwise(engine: Any, request: _Protocol, on_token: Callable[[str, Token], bool]) -> Generation:
    """Greedy generation a token at a time, each token's id and log-probability handed to `on_token` with the text."""
    ids: list[int] = []
    logprobs: list[float] = []
    finish = "length"
    for _ in range(request.max_new_tokens):
        step = engine.generate(request.ids + ids, max_new_tokens=1)
        if step.finish_reason == "eot":
            finish = "eot"
            break
        before = engine.decode(ids)
        ids += step.token_ids
        logprobs += step.token_logprobs
        text = engine.decode(ids)
        if on_token(text, (ids[-1], logprobs[-1], text[len(before):])):
            finish = "stop"
            break
    return Generation(text=engine.decode(ids), token_ids=ids, finish_reason=finish,
                      mean_logprob=sum(logprobs) / len(logprobs) if logprobs else float("nan"),
                      prompt_tokens=len(request.ids), elapsed_s=0.0, token_logprobs=logprobs)


class _Protocol:
    """One request in one API's terms: the prompt's token ids, sampling settings, and the answer's shapes."""

    content_type = "text/event-stream"

    def __init__(self, engine: Any, payload: dict[str, Any]) -> None:
        self.engine = engine
        self.payload = payload
        self.ids: list[int] = []
        self.max_new_tokens = 16
        self.temperature = float(payload.get("temperature", 0.0))
        self.top_p = float(payload.get("top_p", 1.0))
        self.seed = payload.get("seed")
        self.stop: list[str] = []
        self.logprobs = False  # the request asks for the tokens' log-probabilities
        self.tokens: list[Token] = []  # the tokens sent so far

    def parse_text(self, text: str) -> list[int]:
        """Token ids of a text prompt, its special-token strings parsed as special tokens (vLLM, llama.cpp)."""
        if not isinstance(text, str) or not text:
            raise ValueError("the prompt must be a non-empty string")
        return self.engine.tokenizer.encode(text, add_special_tokens=True)

    @staticmethod
    def sse(event: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(event).encode() + b"\n\n"


class _OpenAI(_Protocol):
    def __init__(self, engine: Any, payload: dict[str, Any]) -> None:
        super().__init__(engine, payload)
        self.ids = self.parse_text(payload["prompt"])
        self.max_new_tokens = int(payload.get("max_tokens", 16))
        stop = payload.get("stop") or []
        self.stop = [stop] if isinstance(stop, str) else list(stop)
        self.logprobs = bool(payload.get("logprobs"))

    def choice(self, text: str, finish: str | None, tokens: list[Token] | None = None) -> dict[str, Any]:
        reason = None if finish is None else "length" if finish == "length" else "stop"
        logprobs = None
        if self.logprobs and tokens:  # vLLM's (and OpenAI's legacy) completion log-probabilities
            logprobs = {"tokens": [t for _, _, t in tokens], "token_logprobs": [lp for _, lp, _ in tokens],
                        "top_logprobs": [{t: lp} for _, lp, t in tokens], "text_offset": [0] * len(tokens)}
        return {"id": "cmpl-test", "object": "text_completion", "model": "tiny",
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}]}

    def event(self, delta: str, tokens: list[Token] | None = None) -> bytes:
        return self.sse(self.choice(delta, None, tokens))

    def last(self, finish: str, generated: int) -> bytes:
        return self.sse(self.choice("", finish)) + b"data: [DONE]\n\n"

    def whole(self, text: str, finish: str, generated: int) -> dict[str, Any]:
        return {**self.choice(text, finish, self.tokens),
                "usage": {"prompt_tokens": len(self.ids), "completion_tokens": generated}}


class _LlamaCpp(_Protocol):
    def __init__(self, engine: Any, payload: dict[str, Any]) -> None:
        super().__init__(engine, payload)
        extra = [Snippet(chunk["filename"], chunk["text"]) for chunk in payload.get("input_extra", [])]
        prompt = FimPrompt(prefix=payload["input_prefix"], suffix=payload["input_suffix"], snippets=extra)
        self.ids = engine.fim.encode(prompt, engine.tokenizer, "psm")
        self.max_new_tokens = int(payload.get("n_predict", 16))
        self.logprobs = int(payload.get("n_probs", 0)) > 0
        self.stop = list(payload.get("stop") or [])

    def probabilities(self, tokens: list[Token]) -> dict[str, Any]:
        """llama.cpp's per-token fields (its format since late 2024): ids with `return_tokens`, and with `n_probs`
        each token's log-probability, bytes and top candidates (here the chosen one alone)."""
        out: dict[str, Any] = {}
        if self.payload.get("return_tokens"):
            out["tokens"] = [i for i, _, _ in tokens]
        if self.logprobs:
            entries = [{"id": i, "token": t, "bytes": list(t.encode()), "logprob": lp} for i, lp, t in tokens]
            out["completion_probabilities"] = [{**e, "top_logprobs": [dict(e)]} for e in entries]
        return out

    def final(self, text: str, finish: str, generated: int, tokens: list[Token] | None = None) -> dict[str, Any]:
        stop_type = {"length": "limit", "stop": "word"}.get(finish, "eos")
        return {"content": text, "stop": True, "stop_type": stop_type, "tokens_predicted": generated,
                "tokens_evaluated": len(self.ids), **self.probabilities(tokens or [])}

    def event(self, delta: str, tokens: list[Token] | None = None) -> bytes:
        return self.sse({"content": delta, "stop": False, "index": 0, **self.probabilities(tokens or [])})

    def last(self, finish: str, generated: int) -> bytes:
        return self.sse(self.final("", finish, generated))

    def whole(self, text: str, finish: str, generated: int) -> dict[str, Any]:
        return self.final(text, finish, generated, self.tokens)


class _LlamaCppCompletion(_LlamaCpp):
    def __init__(self, engine: Any, payload: dict[str, Any]) -> None:
        _Protocol.__init__(self, engine, payload)
        prompt = payload["prompt"]
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(i, int) and 0 <= i < len(engine.tokenizer) for i in prompt):
                raise ValueError("prompt token ids out of the vocabulary")
            self.ids = list(prompt)
        else:
            self.ids = self.parse_text(prompt)
        self.max_new_tokens = int(payload.get("n_predict", 16))
        self.logprobs = int(payload.get("n_probs", 0)) > 0
        self.stop = list(payload.get("stop") or [])


class _Ollama(_Protocol):
    content_type = "application/x-ndjson"

    def __init__(self, engine: Any, payload: dict[str, Any]) -> None:
        options = payload.get("options") or {}
        super().__init__(engine, {**payload, **options})
        if payload.get("raw") is not True:
            raise ValueError("this server takes raw prompts only")
        self.ids = self.parse_text(payload["prompt"])
        self.max_new_tokens = int(options.get("num_predict", 16))
        self.stop = list(options.get("stop") or [])
        self.logprobs = payload.get("logprobs") is True

    def line(self, text: str, finish: str | None, generated: int = 0, tokens: list[Token] | None = None
             ) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.payload.get("model"), "created_at": "2025-01-01T00:00:00Z",
                               "response": text, "done": finish is not None}
        if self.logprobs and tokens:  # Ollama 0.12.11+
            out["logprobs"] = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for _, lp, t in tokens]
        if finish is not None:
            out.update(done_reason="length" if finish == "length" else "stop", prompt_eval_count=len(self.ids),
                       eval_count=generated)
        return out

    def event(self, delta: str, tokens: list[Token] | None = None) -> bytes:
        return json.dumps(self.line(delta, None, 0, tokens)).encode() + b"\n"

    def last(self, finish: str, generated: int) -> bytes:
        return json.dumps(self.line("", finish, generated)).encode() + b"\n"

    def whole(self, text: str, finish: str, generated: int) -> dict[str, Any]:
        return self.line(text, finish, generated, self.tokens)
