"""JSON-RPC as midline speaks it: every request with an id gets an answer, and every error is a sentence.

pygls parses a message while reading it and drops anything it cannot structure (bad params, a batch,
`"jsonrpc": "1.0"`) without an answer, so the client waits forever. Here the reader only parses JSON;
`handle_message` checks the message and answers what is wrong with the LSP error codes: ParseError,
InvalidRequest, InvalidParams (naming the field), ServerNotInitialized, and an InternalError whose text
is a sentence (the traceback goes to the log). Notifications that are wrong are logged and dropped.
"""

from __future__ import annotations

import enum
import logging
import re
import traceback
import typing
import uuid
from concurrent.futures import Future
from functools import cache, partial
from typing import Any, Protocol, TypeGuard, runtime_checkable

import attrs
import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError
from lsprotocol import types, validators
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcMethodNotFound
from pygls.protocol import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    LanguageServerProtocol,
    _dict_to_object,
    default_converter,
    lsp_method,
)

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_NOT_INITIALIZED = -32002
REQUEST_CANCELLED = -32800


def strict_converter() -> cattrs.Converter:
    """pygls's converter, but a string where a number belongs (or 1.5 for a line) is an error, not converted."""
    converter = default_converter()
    for kind, accepts in ((int, (int,)), (float, (int, float)), (str, (str,)), (bool, (bool,))):
        converter.register_structure_hook(kind, partial(_exactly, accepts))
    return converter


def _exactly(accepts: tuple[type, ...], value: Any, kind: type) -> Any:
    """`value` if it is a JSON value of `kind` (no bool for a number); an enum (IntEnum, str Enum) by its value."""
    if isinstance(value, accepts) and (not isinstance(value, bool) or bool in accepts):
        return value if kind in (int, float, str, bool) else kind(value)
    raise TypeError(f"expected {accepts[-1].__name__}, got {_json_kind(value)}")


