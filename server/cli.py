"""`midline`: `serve` runs the language server on stdio; `complete` prints one completion."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from midline.model import DEFAULT_MODEL_DIR, VERSION


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="midline", description="Private, local AI code completion.")
    parser.add_argument("--version", action="version", version=f"midline {VERSION}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (logs go to stderr)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", parents=[common], help="run the language server on stdio (what an editor starts)")

    complete = commands.add_parser("complete", parents=[common], help="print the completion at FILE:LINE:COL (1-based)")
    complete.add_argument("location", help="FILE:LINE:COL, line and column counted from 1")
    complete.add_argument("--model", help=f"local model directory (default: {DEFAULT_MODEL_DIR})")
    complete.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    complete.add_argument(
        "--settings", default="{}", help="JSON object of settings, as in the editor's `midline` section"
    )

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "serve":
        from .server import server

        server.start_io()
        return 0
    return _complete(args)


def _complete(args: argparse.Namespace) -> int:
    try:  # check the request before the (slow) model imports
        path, (line, column) = _location(args.location)
        text = path.read_text(encoding="utf-8")
        offset = _offset(text, line, column)
    except (OSError, ValueError) as exc:
        print(f"midline complete: {exc}", file=sys.stderr)
        return 2

    from midline.model import languages
    from midline.model.remote import RemoteError

    from .completion import Completer
    from .config import Config
    from .documents import Document
    from .server import open_engine

    try:
        settings = Config.from_json(json.loads(args.settings))
        settings.model = args.model or settings.model
        settings.device = args.device
        engine = open_engine(settings)  # the local model, or the remote backend the settings name
    except Exception as exc:  # noqa: BLE001 - a command-line tool reports any failure in one line
        print(f"midline complete: {exc}", file=sys.stderr)
        return 2
    doc = Document(path.resolve().as_uri(), languages.resolve(None, str(path)).name, 0, text)
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(engine, settings, executor, root=str(Path.cwd()))
        try:
            suggestion = asyncio.run(completer.complete(doc, offset)).suggestion
        except RemoteError as exc:  # the remote backend failed: its message, not a traceback
            print(f"midline complete: {exc}", file=sys.stderr)
            return 2
    if suggestion is None:
        print("midline complete: no suggestion here", file=sys.stderr)
        return 1
    print(suggestion.text)
    return 0


def _location(location: str) -> tuple[Path, tuple[int, int]]:
    """FILE:LINE:COL -> the path and (line, column), both 1-based."""
    parts = location.rsplit(":", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"expected FILE:LINE:COL (1-based), got {location!r}")
    return Path(parts[0]), (int(parts[1]), int(parts[2]))


def _offset(text: str, line: int, column: int) -> int:
    """String index of a 1-based line and column; ValueError past the end."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise ValueError(f"the file has {len(lines)} lines, no line {line}")
    if not 1 <= column <= len(lines[line - 1]) + 1:
        width = len(lines[line - 1])
        raise ValueError(f"line {line} has {width} characters: columns run 1..{width + 1}")
    return sum(len(text_line) + 1 for text_line in lines[: line - 1]) + column - 1


if __name__ == "__main__":
    sys.exit(main())
