"""Remote backends: the `Backend` protocol over HTTP, for a model served by vLLM, TGI, llama.cpp or Ollama.

`RemoteEngine` is a `Backend` (`model/backend.py`) as the local `Engine` is, so a serving engine on another
machine drops in for the local model. Three protocols (`kind`), a small class each (`PROTOCOLS`) behind the
one `RemoteEngine`, which does the HTTP, the streaming and the limits for all of them:

- `openai`: `POST {url}/v1/completions`, OpenAI-compatible text completion (vLLM, TGI, llama.cpp's server,
  SGLang, LM Studio). The FIM prompt is rendered as text by `midline.model.fim` in the served model's format;
  the server tokenizes it, special tokens included (so a FIM token's string typed in the code itself is parsed
  as that token too, where the local engine keeps it text).
- `llamacpp`: llama.cpp's server. When the served model's FIM format is known here (`fimFormat`, or detected
  from a local `tokenizer`), `POST {url}/completion` with the prompt midline lays out itself, as token ids when
  the tokenizer is local (exactly the local engine's prompt), else as text. Otherwise `POST {url}/infill`:
  prefix, suffix and extra-context snippets go as fields, and the server lays them out with the model's FIM
  tokens from its GGUF (`fimMode` is the server's choice there: `--spm-infill`); /infill keeps extra context
  only up to n_ctx - n_batch - 2 n_predict tokens, so with llama-server's default batch (2048) and a context
  of 2048 or less (midline's model has 1024) it drops all of it, silently.
- `ollama`: `POST {url}/api/generate` with `raw: true`. Ollama's `/v1/completions` wraps the prompt in the
  model's template (ollama/ollama#5544), which would break a rendered FIM prompt; raw mode takes it verbatim.

Every request asks for the generated tokens' log-probabilities (OpenAI `logprobs`, llama.cpp `n_probs`, Ollama
`logprobs`), so the confidence floors (`minMeanLogprob`, `minLineLogprob`, and the model's own from the
`midline.json` beside a local `tokenizer`) apply to remote models as to the local engine; a server that sends
none leaves `mean_logprob` nan, which no floor hides.

Every request streams (server-sent events, or Ollama's JSON lines), so a cancelled, superseded or timed-out
completion closes the connection mid-generation and the serving engine stops working on it. Failures
(connection refused, HTTP errors with the server's message, malformed answers, no whole answer or event within
the timeout, answers past the size limits) raise a `RemoteError` whose message says what happened and where;
the language server shows it and keeps running.

Limits: `timeout_s` is a deadline on connecting and on each whole event (or the whole answer, when the server
does not stream), not on each socket read, so a server trickling bytes or keep-alive comments is stopped at
it; a stream goes on as long as events keep coming (the caller's `deadline` bounds that). Answers are read in
pieces, never whole first: a stream line past `MAX_LINE_BYTES`, or more than `MAX_RESPONSE_BYTES` in all, is
refused.

Token counts (for sizing the context windows): with a local copy of the served model's tokenizer
(`tokenizer`, a directory with tokenizer.json), exact; without one, an estimate of one token per
`CHARS_PER_TOKEN` characters, which over-counts for the large-vocabulary tokenizers of served code models, so
prompts stay inside the server's context. `max_context` is the served model's context (`backend.contextLength`).
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple
from urllib.parse import urlsplit

from midline.model import fim
from midline.model.backend import Generation, decoded_ends
from midline.model.fim import FimFormat, FimPrompt, Mode

Kind = Literal["openai", "llamacpp", "ollama"]

# Without a local tokenizer, one token per 3 characters: midline's own 4k-vocabulary tokenizer gets 2.8-3.2 on
# midline's Python sources, and the large-vocabulary tokenizers of served code models get more characters a
# token, so their prompts are over-counted (windows come out smaller, never past the server's context).
CHARS_PER_TOKEN = 3.0
# TGI refuses more than 4 stop sequences by default; the rest are cut on this side (see `_cut_at_stop`).
MAX_STOP_SEQUENCES = 4
# How often the watcher checks the cancel flag and the deadlines while a request is open.
_POLL_S = 0.01
# The most one answer may send in all (streamed or whole): 8192 tokens of vLLM's ~240-byte events are ~2 MB.
MAX_RESPONSE_BYTES = 8 << 20
# The most one stream line (an SSE field or an Ollama JSON line) may hold: one token's event is a few hundred bytes.
MAX_LINE_BYTES = 1 << 20
# The most read from the socket at a time.
_READ_BYTES = 1 << 16
# llama.cpp's /infill lays out the FIM prompt itself; the format stands in for status and logs.
SERVER_SIDE = FimFormat("server-side", "", "", "", "")


class RemoteError(RuntimeError):
    """A remote backend failed; the message says what happened, at which URL, and what to check."""


class RemoteConnectionError(RemoteError):
    """The server could not be reached (refused, unknown host, TLS failure, connection reset)."""


class RemoteTimeoutError(RemoteError):
    """The server sent no whole event (or answer) within `timeout_s`: nothing, or a trickle."""


class RemoteHTTPError(RemoteError):
    """The server answered with an HTTP error; `server_message` is its own explanation."""

    def __init__(self, message: str, status: int, server_message: str):
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class RemoteProtocolError(RemoteError):
    """The server's answer is not what the protocol says (not JSON, missing fields, cut short)."""