class RejectedMessage(Exception):
    """A message that is answered with an error (if it has an id) instead of being handled."""

    def __init__(self, code: int, message: str, msg_id: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.msg_id = code, message, msg_id


@runtime_checkable
class ReportsErrors(Protocol):
    """A server that tells the user when a notification's handler failed (midline's server does)."""

    def report_internal_error(self, method: str) -> None: ...


class MidlineProtocol(LanguageServerProtocol):
    """LanguageServerProtocol that answers every request, checks messages itself, and never shows Python errors."""

    def __init__(self, server, converter) -> None:
        super().__init__(server, converter)
        self.initialize_received = False

    def structure_message(self, data: dict[str, Any]) -> dict[str, Any]:
        """Leave the parsed JSON as it is: `handle_message` checks and structures the whole message."""
        return data

    def handle_message(self, message: Any) -> None:
        """Check, structure and dispatch one parsed message; never raises."""
        try:
            self._dispatch(message)
        except RejectedMessage as rejected:
            self._reply_error(rejected.msg_id, rejected.code, rejected.message)
        except Exception:  # a bug here must not stop the reader
            log.exception("midline could not handle a message")

    def parse_failed(self, error: BaseException) -> None:
        """The reader could not parse a message as JSON: answer ParseError (its id is unknown: null)."""
        log.warning("unreadable message: %s", type(error).__name__)
        self._reply_error(None, PARSE_ERROR, "The message is not valid UTF-8 JSON; the server could not read it.")

    # -- checking -----------------------------------------------------------------------------------

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, list):
            self._reject_batch(message)
            return
        if not isinstance(message, dict):
            raise RejectedMessage(INVALID_REQUEST, f"A message must be a JSON object, not {_json_kind(message)}.")
        if "method" not in message and ("result" in message or "error" in message):
            self._handle_client_response(message)
        elif "id" in message:
            self._check_request(message)
        else:
            self._check_notification(message)

    def _check_request(self, message: dict[str, Any]) -> None:
        msg_id, method = message["id"], message.get("method")
        if not _is_id(msg_id):
            raise RejectedMessage(
                INVALID_REQUEST, f"A request id must be an integer or a string, not {_json_kind(msg_id)}."
            )
        if message.get("jsonrpc") != "2.0":
            raise RejectedMessage(
                INVALID_REQUEST, 'Set "jsonrpc": "2.0" in every message; midline speaks JSON-RPC 2.0 only.', msg_id
            )
        if not isinstance(method, str):
            raise RejectedMessage(
                INVALID_REQUEST, "A request needs a method name (a string), and this one has none.", msg_id
            )
        if self._shutdown:
            raise RejectedMessage(
                INVALID_REQUEST,
                f"The server is shutting down and takes no more requests ({method}); send exit.",
                msg_id,
            )
        if not self.initialize_received and method != types.INITIALIZE:
            raise RejectedMessage(
                SERVER_NOT_INITIALIZED, f"The server is not initialized yet; send initialize before {method}.", msg_id
            )
        if self.initialize_received and method == types.INITIALIZE:
            raise RejectedMessage(
                INVALID_REQUEST, "The server is already initialized; send initialize only once per session.", msg_id
            )
        kind: type | None = self.get_message_type(method)  # `type`, not pygls's type[Any]: mypy#11470
        if kind is not None and not _is_request(kind):
            raise RejectedMessage(INVALID_REQUEST, f"{method} is a notification; send it without an id.", msg_id)
        if kind is None:  # a method without an LSP type: its handler (if any) gets the params as they are
            self._handle_unknown_request(message)
            return
        structured = self._structure(message, kind, msg_id, method)
        if method == types.INITIALIZE:
            self.initialize_received = True
        super().handle_message(structured)

    def _check_notification(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            log.warning(
                "ignored a message without an id that is not a JSON-RPC 2.0 notification (its method is %s)",
                _json_kind(method),
            )
            return
        if not self.initialize_received and method != types.EXIT:
            log.warning("ignored %s: the server is not initialized yet", method)
            return
        kind: type | None = self.get_message_type(method)
        if kind is not None and _is_request(kind):
            log.warning("ignored %s: it is a request, and came without an id", method)
            return
        try:
            structured = self._structure(message, kind, None, method) if kind is not None else _untyped(message)
        except RejectedMessage as rejected:
            log.warning("ignored %s: %s", method, rejected.message)
            return
        super().handle_message(structured)

    def _structure(self, message: dict[str, Any], kind: type, msg_id: Any, method: str) -> Any:
        """`message` as its lsprotocol type; InvalidParams naming each wrong field."""
        params = message.get("params")
        if "params" in message and not isinstance(params, (dict, list)) and params is not None:
            raise RejectedMessage(
                INVALID_PARAMS,
                f"Invalid params for {method}: params must be an object, not {_json_kind(params)}.",
                msg_id,
            )
        try:
            return self._converter.structure(message, kind)
        except Exception as exc:  # cattrs groups every wrong field; anything else is described generally
            problems = "; ".join(dict.fromkeys(describe(exc, "")))  # dedup, keep order
            raise RejectedMessage(INVALID_PARAMS, f"Invalid params for {method}: {problems}.", msg_id) from None

    def _reject_batch(self, batch: list[Any]) -> None:
        """LSP has no batches: each request in one gets InvalidRequest; with none, one error with id null."""
        text = "Batches (JSON arrays of messages) are not supported in LSP; send each message on its own."
        ids = [m["id"] for m in batch if isinstance(m, dict) and _is_id(m.get("id")) and "method" in m]
        for msg_id in ids or [None]:
            self._reply_error(msg_id, INVALID_REQUEST, text)

    def _handle_unknown_request(self, message: dict[str, Any]) -> None:
        method = message["method"]
        if method not in self.fm.features and method not in self.fm.builtin_features:
            raise RejectedMessage(METHOD_NOT_FOUND, _no_method(method), message["id"])
        super().handle_message(_untyped(message))

    def _handle_client_response(self, message: dict[str, Any]) -> None:
        """A response to one of the server's requests; one it cannot read fails that request's future."""
        try:
            response = super().structure_message(message)
            if message.get("jsonrpc") != "2.0":
                raise ValueError("not JSON-RPC 2.0")
        except Exception as exc:
            log.warning("ignored an unreadable response to request %s", message.get("id"))
            msg_id = message.get("id")
            future = self._request_futures.pop(msg_id, None) if _is_id(msg_id) else None
            if future is not None and not future.done():
                future.set_exception(
                    JsonRpcException(f"The client's response could not be read ({type(exc).__name__}).", INVALID_PARAMS)
                )
            return
        super().handle_message(response)

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams):
        """pygls's command dispatch, with a sentence for an unknown command."""
        if params.command not in self.fm.commands:
            known = ", ".join(sorted(self.fm.commands))
            raise JsonRpcInvalidParams(f"midline has no command {params.command!r}; its commands are {known}.")
        return (yield from super().lsp_workspace__execute_command(params))

    # -- answering ----------------------------------------------------------------------------------

    def _reply_error(self, msg_id: Any, code: int, message: str) -> None:
        log.warning("answered request %s with error %d: %s", msg_id, code, message)
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})

    def _handle_request(self, msg_id: Any, method_name: str, params: Any) -> None:
        """Run the handler; its result, or an error that is a sentence, goes back as the answer."""
        try:
            handler = self._get_handler(method_name)
        except JsonRpcMethodNotFound:
            self._reply_error(msg_id, METHOD_NOT_FOUND, _no_method(method_name))
            return
        self._ctx_msg_id.set(msg_id)
        callback = partial(self._send_handler_result, msg_id=msg_id, method=method_name)
        try:
            self._execute_handler(msg_id, handler, callback, args=(params,))
        except Exception:
            failed: Future[Any] = Future()
            failed.set_exception(RuntimeError("the handler could not be started"))
            callback(failed)

    def _send_handler_result(self, future: Future[Any], *, msg_id: Any, method: str = "the request") -> None:
        self._request_futures.pop(msg_id, None)
        if future.cancelled():
            self._send_response(
                msg_id, error=types.ResponseError(REQUEST_CANCELLED, f"The {method} request was cancelled.")
            )
            return
        error = future.exception()
        if method == types.INITIALIZE and error is not None:
            self.initialize_received = False  # a failed initialize may be sent again
        if error is None:
            self._send_response(msg_id, result=future.result())
        elif isinstance(error, JsonRpcException):
            log.warning("answered %s (request %s) with error %d: %s", method, msg_id, error.code, error.message)
            self._send_response(msg_id, error=types.ResponseError(error.code, _sentence(error.message)))
        else:
            log_failure(f"{method} (request {msg_id})", error)
            self._send_response(msg_id, error=types.ResponseError(INTERNAL_ERROR, internal_error_text(method)))

    def _handle_notification(self, method_name: str, params: Any) -> None:
        if method_name == types.CANCEL_REQUEST:
            self._handle_cancel_notification(params.id)
            return
        try:
            handler = self._get_handler(method_name)
        except JsonRpcMethodNotFound:
            log.log(
                logging.DEBUG if method_name.startswith("$/") else logging.WARNING,
                "ignored the unknown notification %s",
                method_name,
            )
            return
        self._execute_handler(
            str(uuid.uuid4()), handler, partial(self._notification_done, method=method_name), args=(params,)
        )

    def _notification_done(self, future: Future[Any], *, method: str) -> None:
        if future.cancelled() or (error := future.exception()) is None:
            return
        if isinstance(error, JsonRpcException):
            log.warning("%s was not applied: %s", method, error.message)
        else:
            log_failure(method, error)
            if isinstance(self._server, ReportsErrors):
                self._server.report_internal_error(method)


