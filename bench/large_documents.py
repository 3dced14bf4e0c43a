"""Keystrokes and completions in large documents: a 10 MB Python file, and a Python file with one 1 MB line.

Two measurements per document, both through the real code:

* in process: `DocumentStore.change` for one typed character (the work a keystroke costs the server), the
  first use of the parse tree afterwards (and the memory the first parse takes), and a completion's work
  besides the model, stage by stage (context, prompt tokens, post-processing of three answers) with the
  shipped model's tokenizer;
* over stdio: the real `midline serve` (no model loaded): a `didChange` followed by a `midline.status` request,
  timed from send to answer, less the same request's time alone; and the server's resident memory.

The characters are typed one at a time in the middle of the document (in the 1 MB line: its middle, after
non-ASCII text, so UTF-16 positions must be counted), with positions in UTF-16.

    python bench/large_documents.py
    python bench/large_documents.py --keystrokes 40 --skip-server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from midline.server.documents import DocumentStore  # noqa: E402
from tests.lsp_client import open_document, running_server, status  # noqa: E402

CODEC = PositionCodec()  # UTF-16, the LSP default
TYPED = "total = count + 1"


def big_file(size: int) -> tuple[str, int]:
    """The repository's Python files, repeated to `size` characters; and a cursor: the end of a statement line
    near the middle, opened by a typed newline and indentation."""
    sources = [p.read_text(encoding="utf-8")
               for p in sorted((ROOT / "server").glob("*.py")) + sorted((ROOT / "model").glob("*.py"))]
    chunks, length = [], 0
    while length < size:
        for source in sources:
            chunks.append(source)
            length += len(source)
    text = "".join(chunks)[:size]
    text = text[: text.rfind("\n") + 1]
    middle = text.index("\n        return ", len(text) // 2)
    return text[:middle] + "\n        " + text[middle:], middle + 9


def long_line(size: int) -> tuple[str, int]:
    """A Python file whose second line is one `size`-character list; the cursor: the line's middle."""
    head = 'LABEL = "données 😀"\nDATA = ["é😀", '
    items = []
    length = 0
    while length < size:
        item = f"{len(items) * 7919 % 100000}, "
        items.append(item)
        length += len(item)
    line = "".join(items)
    cut = line.index(", ", len(line) // 2) + 2
    text = head + line[:cut] + line[cut:] + "0]\n\n\ndef total(values):\n    return sum(values)\n"
    return text, len(head) + cut


def insertion(text: str, offset: int, new: str) -> tuple[str, types.TextDocumentContentChangePartial]:
    """The editor's text after typing `new` at `offset`, and the change it sends (UTF-16 positions; the
    benchmark's texts break lines at "\\n" only)."""
    line_start = text.rfind("\n", 0, offset) + 1
    at = types.Position(text.count("\n", 0, offset), len(text[line_start:offset].encode("utf-16-le")) // 2)
    change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text=new)
    return text[:offset] + new + text[offset:], change


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values):8.2f} ms, max {max(values):8.2f} ms"


def in_process(name: str, text: str, cursor: int, keystrokes: int, completer) -> None:
    """Time keystrokes, the tree's first use after them, and one completion's non-model work."""
    store = DocumentStore()
    uri = f"file:///bench/{name}.py"
    started = time.perf_counter()
    doc = store.open(uri, "python", 1, text)
    opened = (time.perf_counter() - started) * 1000
    rss = rss_mb(os.getpid())
    started = time.perf_counter()
    doc.tree  # noqa: B018 (the first parse: on open before, on first use after)
    parsed = (time.perf_counter() - started) * 1000
    tree_mb = rss_mb(os.getpid()) - rss
    times = []
    for i, char in enumerate((TYPED * keystrokes)[:keystrokes]):
        text, edit = insertion(text, cursor + i, char)
        started = time.perf_counter()
        store.change(uri, i + 2, [edit], CODEC)
        times.append((time.perf_counter() - started) * 1000)
    assert doc.text == text
    started = time.perf_counter()
    doc.tree  # noqa: B018 (the re-parse a request pays for, when keystrokes do not parse)
    tree_ms = (time.perf_counter() - started) * 1000
    print(
        f"{name}: open {opened:.0f} ms, first parse {parsed:.0f} ms (+{tree_mb:.0f} MB resident); "
        f"keystroke {ms(times)}; tree after them {tree_ms:.1f} ms"
    )
    if completer is not None:
        offset = cursor + keystrokes  # (mid-word, where the server would not complete: where typing began)
        completion_work(name, completer, doc, offset if not doc.text[offset : offset + 1].isalnum() else cursor)


