"""Remote backends against a real tiny model served over HTTP (tests/model_server.py).

The served model is the same session model as `tiny_engine`, so a remote greedy completion must equal the local
engine's, token for token, over OpenAI `/v1/completions`, llama.cpp `/infill` and Ollama `/api/generate`. Then:
cancellation and deadlines close the stream mid-generation (and the server stops generating), a silent server
times out, and refused connections, HTTP errors and malformed answers raise `RemoteError`s that say what happened;
huge answers are refused after a few MB, never read whole, and a trickling server is stopped at the backend
timeout; last, the real `midline serve` completes through a remote backend, reports a dead one without crashing,
and shows a failing explanation once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import pytest
from lsprotocol import types

from midline.model import remote as remote_module
from midline.model.fim import FimPrompt, Snippet
from midline.model.remote import (
    MAX_LINE_BYTES,
    MAX_RESPONSE_BYTES,
    RemoteConnectionError,
    RemoteEngine,
    RemoteError,
    RemoteHTTPError,
    RemoteProtocolError,
    RemotePrompt,
    RemoteTimeoutError,
    api_key_from,
)
from midline.server.completion import Completer
from midline.server.config import Config, ConfigError
from midline.server.documents import Document

from ..lsp_client import inline, open_document, running_server, status
from ..model_server import Feed, ModelServer

PROMPT = FimPrompt(
    prefix="import os\n\n\ndef home():\n    # the user's home directory, from ",
    suffix="\n    return os.path.expanduser('~')\n",
    path="pkg/home.py",
    snippets=[Snippet("pkg/paths.py", "def expand(path):\n    return os.path.expanduser(path)\n")],
    repo="proj",
)
# llama.cpp's /infill gets no path or repository name: the server lays out the snippets and the prefix/suffix (PSM
# here). It is used where midline does not know the model's FIM format ("infill": llama.cpp without fimFormat or a
# tokenizer); with it, llama.cpp gets midline's own prompt on /completion, as token ids.
INFILL_PROMPT = FimPrompt(prefix=PROMPT.prefix, suffix=PROMPT.suffix, snippets=PROMPT.snippets)
KINDS = ("openai", "llamacpp", "ollama")


@pytest.fixture(scope="module")
def model_server(tiny_engine):
    with ModelServer(tiny_engine) as server:
        yield server


@pytest.fixture
def served(model_server):
    """The module's server, healthy and fast; after the test, idle again (a cancelled generation has stopped)."""
    model_server.reset()
    yield model_server
    assert model_server.wait_idle(10), "the server kept generating for a client that went away"
    model_server.reset()


def remote(server: ModelServer, tiny_engine, kind: str = "openai", **kwargs) -> RemoteEngine:
    """A backend for the served tiny model, with its tokenizer and FIM format (as `backend.tokenizer` gives); "infill":
    llama.cpp knowing neither (so /infill, the server's layout)."""
    if kind == "infill":
        return RemoteEngine("llamacpp", server.url, **kwargs)
    return RemoteEngine(kind, server.url, model="tiny", fim_format=tiny_engine.fim, tokenizer=tiny_engine.tokenizer,
                        **kwargs)