def log_failure(what: str, error: BaseException) -> None:
    """A handler's unexpected exception: its type and traceback at ERROR, its message (it may quote the
    user's code) only at DEBUG."""
    frames = "".join(traceback.format_tb(error.__traceback__))
    log.error("%s failed with %s (a bug in midline); traceback:\n%s", what, type(error).__name__, frames.rstrip())
    log.debug("%s: %s: %s", what, type(error).__name__, error)


def _no_method(method: str) -> str:
    return f"midline does not handle the method {method}; check its name, or whether the client needs another server."


def internal_error_text(method: str) -> str:
    return (
        f"midline failed on {method} because of a bug in midline; please report it with the server log,"
        " which has the details."
    )


def describe(
    exc: BaseException, path: str, kind: Any = None, owner: type | None = None, field: str | None = None
) -> list[str]:
    """What is wrong with a structured value, one phrase per wrong field: `position.line must be ...`."""
    if isinstance(exc, ClassValidationError):
        found, loose = exc.group_exceptions()
        return [
            p
            for sub, note in found
            for p in describe(sub, _join(path, _camel(note.name)), note.type, exc.cl, note.name)
        ] + [p for sub in loose for p in describe(sub, path)]
    if isinstance(exc, IterableValidationError):
        items, rest = exc.group_exceptions()
        return [p for sub, item in items for p in describe(sub, f"{path}[{item.index}]", item.type)] + [
            p for sub in rest for p in describe(sub, path)
        ]
    name = _shown(path)
    if isinstance(exc, KeyError):
        return [f"{name} is required"]
    ranged = re.match(r"\w+\.(\w+) should be in range \[(-?\d+):(\d+)\]", str(exc))
    if isinstance(exc, ValueError) and ranged:  # lsprotocol's (u)integer validators, raised for the whole object
        field_path = _shown(_join(path, _camel(ranged.group(1))))
        sign = "a non-negative" if ranged.group(2) == "0" else "an"
        return [f"{field_path} must be {sign} integer no larger than {ranged.group(3)}"]
    validator = (
        attrs.fields_dict(owner)[field].validator
        if owner is not None and attrs.has(owner) and field in attrs.fields_dict(owner)
        else None
    )
    return [f"{name} must be {_expected(kind, validator)}"]