# Answers the post-processing gets: one it shows whole, one its syntax gate shortens, one it drops.
ANSWERS = [" * 2\n", " * 2\n        return total\n        x = (\n", " * (2\n"]


def completion_work(name: str, completer, doc, offset: int, runs: int = 3) -> None:
    """Time a completion's work besides the model, stage by stage: the context, the prompt's tokens, and the
    post-processing of each of `ANSWERS` (its per-request caches emptied first, as a new text would)."""
    from midline.server import postprocess as post

    stages: dict[str, list[float]] = {"context": [], "prompt tokens": [], "post-processing": []}
    for _ in range(runs):
        for cached in (post._baseline_spans, post._line_balance, post._suffix_closer):
            cached.cache_clear()
        started = time.perf_counter()
        ctx = completer.prompts.context(doc, offset)
        built = time.perf_counter()
        completer.engine.encode(completer.prompts.fim_prompt(ctx))
        encoded = time.perf_counter()
        for answer in ANSWERS:
            post.postprocess(answer, ctx, completer.config.max_lines)
        done = time.perf_counter()
        for stage, (a, b) in zip(stages, [(started, built), (built, encoded), (encoded, done)]):
            stages[stage].append((b - a) * 1000)
    totals = [sum(times) for times in zip(*stages.values())]
    parts = ", ".join(f"{stage} {statistics.median(times):.1f}" for stage, times in stages.items())
    print(f"{name}: completion without the model {ms(totals)} ({parts} ms, medians; {len(ANSWERS)} answers)")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def over_stdio(name: str, text: str, cursor: int, keystrokes: int) -> None:
    """Keystrokes sent to the real server, each followed by a `midline.status` round trip."""
    with tempfile.TemporaryDirectory() as tmp:
        async with running_server({"model": str(Path(tmp) / "no-model")}, Path(tmp)) as (client, _):
            pid = client._server.pid
            for _ in range(5):
                await status(client)
            before = rss_mb(pid)
            uri = (Path(tmp) / f"{name}.py").as_uri()
            open_document(client, uri, text)
            await status(client)
            opened = rss_mb(pid)
            alone, typed = [], []
            for i, char in enumerate((TYPED * keystrokes)[:keystrokes]):
                started = time.perf_counter()
                await status(client)
                alone.append((time.perf_counter() - started) * 1000)
                text, edit = insertion(text, cursor + i, char)
                started = time.perf_counter()
                client.text_document_did_change(
                    types.DidChangeTextDocumentParams(
                        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
                        content_changes=[edit]
                    )
                )
                await status(client)
                typed.append((time.perf_counter() - started) * 1000)
            after = rss_mb(pid)
    extra = [t - statistics.median(alone) for t in typed]
    print(
        f"{name} over stdio: keystroke (didChange + status, less status alone {statistics.median(alone):.2f} ms) "
        f"{ms(extra)}; "
        f"server memory {before:.0f} MB, +{opened - before:.0f} MB open, +{after - opened:.0f} MB after typing"
    )


def load_completer(model: Path):
    from concurrent.futures import ThreadPoolExecutor

    from midline.model.engine import Engine
    from midline.server.completion import Completer
    from midline.server.config import Config

    engine = Engine.load(model, device="cpu")
    return Completer(engine, Config(), ThreadPoolExecutor(max_workers=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keystrokes", type=int, default=20)
    parser.add_argument("--model", type=Path, default=ROOT / "model" / "default",
                        help="its tokenizer and FIM format, for the completion's non-model work")
    parser.add_argument("--skip-server", action="store_true", help="in process only")
    parser.add_argument("--skip-completion", action="store_true")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    completer = None if args.skip_completion else load_completer(args.model)
    documents = {"10 MB file": big_file(10_000_000), "1 MB line": long_line(1_000_000)}
    for name, (text, cursor) in documents.items():
        in_process(name.replace(" ", "-"), text, cursor, args.keystrokes, completer)
    if not args.skip_server:
        for name, (text, cursor) in documents.items():
            asyncio.run(over_stdio(name.replace(" ", "-"), text, cursor, args.keystrokes))


if __name__ == "__main__":
    main()