class RemotePrompt(NamedTuple):
    """A FIM prompt ready to send: rendered text (openai, ollama, llamacpp /completion), its token ids (llamacpp
    /completion with a local tokenizer) or its parts (llamacpp /infill).

    A tuple of strings, so the Completer's cache key (`tuple(prompt)`) works as it does for token ids.
    """

    text: str  # the whole FIM prompt in the model's format (openai, ollama); "" for llamacpp
    prefix: str = ""  # llamacpp: input_prefix
    suffix: str = ""  # llamacpp: input_suffix
    extra: tuple[tuple[str, str], ...] = ()  # llamacpp: input_extra as (filename, text)
    ids: tuple[int, ...] = ()  # llamacpp /completion: the prompt's token ids, sent instead of `text`


class Chunk(NamedTuple):
    """One parsed event of an answer."""

    text: str  # new text
    done: str | None = None  # the finish reason, if the answer ends here
    prompt_tokens: int | None = None  # if reported
    logprobs: tuple[float, ...] = ()  # of the tokens this event carries, if sent
    ids: tuple[int, ...] = ()  # those tokens' ids, if sent (llama.cpp)


class RemoteEngine:
    """A model behind an HTTP server: a `Backend`."""

    reuse_prefix = False  # the serving engine does its own prefix caching
    languages = None  # any language

    def __init__(
        self,
        kind: Kind,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        fim_format: FimFormat | None = None,
        tokenizer: Any = None,
        max_context: int = 4096,
        timeout_s: float = 10.0,
        floors: dict[str, Any] | None = None,
    ):
        if kind not in PROTOCOLS:
            raise RemoteError(f"unknown backend kind {kind!r}: use {', '.join(PROTOCOLS)} (or local)")
        # llama.cpp: the prompt midline lays out, to /completion, wherever the model's FIM format is known
        protocol = self.protocol = _LlamaCppCompletion() if kind == "llamacpp" and fim_format else PROTOCOLS[kind]()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"backend URL {url!r} is not an http:// or https:// URL with a host")
        if fim_format is None and protocol.needs_fim:
            raise RemoteError(
                f"the {kind} backend needs the served model's FIM format: set `midline.fimFormat` "
                f"({', '.join(fim.FORMATS)}) or `midline.backend.tokenizer` to a local copy of its tokenizer"
            )
        protocol.check_model(model)
        self.kind = kind
        self.url = url.rstrip("/")
        self.model_name = model
        self.api_key = api_key
        self.fim = fim_format or SERVER_SIDE
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.timeout_s = timeout_s
        # the model's own confidence floors (its midline.json), as the local engine has them
        self.min_mean_logprob = (floors or {}).get("min_mean_logprob")
        self.min_line_logprob = (floors or {}).get("min_line_logprob")
        self.device = f"{kind} {self.url}"  # where generation runs, for logs and `midline.status`
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = protocol.endpoint(parts.path.rstrip("/"))
        if tokenizer is not None:
            count = lambda text: len(fim.encode_text(tokenizer, text))  # noqa: E731
        else:
            count = lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)  # noqa: E731
        self._count_tokens = functools.lru_cache(maxsize=1 << 14)(count)

    @classmethod
    def load(
        cls,
        kind: Kind,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        fim_format: str | None = None,
        tokenizer: str | Path | None = None,
        max_context: int = 4096,
        timeout_s: float = 10.0,
    ) -> RemoteEngine:
        """A backend from settings: `fim_format` by name, else detected from the local `tokenizer` directory."""
        tok = _load_tokenizer(Path(tokenizer).expanduser()) if tokenizer else None
        fmt = fim.get(fim_format) if fim_format else fim.detect(tok.get_vocab()) if tok is not None else None
        return cls(
            kind, url, model=model, api_key=api_key, fim_format=fmt, tokenizer=tok, max_context=max_context,
            timeout_s=timeout_s, floors=_model_floors(Path(tokenizer).expanduser()) if tokenizer else None,
        )

    # -- the Backend protocol -------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens in `text`: exact with a local tokenizer, else estimated from its length. Memoized."""
        return self._count_tokens(text)

    def encode(self, prompt: FimPrompt, mode: Mode | None = None) -> RemotePrompt:
        """The request's prompt: rendered in the model's FIM format (its token ids too, for llama.cpp's /completion
        with a local tokenizer), or the parts llama.cpp's /infill takes."""
        encoded = self.protocol.encode(self.fim, prompt, mode)
        if self.protocol.sends_ids and self.tokenizer is not None:
            return encoded._replace(ids=tuple(self.fim.encode(prompt, self.tokenizer, mode)))
        return encoded

    def generate(
        self,
        prompt: RemotePrompt,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        should_stop: Callable[[str], bool] | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Generation:
        """Stream a completion of `prompt`; the same contract as `Engine.generate`.

        `token_ids` are the server's where it sends them (llama.cpp), else the text re-encoded by the local
        tokenizer (empty without one); `mean_logprob` and `token_logprobs` are the server's log-probabilities of the
        tokens kept (nan and [] when it sends none; `token_logprobs` also [] when they do not pair with `token_ids`).

        Stops on the server's end of text or length limit ("eot", "length"), when `should_stop` says so after a
        chunk ("stop"), on `cancel` ("cancelled") or at `deadline` ("timeout", a `time.monotonic()` time); the
        last three close the connection, which stops the server's generation. Raises `RemoteError`.
        """
        protocol = self.protocol
        if isinstance(prompt, str):  # plain text: the rendered prompt, or (llamacpp) the prefix
            prompt = protocol.from_text(prompt)
        protocol.check_prompt(prompt)
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        start = time.monotonic()
        payload = protocol.payload(self, prompt, max_new_tokens, temperature, top_p, seed)
        text, finish, prompt_tokens = "", None, None
        logprobs: list[float] = []
        ids: list[int] = []
        with _Request(self, payload, cancel, deadline) as events:
            for event in events:
                delta, done, reported, chunk_logprobs, chunk_ids = self._parse(event)
                prompt_tokens = reported or prompt_tokens
                if delta:  # the order of Engine.generate's checks after a token: stop token, should_stop, limit
                    text, stopped = _cut_at_stop(text + delta, self.fim.stop_tokens)
                    if stopped:  # (the stop token's own log-probability is not the answer's)
                        finish = "eot"
                        break
                logprobs += chunk_logprobs
                ids += chunk_ids
                if delta and should_stop is not None and should_stop(text):
                    finish = "stop"
                    break
                if done is not None:
                    finish = done
                    break
                if cancel is not None and cancel.is_set():
                    break
        if finish is None:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
            elif deadline is not None and time.monotonic() >= deadline:
                finish = "timeout"
            else:
                raise RemoteProtocolError(f"{self._where()} ended the stream before the completion finished")
        if not ids and self.tokenizer is not None and text:
            ids = fim.encode_text(self.tokenizer, text)
        return Generation(
            text=text,
            token_ids=ids,
            finish_reason=finish,
            mean_logprob=sum(logprobs) / len(logprobs) if logprobs else math.nan,
            prompt_tokens=prompt_tokens or self._prompt_tokens(prompt),
            elapsed_s=time.monotonic() - start,
            token_logprobs=logprobs if len(logprobs) == len(ids) else [],
        )

    def _prompt_tokens(self, prompt: RemotePrompt) -> int:
        """The prompt's length where the server did not report it: counted here (special tokens as the server
        parses them)."""
        if prompt.ids:
            return len(prompt.ids)
        if self.tokenizer is not None and prompt.text:
            return len(self.tokenizer.encode(prompt.text, add_special_tokens=False))
        extra = "".join(text for _, text in prompt.extra)
        return self.count_tokens(prompt.text or prompt.prefix + prompt.suffix + extra)

    def clear_cache(self) -> None:
        """Nothing to drop here: the serving engine keeps its own prompt cache."""

    def decode(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            raise RemoteError("decoding token ids needs a local tokenizer: set `midline.backend.tokenizer`")
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return text.rstrip("\ufffd")

    def token_ends(self, token_ids: list[int]) -> list[int]:
        """Where each token's text ends in `decode(token_ids)` (as `Engine.token_ends`; needs a local tokenizer)."""
        return decoded_ends(self.decode, token_ids)

    def _parse(self, event: Any) -> Chunk:
        """One streamed (or whole) answer's event."""
        if not isinstance(event, dict):
            raise RemoteProtocolError(f"{self._where()} sent {_short(event)}, not a JSON object")
        if "error" in event:
            raise RemoteError(f"{self._where()} failed: {_error_message(event)}")
        try:
            return self.protocol.parse(event)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RemoteProtocolError(
                f"{self._where()} sent a malformed {self.kind} answer ({exc!r}): {_short(event)}"
            ) from None

    def _where(self) -> str:
        return f"the {self.kind} backend at {self.url}"

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            context = ssl.create_default_context()
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream, application/x-ndjson, application/json",
            "User-Agent": "midline",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


class _Protocol:
    """One serving API: its endpoint, how a prompt and the sampling settings make a request, what its events say.

    The base renders the FIM prompt here, in the served model's format, and sends its text.
    """

    needs_fim = True  # the prompt is rendered here, so the served model's FIM format must be known
    sends_ids = False  # the prompt goes as token ids when a local tokenizer gives them
    json_lines = False  # the answer streams as JSON lines whatever its Content-Type says

    def endpoint(self, base: str) -> str:
        raise NotImplementedError

    def check_model(self, model: str | None) -> None:
        """Raise `RemoteError` if the API needs a model name that is not given."""

    def encode(self, fim_format: FimFormat, prompt: FimPrompt, mode: Mode | None) -> RemotePrompt:
        return RemotePrompt(fim_format.render(prompt, mode))

    def from_text(self, text: str) -> RemotePrompt:
        """A prompt given as plain text: the rendered prompt."""
        return RemotePrompt(text)

    def check_prompt(self, prompt: RemotePrompt) -> None:
        if not prompt.text:
            raise ValueError("the prompt is empty")

    def payload(
        self, engine: RemoteEngine, prompt: RemotePrompt, max_new_tokens: int, temperature: float, top_p: float,
        seed: int | None,
    ) -> dict:
        raise NotImplementedError

    def parse(self, event: dict) -> Chunk:
        """One event; may raise KeyError, TypeError, ..."""
        raise NotImplementedError


class _OpenAICompletions(_Protocol):
    """`POST /v1/completions` (vLLM, TGI, llama.cpp's server, SGLang, LM Studio), server-sent events."""

    def endpoint(self, base: str) -> str:  # the URL may be the server's root or its OpenAI base URL (.../v1)
        return base + ("/completions" if base.endswith("/v1") else "/v1/completions")

    def payload(
        self, engine: RemoteEngine, prompt: RemotePrompt, max_new_tokens: int, temperature: float, top_p: float,
        seed: int | None,
    ) -> dict:
        payload: dict[str, Any] = {
            "prompt": prompt.text, "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
            "stream": True, "stop": list(engine.fim.stop_tokens)[:MAX_STOP_SEQUENCES], "logprobs": 1,
        }
        if engine.model_name:
            payload["model"] = engine.model_name
        if seed is not None:
            payload["seed"] = seed
        return payload

    def parse(self, event: dict) -> Chunk:
        usage = event.get("usage") or {}
        if not event.get("choices"):  # e.g. a usage-only chunk
            return Chunk("", None, usage.get("prompt_tokens"))
        choice = event["choices"][0]
        reason = choice.get("finish_reason")
        done = None if reason is None else "length" if reason == "length" else "eot"
        return Chunk(_text(choice["text"]), done, usage.get("prompt_tokens"), _openai_logprobs(choice.get("logprobs")))


class _LlamaCppInfill(_Protocol):
    """llama.cpp's `POST /infill`: the prompt's parts go as fields, laid out by the server in the model's FIM format."""

    needs_fim = False

    def endpoint(self, base: str) -> str:
        return base + "/infill"

    def encode(self, fim_format: FimFormat, prompt: FimPrompt, mode: Mode | None) -> RemotePrompt:
        return RemotePrompt("", prompt.prefix, prompt.suffix, tuple((s.path, s.text) for s in prompt.snippets))

    def from_text(self, text: str) -> RemotePrompt:
        """A prompt given as plain text: the prefix."""
        return RemotePrompt("", prefix=text)

    def check_prompt(self, prompt: RemotePrompt) -> None:
        """Any prompt: an empty file is a fine /infill request."""

    def payload(
        self, engine: RemoteEngine, prompt: RemotePrompt, max_new_tokens: int, temperature: float, top_p: float,
        seed: int | None,
    ) -> dict:
        payload: dict[str, Any] = {
            "input_prefix": prompt.prefix, "input_suffix": prompt.suffix,
            "input_extra": [{"filename": name, "text": text} for name, text in prompt.extra],
            **_llamacpp_settings(max_new_tokens, temperature, top_p, seed),
        }
        return payload

    def parse(self, event: dict) -> Chunk:
        done = None
        if event.get("stop"):
            limit = event.get("stop_type") == "limit" or event.get("stopped_limit")
            done = "length" if limit else "eot"
        content = _text(event.get("content", ""))
        ids = tuple(int(i) for i in event.get("tokens") or ())
        return Chunk(content, done, event.get("tokens_evaluated"),
                     _llamacpp_logprobs(event.get("completion_probabilities"), content), ids)


class _LlamaCppCompletion(_LlamaCppInfill):
    """llama.cpp's `POST /completion` with the prompt laid out here: token ids (exactly the local engine's prompt,
    special tokens included) when a local tokenizer gives them, else the rendered text, which the server
    tokenizes with special tokens parsed."""

    needs_fim = True
    sends_ids = True

    def endpoint(self, base: str) -> str:
        return base + "/completion"

    def encode(self, fim_format: FimFormat, prompt: FimPrompt, mode: Mode | None) -> RemotePrompt:
        return RemotePrompt(fim_format.render(prompt, mode))

    def from_text(self, text: str) -> RemotePrompt:
        return RemotePrompt(text)

    def check_prompt(self, prompt: RemotePrompt) -> None:
        if not prompt.text and not prompt.ids:
            raise ValueError("the prompt is empty")

    def payload(
        self, engine: RemoteEngine, prompt: RemotePrompt, max_new_tokens: int, temperature: float, top_p: float,
        seed: int | None,
    ) -> dict:
        return {"prompt": list(prompt.ids) if prompt.ids else prompt.text, "stop": list(engine.fim.stop_tokens),
                **_llamacpp_settings(max_new_tokens, temperature, top_p, seed)}


def _llamacpp_settings(max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
    """The settings both llama.cpp endpoints take; `n_probs: 1` sends each token's log-probability and
    `return_tokens` its id."""
    settings: dict[str, Any] = {"n_predict": max_new_tokens, "temperature": temperature, "top_p": top_p,
                                "stream": True, "cache_prompt": True, "n_probs": 1, "return_tokens": True}
    if temperature == 0:
        settings["top_k"] = 1  # greedy, whatever the server's default sampler chain
    if seed is not None:
        settings["seed"] = seed
    return settings


def _llamacpp_logprobs(probabilities: Any, content: str) -> tuple[float, ...]:
    """Log-probabilities of the tokens of one llama.cpp event: `{"logprob": x, ...}` per token (llama.cpp since
    late 2024), or the older `{"content": token, "probs": [{"tok_str", "prob"}]}` (the chosen token's prob)."""
    out = []
    for entry in probabilities or ():
        if "logprob" in entry:
            out.append(float(entry["logprob"]))
            continue
        token = entry.get("content", content)
        prob = next((p["prob"] for p in entry.get("probs") or () if p.get("tok_str") == token), None)
        if prob is None:  # the chosen token is not among those sent: no figure for it
            return ()
        out.append(math.log(prob) if prob > 0 else -math.inf)
    return tuple(out)


def _openai_logprobs(logprobs: Any) -> tuple[float, ...]:
    """Log-probabilities of a completion choice's tokens: OpenAI's and vLLM's `{"token_logprobs": [...]}`, or
    llama.cpp's `{"content": [{"logprob": x}, ...]}`."""
    if not logprobs:
        return ()
    if "token_logprobs" in logprobs:
        return tuple(float(x) for x in logprobs["token_logprobs"] if x is not None)
    return tuple(float(entry["logprob"]) for entry in logprobs.get("content") or ())


class _OllamaGenerate(_Protocol):
    """Ollama's `POST /api/generate` with `raw: true` (the prompt verbatim, no template), JSON lines."""

    json_lines = True

    def endpoint(self, base: str) -> str:
        return base + "/api/generate"

    def check_model(self, model: str | None) -> None:
        if not model:
            raise RemoteError("the ollama backend needs `midline.backend.model` (the name `ollama list` shows)")

    def payload(
        self, engine: RemoteEngine, prompt: RemotePrompt, max_new_tokens: int, temperature: float, top_p: float,
        seed: int | None,
    ) -> dict:
        # options go in "options"; num_ctx, or Ollama cuts prompts at its default context
        options = {
            "num_predict": max_new_tokens, "temperature": temperature, "top_p": top_p,
            "stop": list(engine.fim.stop_tokens), "num_ctx": engine.max_context,
        }
        if seed is not None:
            options["seed"] = seed
        # logprobs: Ollama 0.12.11 and later (older ones ignore it)
        return {"model": engine.model_name, "prompt": prompt.text, "raw": True, "stream": True, "options": options,
                "logprobs": True}

    def parse(self, event: dict) -> Chunk:
        done = None
        if event.get("done"):
            done = "length" if event.get("done_reason") == "length" else "eot"
        logprobs = tuple(float(entry["logprob"]) for entry in event.get("logprobs") or ())
        return Chunk(_text(event.get("response", "")), done, event.get("prompt_eval_count"), logprobs)


# The protocol of each `kind`.
PROTOCOLS: dict[str, type[_Protocol]] = {
    "openai": _OpenAICompletions, "llamacpp": _LlamaCppInfill, "ollama": _OllamaGenerate,
}


class _Request:
    """One streamed request; iterating yields the parsed JSON events.

    A watcher thread shuts the socket down when `cancel` is set, `deadline` passes (the iterator then ends
    quietly and `generate` reports why), or no whole event came within the backend's `timeout_s` (then the
    iterator raises `RemoteTimeoutError`); a read blocked on a slow server returns at once.
    """

    def __init__(self, engine: RemoteEngine, payload: dict, cancel: threading.Event | None, deadline: float | None):
        self.engine = engine
        self.payload = payload
        self.cancel = cancel
        self.deadline = deadline
        self.conn: http.client.HTTPConnection | None = None
        self.sock: socket.socket | None = None  # kept: http.client hands a "Connection: close" socket to the response
        self.response: http.client.HTTPResponse | None = None
        self.body: _Body | None = None
        self.interrupted = threading.Event()  # by `cancel` or `deadline`
        self.expired = threading.Event()  # by the backend timeout
        self.expires = time.monotonic() + engine.timeout_s  # the next event's deadline
        self.mark = 0  # bytes of the body read when the last event was whole
        self._done = threading.Event()

    def __enter__(self) -> Iterator[Any]:
        threading.Thread(target=self._watch, name="midline-remote-watch", daemon=True).start()
        return self._events()

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        _shutdown(self.sock)  # mid-stream, this is what tells the server to stop generating
        for closable in (self.response, self.conn, self.sock):
            if closable is not None:
                closable.close()

    def _stopped(self) -> bool:
        cancelled = self.cancel is not None and self.cancel.is_set()
        return cancelled or (self.deadline is not None and time.monotonic() >= self.deadline)

    def _watch(self) -> None:
        while not self._done.wait(_POLL_S):
            flag = self.interrupted if self._stopped() else self.expired if time.monotonic() >= self.expires else None
            if flag is not None and self.sock is not None:  # else keep watching: the connection is being made
                flag.set()
                _shutdown(self.sock)  # a blocked read returns at once
                return

    def _events(self) -> Iterator[Any]:
        if self._stopped():
            return
        try:
            for event in self._answer():
                self.expires = time.monotonic() + self.engine.timeout_s
                self.mark = self.body.received if self.body is not None else 0
                yield event
        except Exception as exc:  # noqa: BLE001 - mapped to a RemoteError, kept quiet after a cancel, or re-raised
            error = self._error(exc)
            if error is exc:
                raise
            if error is not None:
                raise error from None
            return
        if self.expired.is_set():  # the shutdown at the timeout looked like the end of the answer
            raise self._timeout()

    def _answer(self) -> Iterator[Any]:
        """Connect, send, and parse the answer's events as they come."""
        engine = self.engine
        where = engine._where()
        timeout = engine.timeout_s
        if self.deadline is not None:
            timeout = max(0.001, min(timeout, self.deadline - time.monotonic()))
        self.conn = engine._connection(timeout)
        self.conn.connect()
        self.conn.sock.settimeout(engine.timeout_s)  # a backstop: the watcher ends a read at the deadlines
        self.sock = self.conn.sock
        if self._stopped():
            return
        self.conn.request("POST", engine._path, json.dumps(self.payload).encode(), engine._headers())
        response = self.response = self.conn.getresponse()
        if response.status >= 400:
            raise _http_error(engine, response)
        body = self.body = _Body(response, where)
        content_type = response.getheader("Content-Type", "")
        if engine.protocol.json_lines or "ndjson" in content_type:
            yield from _json_lines(body.lines(), where)
        elif "text/event-stream" in content_type:
            yield from _server_sent_events(body.lines(), where)
        else:  # a server that ignored "stream": one JSON answer
            yield _json(body.whole(), where)

    def _error(self, exc: Exception) -> Exception | None:
        """What a failure while answering means: a `RemoteError` to raise, None after a cancel, or `exc` itself."""
        engine = self.engine
        where = engine._where()
        if self.expired.is_set():
            return self._timeout()
        if self.interrupted.is_set() or self._stopped():  # a closed socket after a cancel is expected
            return None
        if isinstance(exc, RemoteError):
            return exc
        if isinstance(exc, TimeoutError):
            return self._timeout()
        if isinstance(exc, ConnectionRefusedError):
            return RemoteConnectionError(
                f"cannot connect to {where}: connection refused. Is the server running, and is `midline.backend.url` "
                "right?"
            )
        if isinstance(exc, socket.gaierror):
            return RemoteConnectionError(f"cannot connect to {where}: unknown host {engine._host!r} ({exc.strerror})")
        if isinstance(exc, ssl.SSLError):
            return RemoteConnectionError(f"cannot connect to {where}: TLS failed ({exc})")
        if isinstance(exc, (OSError, http.client.HTTPException, ValueError)):
            return RemoteConnectionError(f"{where} dropped the connection ({type(exc).__name__}: {exc})")
        return exc

    def _timeout(self) -> RemoteTimeoutError:
        """The backend timeout passed: nothing came, or a trickle that never made a whole event."""
        where, seconds = self.engine._where(), self.engine.timeout_s
        partial = self.body.received - self.mark if self.body is not None else 0
        if partial:
            return RemoteTimeoutError(
                f"{where} sent only {partial} bytes in {seconds:g} s, not a whole answer: a stalled or trickling "
                "stream (`midline.backend.timeoutMs`)"
            )
        return RemoteTimeoutError(f"{where} sent nothing for {seconds:g} s (`midline.backend.timeoutMs`)")


class _Body:
    """A response body read piece by piece (never whole first), at most `MAX_RESPONSE_BYTES` of it."""

    def __init__(self, response: http.client.HTTPResponse, where: str):
        self.response = response
        self.where = where
        self.received = 0

    def read(self) -> bytes:
        """The next piece as it arrives; b"" at the end. Raises `RemoteProtocolError` past the limit."""
        piece = self.response.read1(_READ_BYTES)
        self.received += len(piece)
        if self.received > MAX_RESPONSE_BYTES:
            raise self._too_large()
        return piece

    def whole(self) -> bytes:
        """The whole body; refused at once when its declared length is over the limit."""
        if self.response.length is not None and self.response.length > MAX_RESPONSE_BYTES:
            raise self._too_large()
        pieces = []
        while piece := self.read():
            pieces.append(piece)
        return b"".join(pieces)

    def lines(self) -> Iterator[bytes]:
        """The body's lines, without their b"\\n", each as soon as it is whole; the last one may lack a newline."""
        buffer = bytearray()
        while piece := self.read():
            scan = len(buffer)  # where a newline may be: in the new piece only
            buffer += piece
            start = 0
            while (end := buffer.find(b"\n", scan)) >= 0:
                if end - start > MAX_LINE_BYTES:
                    raise self._too_long()
                yield bytes(buffer[start:end])
                start = scan = end + 1
            del buffer[:start]
            if len(buffer) > MAX_LINE_BYTES:
                raise self._too_long()
        if buffer:
            yield bytes(buffer)

    def _too_large(self) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"the response of {self.where} was larger than {MAX_RESPONSE_BYTES >> 20} MB, far more than a completion: "
            "is `midline.backend.url` a completion server of `midline.backend.kind`?"
        )

    def _too_long(self) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"{self.where} sent a stream line longer than {MAX_LINE_BYTES >> 20} MB, far more than one event of a "
            "completion: "
            "is `midline.backend.url` a completion server of `midline.backend.kind`?"
        )


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed, or never connected
            pass


def _server_sent_events(lines: Iterator[bytes], where: str) -> Iterator[Any]:
    """`data:` payloads of an SSE stream's lines, parsed as JSON, until `[DONE]` or the end of the stream."""
    data: list[str] = []
    is_error = False
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "error":  # llama.cpp's way of reporting a failure mid-stream
                data.append(value)
                is_error = True
            continue  # comments (":") and other fields (event, id, retry) carry nothing here
        if not data:
            continue
        payload = "\n".join(data)
        data = []
        if payload.strip() == "[DONE]":
            return
        event = _json(payload, where)
        yield {"error": event} if is_error and "error" not in event else event


def _json_lines(lines: Iterator[bytes], where: str) -> Iterator[Any]:
    for raw in lines:
        if raw.strip():
            yield _json(raw, where)


def _json(data: bytes | str, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # nested past Python's limit: not an answer either
        raise RemoteProtocolError(f"{where} sent something that is not JSON: {_short(data)}") from None


def _http_error(engine: RemoteEngine, response: http.client.HTTPResponse) -> RemoteHTTPError:
    """The server's own explanation of an HTTP error, from its JSON body (or the body's text)."""
    try:
        body = response.read(65536)
    except (OSError, http.client.HTTPException):
        body = b""
    text = body.decode("utf-8", "replace").strip()
    try:
        server_message = _error_message(json.loads(text))
    except (ValueError, RecursionError):
        server_message = text
    server_message = _short(server_message or response.reason, 500)
    hint = ""
    if response.status in (401, 403):
        hint = " (check the API key: `midline.backend.apiKeyEnv`)"
    elif response.status == 404:
        hint = (
            f" (check `midline.backend.url` and `midline.backend.kind`: is {engine._path} this server's endpoint, "
            "and the model name right?)"
        )
    message = f"{engine._where()} answered HTTP {response.status}: {server_message}{hint}"
    return RemoteHTTPError(message, response.status, server_message)


def _error_message(body: Any) -> str:
    """The message in the error shapes servers use: OpenAI/vLLM/llama.cpp, TGI, Ollama, FastAPI."""
    while isinstance(body, dict):  # a loop, not recursion: the body's nesting is the server's to choose
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict) and value:
                body = value
                break
            if isinstance(value, list) and value:  # FastAPI validation errors
                return "; ".join(_short(v.get("msg", v)) if isinstance(v, dict) else _short(v) for v in value)
        else:
            break
    return _short(body)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"text is {type(value).__name__}, not a string")
    return value


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop token in it (a server that prints special tokens, or that got fewer stops)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _short(value: Any, limit: int = 200) -> str:
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else _dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value)
    except RecursionError:
        return f"(a JSON {type(value).__name__} nested too deeply to show)"


def _load_tokenizer(path: Path) -> Any:
    if path.is_file():  # tokenizer.json itself: its directory holds the rest
        path = path.parent
    if not path.is_dir():
        raise RemoteError(
            f"`midline.backend.tokenizer` is {path}, which does not exist: point it at a directory with the served "
            "model's tokenizer.json"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is a settings problem to report
        raise RemoteError(f"cannot load the tokenizer in {path} (`midline.backend.tokenizer`): {exc}") from exc


def _model_floors(path: Path) -> dict[str, Any]:
    """The confidence floors in the `midline.json` beside a local tokenizer (a midline model's own), if any."""
    folder = path.parent if path.is_file() else path
    try:
        settings = json.loads((folder / "midline.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(settings, dict):
        return {}
    return {k: settings[k] for k in ("min_mean_logprob", "min_line_logprob") if k in settings}


def api_key_from(key: str | None, env: str | None) -> str | None:
    """The API key: `key` itself, else the environment variable `env` (an error if it is named but unset)."""
    if key:
        return key
    if env:
        value = os.environ.get(env)
        if not value:
            raise RemoteError(f"`midline.backend.apiKeyEnv` names {env}, which is not set in the server's environment")
        return value
    return None
