"""The real `midline serve` process fed raw, malformed or ill-timed JSON-RPC: every request with an id is answered."""

from __future__ import annotations

import json
import re
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from midline.server.server import MidlineServer

from ..lsp_client import SERVER

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
SERVER_NOT_INITIALIZED = -32002
WAIT_S = 4.0


class RawServer:
    """`midline serve` over stdio, spoken to in framed bytes; a thread collects everything it sends."""

    def __init__(self, log: Path, level: str = "WARNING") -> None:
        self.log = log
        command = [*SERVER[:-1], level]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("wb"))
        self.messages: queue.Queue[Any] = queue.Queue()
        self.seen: list[Any] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.process.stdout
        assert out is not None
        while True:
            length = None
            while (header := out.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            if not header or length is None:
                return
            self.messages.put(json.loads(out.read(length)))

    def send(self, message: Any) -> None:
        """Frame and send `message`: bytes as they are, anything else as JSON."""
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def wait_for(self, predicate, timeout: float = WAIT_S) -> Any | None:
        """The first message (already seen or arriving within `timeout`) that satisfies `predicate`, taken out."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.seen:
                if predicate(message):
                    self.seen.remove(message)
                    return message
            try:
                self.seen.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return None

    def response(self, msg_id: Any, timeout: float = WAIT_S) -> dict[str, Any] | None:
        """The response to request `msg_id` (None: the null id of an unreadable message)."""
        return self.wait_for(lambda m: isinstance(m, dict) and "method" not in m and "id" in m and m["id"] == msg_id,
                             timeout)

    def request(self, msg_id: Any, method: str, params: Any = None, timeout: float = WAIT_S) -> dict[str, Any] | None:
        self.send(_request(msg_id, method, params))
        return self.response(msg_id, timeout)

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    def initialize(self, root: Path) -> dict[str, Any] | None:
        options = {"midline": {"model": str(root / "no-model"), "debounceMs": 0}}
        answer = self.request("init", "initialize", {"processId": None, "rootUri": root.as_uri(), "capabilities": {},
                                                     "initializationOptions": options}, timeout=60)
        self.notify("initialized", {})
        return answer

    def close(self) -> int:
        """Shut down, exit and wait for the process; its exit status."""
        try:
            self.request("bye", "shutdown", timeout=5)
            self.notify("exit")
            return self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            return self.process.wait()


def _request(msg_id: Any, method: str, params: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, **({"params": params} if params is not None else {})}


URI = "file:///workspace/shapes.py"
TEXT = "def square(side):\n    return side * side\n"
DOC = {"uri": URI}
SECRET = "password = 'hunter2'  # user code"


def _position(line: Any, character: Any = 0) -> dict[str, Any]:
    return {"textDocument": DOC, "position": {"line": line, "character": character}}


def _inline(trigger: Any) -> dict[str, Any]:
    return {**_position(0), "context": {"triggerKind": trigger}}


def _resolve(msg_id: Any, data: Any) -> dict[str, Any]:
    return _request(msg_id, "codeAction/resolve", {"title": "x", "data": data})


# (label, message, the id its error answer carries, error code, words the error message holds)
BAD_REQUESTS: list[tuple[str, Any, Any, int, str]] = [
    ("negative line", _request(1, "textDocument/hover", _position(-1)), 1, INVALID_PARAMS,
     "position.line must be a non-negative integer"),
    ("string character", _request(2, "textDocument/hover", _position(0, "x")), 2, INVALID_PARAMS,
     "position.character must be a non-negative integer"),
    ("fractional line", _request(3, "textDocument/completion", _position(1.5)), 3, INVALID_PARAMS,
     "position.line must be a non-negative integer"),
    ("line past 2**31", _request(4, "textDocument/hover", _position(2**40)), 4, INVALID_PARAMS,
     "position.line must be a non-negative integer"),
    ("unknown trigger kind", _request(5, "textDocument/inlineCompletion", _inline(7)), 5, INVALID_PARAMS,
     "context.triggerKind must be one of"),
    ("position missing", _request(6, "textDocument/hover", {"textDocument": DOC}), 6, INVALID_PARAMS,
     "position is required"),
    ("params a string", _request(7, "textDocument/hover", "abc"), 7, INVALID_PARAMS, "params must be an object"),
    ("params missing", _request(8, "textDocument/hover"), 8, INVALID_PARAMS, "params is required"),
    ("uri a number",
     _request(9, "textDocument/hover", {"textDocument": {"uri": 5}, "position": {"line": 0, "character": 0}}), 9,
     INVALID_PARAMS, "textDocument.uri must be a string"),
    ("command a number", _request(10, "workspace/executeCommand", {"command": 5}), 10, INVALID_PARAMS,
     "command must be a string"),
    ("resolve without data", _request(11, "codeAction/resolve", {"title": "midline: Explain"}), 11, INVALID_PARAMS,
     "data"),
    ("resolve data without kind", _resolve(12, {"uri": URI, "action": "explain", "version": 1}), 12, INVALID_PARAMS,
     "data.kind"),
    ("resolve data a number", _resolve(13, 5), 13, INVALID_PARAMS, "data"),
    ("resolve uri a list", _resolve(14, {"action": "explain", "kind": "function", "start": 0, "end": 3, "uri": [1]}),
     14, INVALID_PARAMS, "data.uri"),
    ("resolve unknown document",
     _resolve(15, {"action": "explain", "kind": "function", "start": 0, "end": 3, "uri": "file:///nowhere.py"}), 15,
     INVALID_PARAMS, "not open"),
    ("resolve diagnostics not strings",
     _resolve(26, {"action": "fix", "uri": URI, "kind": "function", "start": 0, "end": 5, "version": 1,
                   "diagnostics": [1]}), 26, INVALID_PARAMS, "data.diagnostics"),
    ("unknown command", _request(27, "workspace/executeCommand", {"command": "midline.nope"}), 27, INVALID_PARAMS,
     "midline.status"),
    ("not JSON", b'{"jsonrpc": "2.0", "id": 16, "method": ', None, PARSE_ERROR, "JSON"),
    ("not UTF-8", b'{"jsonrpc": "2.0", "id": 17, "method": "\xff"}', None, PARSE_ERROR, "JSON"),
    ("method missing", {"jsonrpc": "2.0", "id": 18}, 18, INVALID_REQUEST, "method"),
    ("method a number", {"jsonrpc": "2.0", "id": 19, "method": 5}, 19, INVALID_REQUEST, "method"),
    ("id an object", {"jsonrpc": "2.0", "id": {"n": 20}, "method": "textDocument/hover", "params": _position(0)}, None,
     INVALID_REQUEST, "id"),
    ("a number, not an object", b"42", None, INVALID_REQUEST, "object"),
    ("batch", [_request(21, "textDocument/hover", _position(0)), _request(22, "textDocument/hover", _position(0))], 21,
     INVALID_REQUEST, "Batches"),
    ("empty batch", [], None, INVALID_REQUEST, "Batches"),
    ("jsonrpc 1.0", {**_request(23, "textDocument/hover", _position(0)), "jsonrpc": "1.0"}, 23, INVALID_REQUEST, "2.0"),
    ("jsonrpc missing", {"id": 24, "method": "textDocument/hover", "params": _position(0)}, 24, INVALID_REQUEST, "2.0"),
    ("unknown method", _request(25, "midline/noSuchThing", {}), 25, METHOD_NOT_FOUND, "midline/noSuchThing"),
]

# Notifications with bad params: never answered, and the server goes on serving.
BAD_NOTIFICATIONS = [
    {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": URI}}},
    {"jsonrpc": "2.0", "method": "textDocument/didOpen",
     "params": {"textDocument": {"uri": 5, "languageId": "python", "version": "one", "text": SECRET}}},
    {"jsonrpc": "2.0", "method": "textDocument/didChange", "params": "nonsense"},
    {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {}},
    {"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration"},
    {"jsonrpc": "1.0", "method": "textDocument/didClose", "params": {"textDocument": DOC}},
    {"jsonrpc": "2.0", "method": 7},
]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> RawServer:
    root = tmp_path_factory.mktemp("raw")
    server = RawServer(root / "server.log")
    assert server.initialize(root) is not None
    server.notify("textDocument/didOpen",
                  {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": TEXT}})
    yield server
    server.close()


def _assert_serving(server: RawServer, msg_id: str) -> None:
    answer = server.request(msg_id, "textDocument/hover", _position(0, 5))
    assert answer is not None and "result" in answer, answer


@pytest.mark.parametrize("label, message, answer_id, code, words", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
@pytest.mark.e2e
def test_every_bad_request_is_answered_with_an_lsp_error(served: RawServer, label, message, answer_id, code, words):
    served.send(message)
    answer = served.response(answer_id)
    assert answer is not None, f"{label}: no answer"
    error = answer.get("error")
    assert error is not None and error["code"] == code, answer
    assert words in error["message"], error["message"]
    assert _is_sentence(error["message"]), error["message"]
    assert "data" not in error or "traceback" not in json.dumps(error["data"])
    _assert_serving(served, f"after {label}")


@pytest.mark.e2e
def test_each_batched_request_gets_its_own_error(served: RawServer):
    served.send([_request(31, "textDocument/hover", _position(0)), {"jsonrpc": "2.0", "method": "initialized"},
                 _request(32, "shutdown")])
    for msg_id in (31, 32):
        answer = served.response(msg_id)
        assert answer is not None and answer["error"]["code"] == INVALID_REQUEST, answer
    _assert_serving(served, "after a batch")  # the batched shutdown was not run


@pytest.mark.e2e
def test_bad_notifications_get_no_answer_and_break_nothing(served: RawServer):
    for notification in BAD_NOTIFICATIONS:
        served.send(notification)
    _assert_serving(served, "after bad notifications")
    assert served.wait_for(lambda m: isinstance(m, dict) and "method" not in m and m.get("id") is None,
                           timeout=0.5) is None
    shown = [m for m in served.seen if isinstance(m, dict) and m.get("method") == "window/showMessage"]
    assert not any("Error in server" in m["params"]["message"] for m in shown), shown


@pytest.mark.e2e
def test_no_python_exception_text_in_messages(served: RawServer):
    """Nothing the server sent (answers or popups) carries a Python exception's repr."""
    _assert_serving(served, "collect")
    texts = [json.dumps(m) for m in served.seen]
    for marker in ("KeyError", "TypeError", "ValueError", "unhashable", "Traceback", "not in literal",
                   "Error in server"):
        assert not any(marker in text for text in texts), (marker, texts)


@pytest.mark.e2e
def test_requests_before_initialize_and_a_second_initialize(tmp_path: Path):
    server = RawServer(tmp_path / "server.log")
    try:
        early = server.request(1, "textDocument/hover", _position(0), timeout=60)  # the first answer waits for start-up
        assert early is not None and early["error"]["code"] == SERVER_NOT_INITIALIZED, early
        assert _is_sentence(early["error"]["message"]) and "initialize" in early["error"]["message"]
        bad = server.request(2, "textDocument/hover", _position(-1))  # not initialized wins over bad params
        assert bad is not None and bad["error"]["code"] == SERVER_NOT_INITIALIZED, bad
        server.notify("textDocument/didOpen",
                      {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": TEXT}})
        answer = server.initialize(tmp_path)
        assert answer is not None and "capabilities" in answer["result"], answer
        dropped = server.request(3, "textDocument/hover", _position(0, 5))  # the early didOpen was dropped
        assert dropped is not None and dropped["error"]["code"] == INVALID_PARAMS, dropped
        assert "not open" in dropped["error"]["message"], dropped
        again = server.request(4, "initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        assert again is not None and again["error"]["code"] == INVALID_REQUEST, again
        assert "already initialized" in again["error"]["message"] and _is_sentence(again["error"]["message"])
        assert server.request(5, "shutdown") == {"jsonrpc": "2.0", "id": 5, "result": None}
        late = server.request(6, "textDocument/hover", _position(0))
        assert late is not None and late["error"]["code"] == INVALID_REQUEST, late
        assert "shut" in late["error"]["message"], late
        server.notify("exit")
        assert server.process.wait(timeout=10) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


@pytest.mark.e2e
def test_bad_initialize_params_are_answered_and_initialize_can_be_retried(tmp_path: Path):
    server = RawServer(tmp_path / "server.log")
    try:
        bad = server.request(1, "initialize", {"processId": "me", "capabilities": {}}, timeout=60)
        assert bad is not None and bad["error"]["code"] == INVALID_PARAMS, bad
        assert "processId" in bad["error"]["message"], bad
        assert server.initialize(tmp_path) is not None
        _assert_serving_uninitialized_doc(server)
    finally:
        assert server.close() == 0


def _assert_serving_uninitialized_doc(server: RawServer) -> None:
    answer = server.request("hover", "textDocument/hover", _position(0))
    # served: the document is just not open
    assert answer is not None and answer["error"]["code"] == INVALID_PARAMS, answer


@pytest.mark.e2e
def test_log_holds_no_user_code_above_debug(served: RawServer):
    """Bad messages' params (a document's text) stay out of the log at WARNING."""
    _assert_serving(served, "flush")
    log = served.log.read_text(errors="replace")
    assert "hunter2" not in log and "square" not in log, log


def _is_sentence(text: str) -> bool:
    """Words ending in a full stop, not a Python exception's `Name: detail`."""
    return " " in text and text.endswith(".") and re.match(r"\w+(Error|Exception)\b", text) is None


@pytest.mark.e2e
def test_info_log_holds_no_document_text(tmp_path: Path):
    """At the default INFO level the log says what happened, not what the documents and answers hold."""
    server = RawServer(tmp_path / "server.log", level="INFO")
    try:
        assert server.initialize(tmp_path) is not None
        server.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                                "text": SECRET + "\n" + TEXT}})
        answer = server.request(1, "textDocument/hover", _position(1, 5), timeout=30)
        assert answer is not None and "square" in json.dumps(answer["result"]), answer
    finally:
        server.close()
    log = server.log.read_text(errors="replace")
    assert "Sending data" not in log and "hunter2" not in log and "side * side" not in log, log


class _Written:
    """A pygls writer that keeps the messages the protocol writes."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.messages.append(json.loads(data.split(b"\r\n\r\n", 1)[1]))

    def close(self) -> None:
        pass


@pytest.fixture
def in_process() -> tuple[MidlineServer, _Written]:
    """A fresh, initialized MidlineServer whose protocol is fed parsed messages directly; the hover and
    didSave handlers fail the way a bug would."""
    server = MidlineServer()
    written = _Written()
    server.protocol.set_writer(written)

    @server.feature("textDocument/hover")
    def hover(ls, params):
        return {}[params.text_document.uri]  # KeyError: 'file:///...'

    @server.feature("textDocument/didSave")
    def did_save(ls, params):
        raise TypeError("unhashable type: 'list'")

    server.protocol.handle_message(_request(0, "initialize", {"processId": None, "capabilities": {}}))
    assert "result" in written.messages.pop()
    return server, written


def test_an_unexpected_exception_is_an_internal_error_sentence_and_a_logged_traceback(in_process, caplog):
    server, written = in_process
    with caplog.at_level("ERROR", logger="midline.server.protocol"):
        server.protocol.handle_message(_request(7, "textDocument/hover", _position(0)))
    [answer] = written.messages
    assert answer["id"] == 7 and answer["error"]["code"] == INTERNAL_ERROR and "data" not in answer["error"], answer
    message = answer["error"]["message"]
    assert _is_sentence(message) and "textDocument/hover" in message
    assert "KeyError" not in message and "file:" not in message
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]  # the traceback, for the log only
    logged = record.getMessage()
    assert "KeyError" in logged and "def hover" not in logged and "in hover" in logged
    # the exception's text (it may quote user code) waits for DEBUG
    assert "file:///workspace" not in record.getMessage()


def test_a_failing_notification_is_shown_once_as_a_sentence(in_process, caplog):
    server, written = in_process
    saved = {"jsonrpc": "2.0", "method": "textDocument/didSave", "params": {"textDocument": DOC}}
    with caplog.at_level("ERROR", logger="midline.server.protocol"):
        server.protocol.handle_message(saved)
        server.protocol.handle_message(saved)
    [shown] = written.messages
    assert shown["method"] == "window/showMessage" and _is_sentence(shown["params"]["message"]), shown
    assert "unhashable" not in shown["params"]["message"] and "textDocument/didSave" in shown["params"]["message"]
    assert ["TypeError" in r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [True, True]


@pytest.mark.e2e
def test_open_explanation_without_text_is_invalid_params(served: RawServer):
    for msg_id, arguments in (("no args", None), ("an object", [{"a": 1}])):
        params = {"command": "midline.openExplanation", **({"arguments": arguments} if arguments else {})}
        answer = served.request(msg_id, "workspace/executeCommand", params)
        assert answer is not None and answer["error"]["code"] == INVALID_PARAMS, answer
        assert "Markdown" in answer["error"]["message"], answer
    assert not [m for m in served.seen
                if isinstance(m, dict) and m.get("method") == "window/showMessage" and "'a'" in m["params"]["message"]]
