"""The outcome record (server/outcomes.py): off by default; when on, each shown answer's fate as a JSON line.

In process, the record is fed the real completer's answers (the tiny model); over stdio, the real server puts the
accept command on its items and an editor's accept, typing-through and dismissal land in the file.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lsprotocol import types

from midline.server.completion import Completer, Completion
from midline.server.config import Config
from midline.server.documents import Document
from midline.server.outcomes import OutcomeLog, data_folder

from ..lsp_client import inline, open_document, running_server, status
from tests.e2e.test_server import CODE, COMMENT_LINE, SETTINGS

LINE_END = CODE.index("by \n") + len("by ")  # the end of the comment: where the test model's noise is valid Python


def config(path: Path, record: bool = True) -> Config:
    outcomes = {"record": record, "file": str(path)}
    return Config.from_json({"debounceMs": 0, "maxNewTokens": 16, "outcomes": outcomes})


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


class Session:
    """A completer and an outcome record sharing settings; `ask` notes each answer as the server does."""

    def __init__(self, engine, settings: Config, tmp_path: Path) -> None:
        root = tmp_path / "workspace"  # the same name in every test: the prompt, and the test model's noise, the same
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.completer = Completer(engine, settings, self.executor, root=str(root))
        self.log = OutcomeLog(self.completer.settings)
        self.uri = (root / "circle.py").as_uri()

    def ask(self, text: str, offset: int) -> tuple[Completion, str | None]:
        doc = Document(self.uri, "python", 1, text)
        completion = asyncio.run(self.completer.complete(doc, offset))
        texts = [completion.suggestion.text] if completion.suggestion is not None else []  # the first, as shown
        if completion.typed_through:
            return completion, self.log.continued(doc, offset, texts)
        if texts:
            return completion, self.log.shown(doc, offset, texts, completion.prompt, 12.5, "tiny")
        self.log.empty(doc)
        return completion, None


@pytest.fixture
def session(tiny_engine, tmp_path):
    made = Session(tiny_engine, config(tmp_path / "data" / "outcomes.jsonl"), tmp_path)
    yield made
    made.executor.shutdown()


def test_nothing_is_kept_or_written_while_it_is_off(tiny_engine, tmp_path):
    assert Config().outcomes.record is False  # off by default
    off = Session(tiny_engine, config(tmp_path / "outcomes.jsonl", record=False), tmp_path)
    completion, answer = off.ask(CODE, LINE_END)
    assert completion.suggestion is not None and answer is None and off.log.showing(off.uri) is None
    off.log.flush()
    assert not (tmp_path / "outcomes.jsonl").exists() and off.log.status() == {"record": False}
    off.executor.shutdown()


def test_a_dismissed_answer_is_written_at_the_next_decision(session, tmp_path):
    path = tmp_path / "data" / "outcomes.jsonl"
    first, answer = session.ask(CODE, LINE_END)
    assert first.suggestion is not None and answer is not None and session.log.showing(session.uri) == answer
    elsewhere = CODE.index("return") + len("return ")
    session.ask(CODE, elsewhere)  # a new answer: the first is decided, written one decision later
    assert records(path) == []
    session.log.close(session.uri)
    written = records(path)
    assert [r["outcome"] for r in written] == ["dismissed"] * len(written) and written[0]["id"] == answer
    first_record = written[0]
    assert first_record["suggestions"] == [first.suggestion.text] and first_record["accepted"] is None
    assert first_record["typed"] == 0 and first_record["language"] == "python"
    ctx = first.prompt.context
    assert first_record["position"] == ctx.position and first_record["hole"] == ctx.hole.value
    assert len(first_record["prompt_sha256"]) == 64 and first_record["latency_ms"] == 12.5
    assert first_record["model"] == "tiny"
    assert "def area" not in json.dumps(written)  # the prompt's hash, never the prompt
    assert session.log.status()["dismissed"] == len(written) and session.log.status()["acceptanceRate"] == 0.0


def test_typing_through_then_moving_on_is_typed(session, tmp_path):
    path = tmp_path / "data" / "outcomes.jsonl"
    shown, answer = session.ask(CODE, LINE_END)
    text = shown.suggestion.text
    assert len(text) > 2
    typed = CODE[:LINE_END] + text[:2] + CODE[LINE_END:]
    rest, same = session.ask(typed, LINE_END + 2)
    assert rest.typed_through and same == answer
    session.ask(typed + "x = 1\n", len(typed) + 6)  # somewhere else: decided
    session.log.flush()
    assert [(r["id"], r["outcome"], r["typed"]) for r in records(path)][0] == (answer, "typed", 2)


def test_an_accept_counts_even_after_the_next_request(session, tmp_path):
    """The editor may send its next request before the accepted item's command: the outcome is still `accepted`."""
    path = tmp_path / "data" / "outcomes.jsonl"
    shown, answer = session.ask(CODE, LINE_END)
    text = shown.suggestion.text
    accepted = CODE[:LINE_END] + text + CODE[LINE_END:]
    session.ask(accepted, LINE_END + len(text))  # the request after the insert comes first
    assert session.log.accepted(answer, 0) and not session.log.accepted(answer, 0)  # once
    first = records(path)[0]
    assert first["id"] == answer and first["outcome"] == "accepted" and first["accepted"] == 0
    assert session.log.status()["accepted"] == 1 and session.log.status()["acceptanceRate"] == 1.0


