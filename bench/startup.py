"""Time a server start as an editor sees it: process start -> the `initialize` reply -> the model ready.

Starts `python -m midline.server` (the shipped model unless --model is given) in an empty workspace folder
(nothing to index), sends `initialize` the moment the process exists, and times its reply from the process start;
then sends `initialized` and polls `midline.status` every --poll-ms until it says the model is ready (or failed),
keeping the longest wait for a status answer while the model loads (the model thread imports torch and loads the
weights meanwhile). Plain JSON-RPC over the pipes, no client library, so nothing but the server is timed. Prints
the median and range over --runs starts.

    python bench/startup.py --runs 1 --poll-ms 50
    python bench/startup.py --model /path/to/model --runs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[1]


def send(stdin: BinaryIO, message: dict[str, Any]) -> None:
    body = json.dumps(message).encode()
    stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    stdin.flush()


def receive(stdout: BinaryIO) -> dict[str, Any]:
    """The next message from the server (EOFError if it exited)."""
    length = None
    while True:
        line = stdout.readline()
        if not line:
            raise EOFError("the server exited")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("ascii").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        raise ValueError("a message without Content-Length")
    return json.loads(stdout.read(length))


def reply(stdout: BinaryIO, msg_id: int) -> dict[str, Any]:
    """The answer to request `msg_id`, skipping notifications and other answers."""
    while True:
        message = receive(stdout)
        if message.get("id") == msg_id and "method" not in message:
            return message


def start_once(settings: dict[str, Any], timeout_s: float, poll_s: float) -> tuple[float, float, float, str]:
    """Seconds from process start to the `initialize` reply and to a ready (or failed) model, the longest status
    answer while it loaded, and the model's state."""
    workspace = Path(tempfile.mkdtemp(prefix="midline-startup-"))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "midline.server", "--log-level", "WARNING"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        options, uri = {"midline": settings}, workspace.as_uri()
        params = {"processId": None, "rootUri": uri, "capabilities": {}, "initializationOptions": options}
        send(process.stdin, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        reply(process.stdout, 1)
        initialized = time.perf_counter() - started
        send(process.stdin, {"jsonrpc": "2.0", "method": "initialized", "params": {}})
        msg_id, state, longest = 1, "loading", 0.0
        while time.perf_counter() - started < timeout_s:
            msg_id += 1
            asked = time.perf_counter()
            send(process.stdin, {"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand",
                                 "params": {"command": "midline.status", "arguments": []}})
            answer = reply(process.stdout, msg_id).get("result") or {}
            longest = max(longest, time.perf_counter() - asked)
            state = answer.get("state") or ("ready" if answer.get("ready") else "loading")
            if state != "loading":
                break
            time.sleep(poll_s)
        ready = time.perf_counter() - started
        send(process.stdin, {"jsonrpc": "2.0", "id": msg_id + 1, "method": "shutdown"})
        reply(process.stdout, msg_id + 1)
        send(process.stdin, {"jsonrpc": "2.0", "method": "exit"})
        process.wait(timeout=10)
        return initialized, ready, longest, state
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        workspace.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the shipped model)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for the model, in seconds")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="pause between status requests while it loads")
    args = parser.parse_args()
    settings: dict[str, Any] = {"device": args.device, **({"model": args.model} if args.model else {})}
    runs = [start_once(settings, args.timeout, args.poll_ms / 1000) for _ in range(args.runs)]
    states = ", ".join(sorted({state for *_, state in runs}))
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, {args.runs} starts, "
          f"model {args.model or 'shipped'} on {args.device}, status every {args.poll_ms:.0f} ms; states: {states}")
    rows = ("process start -> initialize reply", "process start -> model ready", "longest status answer while loading")
    for i, name in enumerate(rows):
        values = [run[i] for run in runs]
        print(f"  {name}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
