"""Every code action and hover, end to end: the real server process driven as an LSP client.

Starts `python -m midline.server` over stdio (the shipped model unless --model is given), opens a small
Python module in a temporary workspace, lists the code actions at a buggy function and at a seed comment,
resolves Explain, Fix, Generate tests and Code from a comment, then hovers a function name before and
after its background explanation. Prints a plain-text transcript: what was offered, what the model
answered, and the wall time of each request.

    python bench/actions_transcript.py
    python bench/actions_transcript.py --model DIR --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from lsprotocol import types

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.lsp_client import open_document, running_server, status  # noqa: E402

MODULE = '''\
"""Small helpers for summarising lists of numbers."""

from __future__ import annotations


def mean(values: list[float]) -> float:
    """The arithmetic mean of `values`."""
    return sum(values) / len(values)


def clamp(value: float, low: float, high: float) -> float:
    """`value` limited to the range low..high."""
    return max(low, min(value, high))


def count_above(values: list[float], threshold: float) -> int:
    """How many of `values` are greater than `threshold`."""
    count = 0
    for i in range(1, len(values)):
        if values[i] > threshold:
            count += 1
    return count


# Write a function that takes a list of numbers and returns only the even ones
'''
LINES = MODULE.split("\n")
TIMEOUT_S = 600  # per request: a slow CPU is fine


def row(prefix: str) -> int:
    return next(i for i, line in enumerate(LINES) if line.startswith(prefix))


def show(text: str) -> None:
    print(textwrap.indent(text.rstrip("\n") or "(empty)", "    "))


async def timed(awaitable):
    start = time.monotonic()
    result = await asyncio.wait_for(awaitable, TIMEOUT_S)
    return result, time.monotonic() - start


async def list_actions(client, uri: str, line: int, character: int, diagnostics=()) -> list[types.CodeAction]:
    position = types.Position(line, character)
    params = types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(position, position),
        context=types.CodeActionContext(diagnostics=list(diagnostics)),
    )
    listed, seconds = await timed(client.text_document_code_action_async(params))
    listed = listed or []
    print(f"\n== codeAction at line {line + 1}: {LINES[line].strip()!r} ({seconds:.2f}s)")
    for action in listed:
        print(f"  - {action.title}  [{action.kind}]")
    return listed


def edits_of(edit: types.WorkspaceEdit) -> list[tuple[str, types.TextEdit]]:
    """(uri, edit) pairs, from either form of WorkspaceEdit."""
    if edit.document_changes:
        return [(c.text_document.uri, e) for c in edit.document_changes if isinstance(c, types.TextDocumentEdit)
                for e in c.edits]
    return [(uri, e) for uri, edits in (edit.changes or {}).items() for e in edits]


async def resolve(client, action: types.CodeAction) -> types.CodeAction:
    client.messages.clear()
    resolved, seconds = await timed(client.code_action_resolve_async(action))
    print(f"\n== resolve {action.title!r} ({seconds:.1f}s)")
    if resolved.command is not None:  # an explanation: the markdown is the command's argument
        print(f"  command {resolved.command.command}, markdown:")
        show(str(resolved.command.arguments[0]))
    elif resolved.edit is not None:
        for uri, edit in edits_of(resolved.edit):
            start, end = edit.range.start, edit.range.end
            print(f"  edit {uri.removeprefix('file://')} lines {start.line + 1}..{end.line + 1}, new text:")
            show(edit.new_text)
    else:
        reason = client.messages[-1].message if client.messages else "(no message)"
        print(f"  not offered: {reason.removeprefix('midline: ')}")
        last = (await status(client))["actions"]
        print(f"  the model's raw answer ({last['lastFinish']}):")
        show(last["lastRaw"])
    return resolved


async def hover(client, uri: str, line: int, character: int) -> None:
    params = types.HoverParams(text_document=types.TextDocumentIdentifier(uri=uri),
                               position=types.Position(line, character))
    answer, seconds = await timed(client.text_document_hover_async(params))
    print(f"\n== hover at line {line + 1}:{character + 1} ({seconds:.2f}s)")
    show(answer.contents.value if answer else "(no hover)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    args = parser.parse_args()
    settings: dict = {"device": args.device, "actions": {"timeoutMs": TIMEOUT_S * 1000}}
    if args.model:
        settings["model"] = str(Path(args.model).resolve())
    began = time.monotonic()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tests").mkdir()
        path = root / "numbers.py"
        path.write_text(MODULE)
        uri = path.as_uri()
        print(f"settings: {settings}")
        print(f"workspace: {root}, file numbers.py:")
        show("\n".join(f"{i + 1:3} {line}" for i, line in enumerate(LINES[:-1])))

        async with running_server(settings, root) as (client, _):
            open_document(client, uri, MODULE)
            start = time.monotonic()
            while not (now := await status(client))["ready"]:
                await asyncio.sleep(0.1)
            print(f"\nmodel {now['model']} on {now['device']}, ready after {time.monotonic() - start:.1f}s")

            buggy = row("def count_above")
            loop = row("    for i in range(1")
            failing = types.Diagnostic(
                range=types.Range(types.Position(loop, 4), types.Position(loop, len(LINES[loop]))),
                message="count_above([5.0, 1.0], 2.0) returned 0, expected 1",
            )
            at_bug = await list_actions(client, uri, buggy, 4, [failing])
            at_clamp = await list_actions(client, uri, row("def clamp"), 4)
            at_seed = await list_actions(client, uri, row("# Write a function"), 2)

            def pick(listed, kind):
                return next(a for a in listed if a.kind == kind)

            await resolve(client, pick(at_bug, "refactor.midline.explain"))
            await resolve(client, pick(at_bug, "quickfix.midline.fix"))
            await resolve(client, pick(at_clamp, "refactor.midline.tests"))
            await resolve(client, pick(at_seed, "refactor.midline.fromComment"))

            # Hover answers at once with the signature, and queues an explanation for when the server is idle.
            name = row("def mean")
            await hover(client, uri, name, 5)
            start, explained = time.monotonic(), (await status(client))["hover"]["explained"]
            while (await status(client))["hover"]["explained"] <= explained and time.monotonic() - start < TIMEOUT_S:
                await asyncio.sleep(0.2)
            print(f"\n(background explanation computed after {time.monotonic() - start:.1f}s)")
            await hover(client, uri, name, 5)

            final = await status(client)
            print(f"\nactions: {final['actions']['calls']} model calls, {final['actions']['timeouts']} timeouts; "
                  f"hover: {final['hover']}")
    print(f"total: {time.monotonic() - began:.1f}s")


if __name__ == "__main__":
    asyncio.run(main())