def test_an_accept_after_typing_names_the_suggestion_it_continues(session, tmp_path):
    path = tmp_path / "data" / "outcomes.jsonl"
    shown, answer = session.ask(CODE, LINE_END)
    text = shown.suggestion.text
    typed = CODE[:LINE_END] + text[:1] + CODE[LINE_END:]
    rest, same = session.ask(typed, LINE_END + 1)
    assert same == answer and rest.suggestion.text == text[1:]
    assert session.log.accepted(answer, 0)
    assert [(r["outcome"], r["accepted"], r["typed"]) for r in records(path)] == [("accepted", 0, 1)]


def test_turning_it_off_forgets_what_was_not_written(session, tmp_path):
    _, answer = session.ask(CODE, LINE_END)
    session.completer.config = Config.from_json({"outcomes": {"record": False}}, base=session.completer.config)
    session.log.flush()
    assert not session.log.accepted(answer, 0) and records(tmp_path / "data" / "outcomes.jsonl") == []


def test_an_unwritable_file_is_said_once(tiny_engine, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    said: list[str] = []
    made = Session(tiny_engine, config(blocker / "outcomes.jsonl"), tmp_path)
    made.log.report = said.append
    for _ in range(2):
        _, answer = made.ask(CODE, LINE_END)
        made.log.accepted(answer, 0)
    assert len(said) == 1 and "cannot write the outcome record" in said[0] and made.log.status()["error"]
    made.executor.shutdown()


def test_the_data_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert data_folder() == tmp_path / "midline"
    assert OutcomeLog(Config()).path == tmp_path / "midline" / "outcomes.jsonl"


@pytest.mark.asyncio
@pytest.mark.e2e
async def test_the_server_records_an_accept_through_the_items_command(tiny_model_dir, tmp_path):
    path, root = tmp_path / "outcomes.jsonl", tmp_path / "workspace"  # (a fixed name: the same prompt in every run)
    root.mkdir()
    settings = {"model": str(tiny_model_dir), **SETTINGS, "outcomes": {"record": True, "file": str(path)}}
    async with running_server(settings, root) as (client, result):
        assert "midline.accepted" in result.capabilities.execute_command_provider.commands
        uri = (root / "circle.py").as_uri()
        open_document(client, uri, CODE)
        column = len(CODE.split("\n")[COMMENT_LINE])
        items = (await inline(client, uri, COMMENT_LINE, column)).items
        assert items and all(item.command.command == "midline.accepted" for item in items)
        answer = items[0].command.arguments[0]
        assert [list(item.command.arguments) for item in items] == [[answer, k] for k in range(len(items))]
        command = items[0].command
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command.command, command.arguments))
        written = records(path)
        assert [(r["id"], r["outcome"], r["accepted"]) for r in written] == [(answer, "accepted", 0)]
        assert written[0]["suggestions"][0] == items[0].insert_text
        assert (await status(client))["outcomes"]["acceptanceRate"] == 1.0

        again = (await inline(client, uri, COMMENT_LINE, column)).items  # the cached answer, shown again: a new id
        assert again and again[0].command.arguments[0] != answer
        client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
        await status(client)  # a round trip: the close is handled
        assert [r["outcome"] for r in records(path)] == ["accepted", "dismissed"]


@pytest.mark.asyncio
@pytest.mark.e2e
async def test_the_server_adds_no_command_and_writes_nothing_by_default(tiny_model_dir, tmp_path):
    settings = {"model": str(tiny_model_dir), **SETTINGS, "outcomes": {"file": str(tmp_path / "o.jsonl")}}
    root = tmp_path / "workspace"
    root.mkdir()
    async with running_server(settings, root) as (client, _):
        uri = (root / "circle.py").as_uri()
        open_document(client, uri, CODE)
        items = (await inline(client, uri, COMMENT_LINE, len(CODE.split("\n")[COMMENT_LINE]))).items
        assert items and all(item.command is None for item in items)
        assert (await status(client))["outcomes"] == {"record": False}
    assert not (tmp_path / "o.jsonl").exists()
