"""`midline serve` on the CPU with each local engine, side by side: PyTorch (`engine: torch`) and llama.cpp in process
(`engine: llamacpp`), the shipped model, rounds interleaved (one server of each per round, `--runs` rounds).

Each server is measured as an editor meets it:
1. start (raw JSON-RPC over the pipes, bench/startup.py's): process start -> the `initialize` reply, and -> the first
   non-empty completion, asked every 50 ms from `initialized` on at the end of tests/data/example.py's `mean`
   (the README quickstart's position: ` total`);
2. typing (tests/lsp_client's client, as VS Code does): `--lines` lines of the longest function of `--file` are cut
   out and typed back. Each line starts with its newline and indentation in one change (an auto-indenting editor)
   and a pause until the answer ("line start"); then its characters follow at `--cps`, each keystroke cancelling the
   previous request if it is still waiting ("keystroke": request to answer, of the answers that were not cancelled);
3. memory: the server's resident set after typing (VmRSS) and its peak (VmHWM).

    python bench/server_engines.py --runs 3 --out bench/server_engines.md     # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.keystroke_replay import percentile, region  # noqa: E402
from bench.server_replay import type_region  # noqa: E402
from bench.startup import receive, reply, send  # noqa: E402
from midline.server.documents import Document  # noqa: E402
from tests.lsp_client import open_document, running_server  # noqa: E402

ENGINES = ("torch", "llamacpp")
EXAMPLE = ROOT / "tests" / "data" / "example.py"


def first_answer(settings: dict[str, Any], timeout_s: float = 120.0) -> tuple[float, float]:
    """Seconds from process start to the `initialize` reply and to the first non-empty completion."""
    text = EXAMPLE.read_text()
    cut = text.index("return", text.index("def mean")) + len("return")
    line = text.count("\n", 0, cut)
    character = cut - (text.rfind("\n", 0, cut) + 1)
    workspace = Path(tempfile.mkdtemp(prefix="midline-engines-"))
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "midline.server", "--log-level", "WARNING"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    assert process.stdin is not None and process.stdout is not None
    try:
        params = {"processId": None, "rootUri": workspace.as_uri(), "initializationOptions": {"midline": settings},
                  "capabilities": {"textDocument": {"inlineCompletion": {}}}}
        send(process.stdin, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        reply(process.stdout, 1)
        initialized = time.perf_counter() - started
        send(process.stdin, {"jsonrpc": "2.0", "method": "initialized", "params": {}})
        uri = (workspace / "example.py").as_uri()
        send(process.stdin, {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": text}}})
        msg_id = 1
        while time.perf_counter() - started < timeout_s:
            msg_id += 1
            send(process.stdin, {"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion", "params": {
                "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                "context": {"triggerKind": 1}}})
            result = reply(process.stdout, msg_id).get("result") or {}
            items = result.get("items", []) if isinstance(result, dict) else result
            if items and items[0].get("insertText"):
                break
            time.sleep(0.05)
        answered = time.perf_counter() - started
        send(process.stdin, {"jsonrpc": "2.0", "id": msg_id + 1, "method": "shutdown"})
        while receive(process.stdout).get("id") != msg_id + 1:
            pass
        send(process.stdin, {"jsonrpc": "2.0", "method": "exit"})
        process.wait(timeout=10)
        return initialized, answered
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        workspace.rmdir()


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def typing(settings: dict[str, Any], source: str, lines: int, cps: float) -> dict[str, Any]:
    """Line-start and keystroke latencies (ms) typing `lines` lines of `source`'s longest function, and memory."""
    start, end = region(source, 80 * lines)
    typed = source[start:end].split("\n")[:lines]
    codec = PositionCodec()
    line_starts: list[float] = []
    keystrokes: list[float] = []
    shown = 0
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        async with running_server(settings, root) as (client, _):
            uri = (root / "typed.py").as_uri()
            prefix = source[:start].rstrip("\n")
            doc = Document(uri, "python", 1, prefix + source[end:])
            open_document(client, uri, doc.text)
            offset = len(prefix)
            for text in typed:
                indent = text[: len(text) - len(text.lstrip())]
                at = doc.position_at(offset, codec)
                change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text="\n" + indent)
                doc.apply_change(change, codec)
                doc.version += 1
                offset += 1 + len(indent)
                client.text_document_did_change(types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=doc.version),
                    content_changes=[change]))
                asked = time.perf_counter()
                answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri), position=doc.position_at(offset, codec),
                    context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
                line_starts.append((time.perf_counter() - asked) * 1000)
                shown += bool(answer and answer.items and answer.items[0].insert_text)
                rest = text[len(indent):]
                answers = await type_region(client, doc, offset, rest, cps)
                offset += len(rest)
                keystrokes += [a.ms for a in answers if a.outcome in ("shown", "empty")]
            server = getattr(client, "_server", None)
            rss, peak = memory_mib(server.pid) if server is not None else (float("nan"), float("nan"))
    return {"line_starts": line_starts, "keystrokes": keystrokes, "rss": rss, "peak": peak, "shown": shown}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--file", type=Path, default=ROOT / "server" / "completion.py", help="Python file to type")
    parser.add_argument("--lines", type=int, default=8, help="lines typed back per server")
    parser.add_argument("--cps", type=float, default=8.0, help="characters a second within a line")
    parser.add_argument("--out", type=Path, help="write the report (markdown) here too")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    source = args.file.read_text()
    rows: dict[str, dict[str, list[float]]] = {engine: {} for engine in ENGINES}
    for _ in range(args.runs):
        for engine in ENGINES:  # interleaved: one server of each per round
            settings = {"engine": engine, "device": "cpu"}
            initialized, answered = first_answer(settings)
            typed = asyncio.run(typing(settings, source, args.lines, args.cps))
            row = rows[engine]
            for key, value in (("initialize", initialized * 1000), ("first", answered * 1000),
                               ("rss", typed["rss"]), ("peak", typed["peak"]), ("shown", typed["shown"])):
                row.setdefault(key, []).append(value)
            row.setdefault("line_starts", []).extend(typed["line_starts"])
            row.setdefault("keystrokes", []).extend(typed["keystrokes"])
    lines = [
        f"`midline serve`, shipped model, `device: cpu`; {args.runs} interleaved rounds, medians (line starts and "
        f"keystrokes pooled over rounds: {args.lines} lines of {args.file.name} a round at {args.cps:g} chars/s); "
        f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "",
        "| engine | `initialize` reply ms | first completion s | keystroke ms p50 / p90 (answers) "
        "| line start ms p50 / p90 | line starts shown | RSS MiB after typing | peak RSS MiB |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for engine, row in rows.items():
        med = {k: statistics.median(v) for k, v in row.items() if v}
        keys, starts = row["keystrokes"], row["line_starts"]
        lines.append(
            f"| {engine} | {med['initialize']:.0f} | {med['first'] / 1000:.2f} | "
            f"{percentile(keys, 50):.0f} / {percentile(keys, 90):.0f} ({len(keys)}) | "
            f"{percentile(starts, 50):.0f} / {percentile(starts, 90):.0f} | {sum(row['shown']):.0f}/{len(starts)} | "
            f"{med['rss']:.0f} | {med['peak']:.0f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