def _expected(kind: Any, validator: Any) -> str:
    """`kind` in words, as a JSON value."""
    if validator is validators.uinteger_validator:
        return "a non-negative integer"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:
        words = [_expected(arg, None) for arg in args if arg is not type(None)]
        return " or ".join(dict.fromkeys(words)) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in kind)
    if origin in (list, tuple, typing.Sequence) or kind in (list, tuple):
        return "an array"
    if origin is dict or kind is dict or attrs.has(kind):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, "a valid value")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _shown(path: str) -> str:
    """The path as the client wrote it, relative to params (`position.line`); `params` itself for the root."""
    return path.removeprefix("params.") or "the message"


def _camel(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.title() for part in rest)


def _is_id(value: Any) -> TypeGuard[int | str]:
    """Whether `value` can be a request's id: an integer (not a boolean) or a string."""
    return type(value) in (int, str)


@cache
def _is_request(kind: type) -> bool:
    """Whether an lsprotocol message type is a request (it has an id), looked up once per type."""
    return "id" in attrs.fields_dict(kind)


def _json_kind(value: Any) -> str:
    """What a JSON value is, with its article: `a string`, `null`."""
    if value is None:
        return "null"
    for kind, word in (
        (bool, "a boolean"),
        (int, "a number"),
        (float, "a number"),
        (str, "a string"),
        (list, "an array"),
        (dict, "an object"),
    ):
        if isinstance(value, kind):
            return word
    return type(value).__name__


def _sentence(text: str) -> str:
    """An error text as a sentence: capitalized, with a full stop."""
    text = text.strip() or "The request failed"
    head = text if text.startswith("midline") else text[0].upper() + text[1:]  # the name stays lowercase
    return head + ("" if text.endswith((".", "!", "?")) else ".")


def _untyped(message: dict[str, Any]) -> Any:
    """A message for a method that lsprotocol has no type for, as pygls's generic message objects."""
    params = _dict_to_object(message.get("params"))
    if "id" in message:
        return JsonRPCRequestMessage(id=message["id"], method=message["method"], jsonrpc="2.0", params=params)
    return JsonRPCNotification(method=message["method"], jsonrpc="2.0", params=params)


def quiet_pygls_logs() -> None:
    """Below DEBUG, pygls logs only its warnings and errors. At INFO it logs whole messages (every reply, with
    the suggestion's text; the initialize params; the client's responses) and a line per feature it registers;
    an editor keeps each line (Neovim as an error), so the user's code would end up in the editor's logs."""
    pygls = logging.getLogger("pygls")
    if not pygls.isEnabledFor(logging.DEBUG):
        pygls.setLevel(logging.WARNING)


def parse_failure(error: BaseException, source: Any) -> bool:
    """Whether pygls's reader reported `error` because a message was not JSON (its loop reports with
    JsonRpcException)."""
    return source is JsonRpcException and isinstance(error, (ValueError, RecursionError))
