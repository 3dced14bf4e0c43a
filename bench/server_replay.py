"""Type a file into the running server, as an editor does, and time the ghost text.

Starts `python -m midline.server` over stdio (the shipped model unless --model is given) with its default settings
(debounce, cache, typing-through), opens a Python file with a region of its longest function cut out (the region
`bench/keystroke_replay.py` types), and types the region back at a steady speed. After each character the client
does what VS Code does: it sends the change, cancels its previous inline-completion request if that is still
waiting, and sends an automatic inline-completion request. Prints how the requests ended (a suggestion, an empty
answer, cancelled by the next keystroke), the time from keystroke to ghost text, and the server's own counters
(`midline.status`: model calls, cache hits, typed through, cancelled generations).

    python bench/server_replay.py --file server/completion.py --cps 5
    python bench/server_replay.py --cps 5 --settings '{"debounceMs": 0}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pygls.workspace.position_codec import PositionCodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.keystroke_replay import percentile, region  # noqa: E402
from midline.server.documents import Document  # noqa: E402
from tests.lsp_client import inline, open_document, running_server, status  # noqa: E402

COUNTERS = ("requests", "modelCalls", "cacheHits", "typedThrough", "cancelled", "timeouts", "lowConfidence")


@dataclass
class Answer:
    """How one keystroke's request ended, and when (ms after the keystroke)."""

    outcome: str  # "shown" | "empty" | "cancelled" | "error: ..."
    ms: float


async def type_region(client, doc: Document, offset: int, typed: str, cps: float) -> list[Answer]:
    """Type `typed` into `doc` (the client's copy) at `offset`, `cps` characters a second; every keystroke's request
    and how it ended."""
    answers: list[Answer] = []
    codec = PositionCodec()  # UTF-16, the LSP default
    previous: tuple[str, asyncio.Future] | None = None

    def record(started: float):
        def done(future: asyncio.Future) -> None:
            ms = (time.perf_counter() - started) * 1000
            if future.cancelled() or isinstance(future.exception(), JsonRpcRequestCancelled):
                answers.append(Answer("cancelled", ms))
            elif future.exception() is not None:  # the server failed this request: counted, and printed at the end
                answers.append(Answer(f"error: {future.exception()}", ms))
            else:
                items = future.result().items if future.result() else []
                answers.append(Answer("shown" if items and items[0].insert_text else "empty", ms))
        return done

    due = time.perf_counter()
    for i, char in enumerate(typed):
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        due += 1 / cps
        if previous is not None and not previous[1].done():
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=previous[0]))
        at = doc.position_at(offset, codec)
        change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text=char)
        doc.apply_change(change, codec)
        doc.version += 1
        offset += 1
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version),
            content_changes=[change],
        ))
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=doc.uri), position=doc.position_at(offset, codec),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        request_id = f"keystroke-{i}"
        future = asyncio.ensure_future(client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params,
                                                                          request_id))
        future.add_done_callback(record(time.perf_counter()))
        previous = (request_id, future)
    if previous is not None:
        await asyncio.gather(previous[1], return_exceptions=True)
    await asyncio.sleep(0.1)  # let the last done-callback run
    return answers


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--file", type=Path, default=ROOT / "server" / "completion.py",
                        help="Python file to type (default: %(default)s)")
    parser.add_argument("--chars", type=int, default=300,
                        help="at most this many characters, whole lines where possible (default: %(default)s)")
    parser.add_argument("--cps", type=float, default=5.0,
                        help="typing speed, characters a second (default: %(default)s, about 60 words a minute)")
    parser.add_argument("--settings", type=json.loads, default={},
                        help='server settings over the defaults, as JSON, e.g. \'{"debounceMs": 0}\'')
    args = parser.parse_args()

    source = args.file.read_text(encoding="utf-8")
    start, end = region(source, args.chars)
    typed, text = source[start:end], source[:start] + source[end:]
    settings = {"device": args.device, **({"model": args.model} if args.model else {}), **args.settings}
    with tempfile.TemporaryDirectory() as tmp:
        async with running_server(settings, Path(tmp)) as (client, _):
            doc = Document((Path(tmp) / args.file.name).as_uri(), "python", 1, text)
            open_document(client, doc.uri, text)
            at = doc.position_at(start, PositionCodec())
            await asyncio.wait_for(inline(client, doc.uri, at.line, at.character), 600)  # loads the model: not timed
            before = await status(client)
            began = time.perf_counter()
            answers = await type_region(client, doc, start, typed, args.cps)
            wall = time.perf_counter() - began
            after = await status(client)

    shown = [a.ms for a in answers if a.outcome == "shown"]
    answered = [a.ms for a in answers if a.outcome != "cancelled"]
    count = {o: sum(a.outcome == o for a in answers) for o in ("shown", "empty", "cancelled")}
    print(f"typed {len(typed)} characters of {args.file.name} at {args.cps:g} a second ({wall:.0f} s) "
          f"into `midline serve` ({after['model']}, {after['device']}, {after['decodePath']}, "
          f"settings {json.dumps(args.settings)}); "
          f"{platform.machine()}, Python {platform.python_version()}\n")
    print("| keystrokes | shown | empty | cancelled by the next keystroke | ms to ghost text p50 | p95 "
          "| ms to any answer p50 | p95 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    p = lambda values, q: f"{percentile(values, q):.0f}" if values else "-"  # noqa: E731
    print(f"| {len(answers)} | {count['shown']} | {count['empty']} | {count['cancelled']} "
          f"| {p(shown, 50)} | {p(shown, 95)} | {p(answered, 50)} | {p(answered, 95)} |\n")
    for error in sorted({a.outcome for a in answers if a.outcome.startswith("error")}):
        print(f"{sum(a.outcome == error for a in answers)} requests failed: {error}")
    print("| server: " + " | ".join(COUNTERS) + " |")
    print("|" + "---:|" * (len(COUNTERS) + 1))
    print("| | " + " | ".join(str(after[c] - before[c]) for c in COUNTERS) + " |")


if __name__ == "__main__":
    asyncio.run(main())