def local_greedy(tiny_engine, kind: str, max_new_tokens: int, **kwargs):
    prompt, mode = (INFILL_PROMPT, "psm") if kind == "infill" else (PROMPT, None)
    ids = tiny_engine.encode(prompt, mode)
    return ids, tiny_engine.generate(ids, max_new_tokens=max_new_tokens, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("kind", [*KINDS, "infill"])
def test_remote_greedy_completion_equals_the_local_engine(served, tiny_engine, kind, stream):
    served.ignore_stream = not stream  # "whole": a server that ignores "stream" and answers with one JSON body
    ids, expected = local_greedy(tiny_engine, kind, 24)
    backend = remote(served, tiny_engine, kind)
    got = backend.generate(backend.encode(PROMPT), max_new_tokens=24)
    request = served.requests[-1]
    assert request["prompt_ids"] == ids  # the server tokenized exactly the prompt the local engine runs
    assert expected.text.strip() and (got.text, got.finish_reason) == (expected.text, expected.finish_reason)
    assert got.prompt_tokens == len(ids)
    payload = request["payload"]
    if kind == "openai":
        assert payload["stream"] and payload["max_tokens"] == 24
        assert payload["temperature"] == 0 and payload["model"] == "tiny"
        assert payload["stop"] == list(tiny_engine.fim.stop_tokens[:4])
        assert payload["logprobs"] == 1
    elif kind == "llamacpp":  # midline's prompt as token ids, to /completion
        assert request["path"] == "/completion" and payload["prompt"] == ids
        assert payload["n_predict"] == 24 and payload["n_probs"] == 1 and payload["top_k"] == 1
    elif kind == "infill":
        assert request["path"] == "/infill" and payload["n_predict"] == 24 and payload["n_probs"] == 1
        assert payload["input_extra"] == [{"filename": "pkg/paths.py", "text": PROMPT.snippets[0].text}]
    else:
        assert payload["raw"] is True and payload["logprobs"] is True
        assert payload["options"]["num_predict"] == 24 and payload["options"]["num_ctx"] == 4096
    # the server's log-probabilities, so confidence floors apply as to the local engine
    assert got.mean_logprob == pytest.approx(expected.mean_logprob, abs=1e-4)
    if kind in ("llamacpp", "infill"):  # llama.cpp sends the token ids too
        assert got.token_ids == expected.token_ids
    if got.token_ids == expected.token_ids:
        assert got.token_logprobs == pytest.approx(expected.token_logprobs, abs=1e-4)


def test_confidence_floors_apply_to_a_remote_model(served, tiny_engine, tiny_model_dir, tmp_path):
    """A remote answer has the server's mean log-probability, so the user's floor hides it when it is less confident,
    as it would the local engine's; the model's own floors come from the midline.json beside the local tokenizer."""
    doc = Document((tmp_path / "home.py").as_uri(), "python", 1, CODE)

    def complete(backend: RemoteEngine, **settings):
        config = Config(debounce_ms=0, max_new_tokens=24, candidates=1, **settings)
        with ThreadPoolExecutor(max_workers=1) as executor:
            return asyncio.run(Completer(backend, config, executor).complete(doc, CURSOR))

    plain = RemoteEngine.load("llamacpp", served.url, tokenizer=tiny_model_dir)
    assert plain.min_mean_logprob is None and plain.min_line_logprob is None
    shown = complete(plain)
    mean = shown.generation.mean_logprob
    assert shown.suggestion is not None and -20 < mean < 0
    assert complete(plain, min_mean_logprob=mean - 0.01).suggestion == shown.suggestion
    assert complete(plain, min_mean_logprob=mean + 0.01).suggestion is None

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((tiny_model_dir / name).read_bytes())
    floors = {"min_mean_logprob": {"mid_line": mean + 0.01}, "min_line_logprob": -2.0}
    (model_dir / "midline.json").write_text(json.dumps(floors))
    backend = RemoteEngine.load("llamacpp", served.url, tokenizer=model_dir)
    assert (backend.min_mean_logprob, backend.min_line_logprob) == (floors["min_mean_logprob"], -2.0)
    assert complete(backend).suggestion is None


def test_sampling_settings_reach_the_server_and_match_the_local_engine(served, tiny_engine):
    _, expected = local_greedy(tiny_engine, "openai", 16, temperature=0.8, top_p=0.9, seed=7)
    backend = remote(served, tiny_engine)
    got = backend.generate(backend.encode(PROMPT), max_new_tokens=16, temperature=0.8, top_p=0.9, seed=7)
    payload = served.requests[-1]["payload"]
    assert (payload["temperature"], payload["top_p"], payload["seed"]) == (0.8, 0.9, 7)
    assert got.text == expected.text


def test_should_stop_closes_the_stream_at_the_same_token_as_the_local_engine(served, tiny_engine):
    stop = lambda text: len(text) >= 12  # noqa: E731
    _, expected = local_greedy(tiny_engine, "openai", 200, should_stop=stop)
    _, full = local_greedy(tiny_engine, "openai", 200)
    assert expected.finish_reason == "stop" and len(full.token_ids) > 20  # the server would generate on, unstopped
    served.token_delay_s = 0.01
    backend = remote(served, tiny_engine)
    got = backend.generate(backend.encode(PROMPT), max_new_tokens=200, should_stop=stop)
    assert (got.text, got.finish_reason) == (expected.text, "stop")
    assert served.finished.wait(5) and served.last_finish == "disconnected"
    assert served.tokens_generated < 100


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_closes_the_stream_mid_generation(served, tiny_engine, kind):
    _, full = local_greedy(tiny_engine, kind, 200)
    assert len(full.token_ids) > 20  # long enough to cancel in the middle
    served.token_delay_s = 0.02
    backend = remote(served, tiny_engine, kind)
    cancel, result = threading.Event(), {}
    ids = backend.encode(PROMPT)
    worker = threading.Thread(target=lambda: result.update(g=backend.generate(ids, max_new_tokens=200, cancel=cancel)))
    worker.start()
    start = time.monotonic()
    while served.tokens_generated < 5:
        assert time.monotonic() - start < 10, "the server never started generating"
        time.sleep(0.005)
    cancel.set()
    cancelled_at = time.monotonic()
    worker.join(5)
    assert time.monotonic() - cancelled_at < 0.5, "generate() did not return promptly after cancel"
    got = result["g"]
    assert got.finish_reason == "cancelled" and full.text.startswith(got.text)
    assert served.finished.wait(5) and served.last_finish == "disconnected"  # the server saw the connection close
    assert served.tokens_generated < len(full.token_ids)


def test_deadline_closes_the_stream_mid_generation_and_before_the_first_byte(served, tiny_engine):
    _, full = local_greedy(tiny_engine, "openai", 200)
    backend = remote(served, tiny_engine)
    served.token_delay_s = 0.05
    start = time.monotonic()
    got = backend.generate(backend.encode(PROMPT), max_new_tokens=200, deadline=start + 0.3)
    assert got.finish_reason == "timeout" and 0.25 < time.monotonic() - start < 1.0  # not the 10 s of 200 tokens
    assert got.text and full.text.startswith(got.text)
    assert served.finished.wait(5) and served.last_finish == "disconnected"

    assert served.wait_idle(5)
    served.token_delay_s, served.first_byte_delay_s = 0.0, 0.8  # a server busy before it answers at all
    start = time.monotonic()
    got = backend.generate(backend.encode(PROMPT), max_new_tokens=8, deadline=start + 0.15)
    assert got.finish_reason == "timeout" and got.text == "" and time.monotonic() - start < 0.6


def test_a_silent_server_times_out_with_a_clear_error(served, tiny_engine):
    served.first_byte_delay_s = 0.8
    backend = remote(served, tiny_engine, timeout_s=0.15)
    start = time.monotonic()
    with pytest.raises(RemoteTimeoutError, match=r"sent nothing for 0\.15 s.*timeoutMs") as err:
        backend.generate(backend.encode(PROMPT), max_new_tokens=8)
    assert time.monotonic() - start < 0.6 and served.url in str(err.value)


def test_connection_refused_is_a_clear_error(tiny_engine):
    url = f"http://127.0.0.1:{free_port()}"
    backend = RemoteEngine("openai", url, fim_format=tiny_engine.fim)
    with pytest.raises(RemoteConnectionError, match="connection refused") as err:
        backend.generate(backend.encode(PROMPT))
    assert url in str(err.value) and "backend.url" in str(err.value)


@pytest.mark.parametrize(
    "status, body, message",
    [
        (500, {"error": {"code": 500, "message": "CUDA out of memory (test)", "type": "server_error"}},
         "CUDA out of memory (test)"),  # vLLM, llama.cpp
        (503, {"error": "Model is overloaded", "error_type": "overloaded"}, "Model is overloaded"),  # TGI
        (404, {"error": "model 'tiny' not found, try pulling it first"}, "model 'tiny' not found"),  # Ollama
        (400, {"object": "error", "message": "This model's maximum context length is 4096 tokens", "code": 400},
         "maximum context length"),  # vLLM
    ],
)
def test_http_errors_carry_the_servers_message(served, tiny_engine, status, body, message):
    served.fail = (status, body)
    backend = remote(served, tiny_engine)
    with pytest.raises(RemoteHTTPError) as err:
        backend.generate(backend.encode(PROMPT))
    assert err.value.status == status and message in err.value.server_message
    assert f"HTTP {status}: " in str(err.value) and message in str(err.value) and served.url in str(err.value)


@pytest.mark.parametrize(
    "garbage, error, message",
    [
        (b"data: {not json\n\n", RemoteProtocolError, "not JSON"),
        (b'data: {"choices": [{"index": 0}]}\n\n', RemoteProtocolError, "malformed openai answer"),
        (b'data: ["a", "list"]\n\n', RemoteProtocolError, "not a JSON object"),
        (b'data: {"choices": [{"text": "x", "finish_reason": null}]}\n\n', RemoteProtocolError, "ended the stream"),
        (b'data: {"error": {"message": "slot unavailable", "code": 503}}\n\n', RemoteError, "slot unavailable"),
        (b"data: " + b"[" * 200_000 + b"\n\n", RemoteProtocolError, "not JSON"),  # nested past Python's recursion limit
    ],
)
def test_malformed_answers_raise_protocol_errors(served, tiny_engine, garbage, error, message):
    served.garbage = garbage
    backend = remote(served, tiny_engine)
    with pytest.raises(error, match=message):
        backend.generate(backend.encode(PROMPT))


def test_error_bodies_nested_past_the_recursion_limit_are_shown_short():
    body: dict = {"detail": "deep"}
    for _ in range(5000):
        body = {"error": body}
    assert remote_module._error_message(body) == "deep"
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert remote_module._error_message({"error": deep}) == "(a JSON list nested too deeply to show)"


MB = 1 << 20
HUGE = 100 * MB
PIECE = b"a" * (64 << 10)


def huge(head: bytes, size: int, tail: bytes) -> Callable[[], Iterator[bytes]]:
    """`head`, `size` bytes of "a" and `tail`, made as they are sent (one 64 KB piece, reused)."""

    def pieces() -> Iterator[bytes]:
        yield head
        for _ in range(size // len(PIECE)):
            yield PIECE
        yield tail

    return pieces


def endless(first: bytes, each: bytes, most: int = 600) -> Callable[[], Iterator[bytes]]:
    """`first`, then `each` again and again (`most` times: a test that fails still ends)."""

    def pieces() -> Iterator[bytes]:
        yield first
        for _ in range(most):
            yield each

    return pieces


@contextlib.contextmanager
def traced() -> Iterator[dict[str, float]]:
    """Figures for the block: `peak_mb`, the peak of Python's allocations (all threads, the server's too), and
    `seconds`."""
    figures: dict[str, float] = {}
    tracemalloc.start()
    start = time.monotonic()
    try:
        yield figures
    finally:
        figures["seconds"] = time.monotonic() - start
        figures["peak_mb"] = tracemalloc.get_traced_memory()[1] / MB
        tracemalloc.stop()


def test_size_limits_are_a_few_megabytes():
    assert MAX_RESPONSE_BYTES == 8 * MB and MAX_LINE_BYTES == MB


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_a_huge_answer_is_refused_without_being_read_whole(served, tiny_engine, declared):
    head, tail = b'{"choices": [{"text": "', b'", "finish_reason": "length"}]}'
    length = len(head) + HUGE + len(tail) if declared else None
    served.feed = Feed(huge(head, HUGE, tail), "application/json", length)  # a server that ignored "stream"
    backend = remote(served, tiny_engine)
    with traced() as used, pytest.raises(RemoteProtocolError,
                                         match=r"response of .* was larger than 8 MB.*backend\.url") as err:
        backend.generate(backend.encode(PROMPT), max_new_tokens=8)
    assert served.url in str(err.value)
    assert used["peak_mb"] < 20 and used["seconds"] < 5, used


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_a_huge_stream_line_is_reported_as_too_long(served, tiny_engine, kind):
    head = b'data: {"choices": [{"text": "' if kind == "openai" else b'{"response": "'
    content_type = "text/event-stream" if kind == "openai" else "application/x-ndjson"
    served.feed = Feed(huge(head, HUGE, b'"}]}\n\n'), content_type)
    backend = remote(served, tiny_engine, kind)
    with traced() as used, pytest.raises(RemoteProtocolError, match=r"sent a stream line longer than 1 MB") as err:
        backend.generate(backend.encode(PROMPT), max_new_tokens=8)
    assert served.url in str(err.value) and "sent nothing" not in str(err.value)
    assert used["peak_mb"] < 20 and used["seconds"] < 5, used


@pytest.mark.slow
def test_a_stream_larger_than_the_limit_is_refused(served, tiny_engine):
    event = b'data: {"choices": [{"text": "' + b"a" * 60_000 + b'", "finish_reason": null}]}\n\n'
    served.feed = Feed(endless(event, event, 200))  # 12 MB of well-formed events
    backend = remote(served, tiny_engine)
    with traced() as used, pytest.raises(RemoteProtocolError, match=r"larger than 8 MB"):
        backend.generate(backend.encode(PROMPT), max_new_tokens=8)
    assert used["seconds"] < 5, used


@pytest.mark.parametrize(
    "first, each",
    [
        (b'data: {"choices": [{"text": "', b"a"),  # one event that never ends, a byte at a time
        (b": keep-alive\n\n", b": keep-alive\n\n"),  # comments, never an event
    ],
    ids=["bytes", "comments"],
)
def test_an_endless_trickle_ends_at_the_backend_timeout(served, tiny_engine, first, each):
    served.feed = Feed(endless(first, each), delay_s=0.05)
    backend = remote(served, tiny_engine, timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(RemoteTimeoutError,
                       match=r"sent only \d+ bytes in 0\.5 s, not a whole answer.*timeoutMs") as err:
        backend.generate(backend.encode(PROMPT), max_new_tokens=8)
    assert 0.45 < time.monotonic() - start < 1.0 and served.url in str(err.value)
    assert served.finished.wait(5) and served.last_finish == "disconnected"


def test_a_slow_stream_may_take_longer_than_the_backend_timeout_in_all(served, tiny_engine):
    _, expected = local_greedy(tiny_engine, "openai", 24)
    served.token_delay_s = 0.05  # a token every 50 ms: 1.2 s in all, each well within the timeout
    backend = remote(served, tiny_engine, timeout_s=0.4)
    start = time.monotonic()
    got = backend.generate(backend.encode(PROMPT), max_new_tokens=24)
    assert (got.text, got.finish_reason) == (expected.text, expected.finish_reason) and time.monotonic() - start > 0.8


def test_api_key_is_sent_as_a_bearer_token(served, tiny_engine, monkeypatch):
    served.api_key = "sekrit"
    with pytest.raises(RemoteHTTPError, match="invalid API key.*apiKeyEnv"):
        remote(served, tiny_engine).generate(RemotePrompt("x"), max_new_tokens=2)
    monkeypatch.setenv("MIDLINE_TEST_KEY", "sekrit")
    backend = remote(served, tiny_engine, api_key=api_key_from(None, "MIDLINE_TEST_KEY"))
    assert backend.generate(backend.encode(PROMPT), max_new_tokens=2).finish_reason in ("length", "eot")
    assert served.requests[-1]["headers"]["Authorization"] == "Bearer sekrit"
    assert api_key_from("direct", "MIDLINE_TEST_KEY") == "direct" and api_key_from(None, None) is None
    with pytest.raises(RemoteError, match="MIDLINE_UNSET_KEY"):
        api_key_from(None, "MIDLINE_UNSET_KEY")


def test_load_detects_the_format_from_a_local_tokenizer_and_counts_tokens(tiny_model_dir, tiny_engine):
    backend = RemoteEngine.load("openai", "http://127.0.0.1:1/v1", tokenizer=tiny_model_dir)
    assert backend.fim.name == "midline" and backend._path == "/v1/completions"
    text = "def home():\n    return os.path.expanduser('~')\n"
    assert backend.count_tokens(text) == tiny_engine.count_tokens(text)
    # no tokenizer: 3 chars a token
    estimated = RemoteEngine("openai", "http://127.0.0.1:1", fim_format=tiny_engine.fim)
    assert estimated.count_tokens(text) == 16 and estimated.count_tokens("") == 0
    assert RemoteEngine("llamacpp", "http://h:2").fim.name == "server-side"  # llama.cpp applies the model's own format
    assert RemoteEngine("llamacpp", "http://h:2")._path == "/infill"
    assert RemoteEngine.load("llamacpp", "http://h:2", tokenizer=tiny_model_dir)._path == "/completion"
    with pytest.raises(RemoteError, match="fimFormat"):
        RemoteEngine.load("openai", "http://127.0.0.1:1")
    with pytest.raises(RemoteError, match="backend.model"):
        RemoteEngine("ollama", "http://127.0.0.1:1", fim_format=tiny_engine.fim)
    with pytest.raises(RemoteError, match="not an http"):
        RemoteEngine("openai", "localhost:8000", fim_format=tiny_engine.fim)
    with pytest.raises(RemoteError, match="does not exist"):
        RemoteEngine.load("openai", "http://127.0.0.1:1", tokenizer=tiny_model_dir / "missing")


def test_backend_settings():
    config = Config.from_json({"backend": {"kind": "llamacpp", "url": "http://gpu-box:8080", "apiKeyEnv": "KEY",
                                           "timeoutMs": 2000}})
    assert (config.backend.kind, config.backend.api_key_env, config.backend.timeout_ms) == ("llamacpp", "KEY", 2000)
    assert config.to_json()["backend"]["contextLength"] == 4096
    for bad, message in [
        ({"kind": "openai"}, "backend.url"),
        ({"kind": "openai", "url": "gpu-box:8000"}, "backend.url"),
        ({"kind": "ollama", "url": "http://localhost:11434"}, "backend.model"),
        ({"kind": "tgi", "url": "http://localhost:8080"}, "backend.kind"),
        ({"contextLength": 10}, "contextLength"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config.from_json({"backend": bad})


CODE = "import os\n\n\ndef home():\n    # the user's home directory, from \n    return os.path.expanduser('~')\n"
CURSOR = CODE.index("from ") + len("from ")


@pytest.mark.parametrize("kind", ["openai", "llamacpp", "infill"])
def test_completer_suggests_the_same_through_a_remote_backend(served, tiny_engine, tmp_path, kind):
    mode = "psm" if kind == "infill" else "auto"
    config = Config(debounce_ms=0, max_new_tokens=24, fim_mode=mode, candidates=1)  # the greedy answer, as served
    doc = Document((tmp_path / "home.py").as_uri(), "python", 1, CODE)
    suggestions = []
    with ThreadPoolExecutor(max_workers=1) as executor:
        for engine in (tiny_engine, remote(served, tiny_engine, kind)):
            completer = Completer(engine, config, executor, root=str(tmp_path))
            suggestions.append(asyncio.run(completer.complete(doc, CURSOR)).suggestion)
            assert asyncio.run(completer.complete(doc, CURSOR)).suggestion == suggestions[-1]
            assert completer.stats.cache_hits == 1
    if kind != "infill":  # /infill's layout has no path or repository name: a different prompt, another suggestion
        assert suggestions[0] is not None and suggestions[1] == suggestions[0]
    assert len(served.requests) == 1


def test_a_remote_backend_answers_an_explicit_request_with_one_candidate(served, tiny_engine, tmp_path):
    """A serving engine has no batched candidates: a request that asks for three gets one answer, from one request."""
    doc = Document((tmp_path / "home.py").as_uri(), "python", 1, CODE)
    with ThreadPoolExecutor(max_workers=1) as executor:
        config = Config(debounce_ms=0, max_new_tokens=24, candidates=3)
        completer = Completer(remote(served, tiny_engine), config, executor)
        completion = asyncio.run(completer.complete(doc, CURSOR))
    assert len(completion.suggestions) == 1 and completer.trace.candidates == 1 and len(served.requests) == 1


# The end-to-end document of tests/e2e/test_server.py: the end of a comment, where any text is valid Python.
E2E_CODE = '''import math


def area(radius):
    """Area of a circle."""
    # multiply the square of the radius by 
    return math.pi * radius ** 2
'''
E2E_LINE = 5


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_midline_serve_completes_through_a_remote_backend(served, tiny_engine, tiny_model_dir, tmp_path):
    settings = {"debounceMs": 0, "maxNewTokens": 24, "timeoutMs": 20000, "context": {"crossFile": False}}
    uri = (tmp_path / "circle.py").as_uri()
    column = len(E2E_CODE.split("\n")[E2E_LINE])
    with ThreadPoolExecutor(max_workers=1) as executor:  # what the local model suggests at the same place
        completer = Completer(tiny_engine, Config.from_json(settings), executor, root=str(tmp_path))
        expected = (await completer.complete(Document(uri, "python", 1, E2E_CODE),
                                             E2E_CODE.index(" by ") + 4)).suggestion
    assert expected is not None

    backend = {"kind": "openai", "url": served.url + "/v1", "tokenizer": str(tiny_model_dir)}
    async with running_server({**settings, "backend": backend}, tmp_path) as (client, _):
        open_document(client, uri, E2E_CODE)
        result = await inline(client, uri, E2E_LINE, column)
        assert [item.insert_text for item in result.items] == [expected.text]
        assert served.requests and served.requests[-1]["path"] == "/v1/completions"
        info = await status(client)
        assert info["ready"] and info["device"] == f"openai {served.url}/v1" and info["fimFormat"] == "midline"

        dead = f"http://127.0.0.1:{free_port()}"  # the serving engine goes away: one message, empty answers
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"midline": {"backend": {**backend, "url": dead},
                                                                     "cacheSize": 0}})
        )
        for _ in range(500):  # the backend reloads in the background: until then, answers are empty without it
            if dead in (await status(client)).get("device", ""):
                break
            await asyncio.sleep(0.02)
        client.messages.clear()
        for _ in range(2):
            assert not (await inline(client, uri, E2E_LINE, column)).items
        errors = [m.message for m in client.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1 and "connection refused" in errors[0] and dead in errors[0]
        assert (await status(client))["ready"]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_a_failing_explanation_shows_one_message(served, tiny_model_dir, tmp_path):
    served.fail = (500, {"error": {"code": 500, "message": "CUDA out of memory (test)", "type": "server_error"}})
    backend = {"kind": "openai", "url": served.url, "tokenizer": str(tiny_model_dir)}
    uri = (tmp_path / "circle.py").as_uri()
    async with running_server({"debounceMs": 0, "backend": backend}, tmp_path) as (client, _):
        open_document(client, uri, E2E_CODE)
        at = types.Position(3, 5)  # def area
        listed = await client.text_document_code_action_async(
            types.CodeActionParams(types.TextDocumentIdentifier(uri), types.Range(at, at),
                                   types.CodeActionContext(diagnostics=[]))
        )
        explain = next(a for a in listed if a.kind == "refactor.midline.explain")
        client.messages.clear()
        resolved = await client.code_action_resolve_async(explain)
        await status(client)  # a round trip: any later message has arrived
        assert resolved.command is None and resolved.edit is None and served.requests
        shown = [(m.type, m.message) for m in client.messages]
        assert len(shown) == 1, shown
        assert shown[0][0] == types.MessageType.Error
        assert "explain failed" in shown[0][1] and "CUDA out of memory (test)" in shown[0][1]


def test_log_probabilities_in_each_servers_shapes():
    """The shapes real servers send: llama.cpp's stream event (since late 2024, and the older `probs`), its
    /v1/completions choice, vLLM's (OpenAI's legacy) choice, and Ollama's line."""
    llamacpp = {"index": 0, "content": " os", "tokens": [2658], "stop": False, "id_slot": 0, "tokens_predicted": 1,
                "tokens_evaluated": 40, "completion_probabilities": [
                    {"id": 2658, "token": " os", "bytes": [32, 111, 115], "logprob": -0.25,
                     "top_logprobs": [{"id": 2658, "token": " os", "bytes": [32, 111, 115], "logprob": -0.25}]}]}
    chunk = remote_module._LlamaCppInfill().parse(llamacpp)
    assert (chunk.text, chunk.logprobs, chunk.ids, chunk.prompt_tokens) == (" os", (-0.25,), (2658,), 40)
    old = {"content": " os", "stop": False, "completion_probabilities": [
        {"content": " os", "probs": [{"tok_str": " os", "prob": 0.5}, {"tok_str": " sys", "prob": 0.2}]}]}
    assert remote_module._LlamaCppInfill().parse(old).logprobs == pytest.approx((-0.6931,), abs=1e-4)
    not_sent = {"content": " os",
                "completion_probabilities": [{"content": " os", "probs": [{"tok_str": "x", "prob": 1}]}]}
    assert remote_module._LlamaCppInfill().parse(not_sent).logprobs == ()
    openai = remote_module._OpenAICompletions()
    vllm = {"choices": [{"index": 0, "text": " os.path", "finish_reason": None, "logprobs": {
        "text_offset": [0, 3], "token_logprobs": [-0.25, -1.5], "tokens": [" os", ".path"],
        "top_logprobs": [{" os": -0.25}, {".path": -1.5}]}}]}
    assert openai.parse(vllm).logprobs == (-0.25, -1.5)
    llamacpp_v1 = {"choices": [{"index": 0, "text": " os", "finish_reason": None, "logprobs": {"content": [
        {"id": 2658, "token": " os", "bytes": [32, 111, 115], "logprob": -0.25, "top_logprobs": []}]}}]}
    assert openai.parse(llamacpp_v1).logprobs == (-0.25,)
    assert openai.parse({"choices": [{"text": " os", "logprobs": None}]}).logprobs == ()
    ollama = {"model": "qwen", "response": " os", "done": False,
              "logprobs": [{"token": " os", "logprob": -0.25, "bytes": [32, 111, 115]}]}
    assert remote_module._OllamaGenerate().parse(ollama).logprobs == (-0.25,)
