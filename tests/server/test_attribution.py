"""The attribution check in the server: with `attribution.index` set, a suggestion repeating a planted training file
verbatim is hidden (completer and `midline serve`); a novel one is shown; an unusable index is reported once."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from midline.model.remote import RemoteEngine
from midline.server.completion import Completer
from midline.server.config import Config
from midline.server.documents import Document
from midline.training.attribution import build_index

from ..lsp_client import inline, open_document, running_server, status
from ..model_server import answer
from ..training.test_attribution import PLANTED, write_corpus

DOCUMENT = "def interval_coverage(intervals, lo, hi):\n    \n"
CURSOR = len("def interval_coverage(intervals, lo, hi):\n    ")
COPIED = PLANTED[PLANTED.index("covered = 0") :].rstrip("\n") + "\n"  # the planted body, as the model would write it
NOVEL = "total = sum(b - a for a, b in intervals if b > a)\n    return total / max(hi - lo, 1)\n"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("attribution")
    build_index(write_corpus(root / "corpus"), root / "index")
    return root / "index"


def complete(served, tiny_engine, tmp_path: Path, text: str, index: str | None, reported: list[str] | None = None):
    served.reset()
    served.feed = answer(text)
    backend = RemoteEngine("openai", served.url, model="tiny", fim_format=tiny_engine.fim,
                           tokenizer=tiny_engine.tokenizer)
    config = Config.from_json({"debounceMs": 0, "attribution": {"index": index}})
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(backend, config, executor, root=str(tmp_path),
                              report=(reported if reported is not None else []).append)
        doc = Document((tmp_path / "cover.py").as_uri(), "python", 1, DOCUMENT)
        done = asyncio.run(completer.complete(doc, CURSOR))
        again = asyncio.run(completer.complete(doc, CURSOR))  # the cached answer is the same
    assert completer.trace.raw == text and len(served.requests) == 1
    assert [s.text for s in again.suggestions] == [s.text for s in done.suggestions]
    return completer, done


@pytest.mark.parametrize("text, index, shown", [
    (COPIED, "index", False),
    (NOVEL, "index", True),
    (COPIED, None, True),  # the check is off by default
])
def test_the_completer_hides_a_verbatim_copy_of_the_training_data(served, tiny_engine, tmp_path, index_dir, text,
                                                                   index, shown):
    completer, done = complete(served, tiny_engine, tmp_path, text, str(index_dir) if index else None)
    if shown:
        assert done.suggestion is not None and done.suggestion.text == text.rstrip("\n")
        assert completer.stats.attributed == 0 and completer.trace.hidden == ""
    else:
        assert done.suggestion is None and completer.stats.attributed == 1 and completer.trace.shown is None
        assert completer.trace.hidden.startswith("attribution: ") and "verbatim in the training data" in \
            completer.trace.hidden, completer.trace


def test_an_unusable_index_is_reported_once_and_suggestions_are_shown(served, tiny_engine, tmp_path):
    reported: list[str] = []
    completer, done = complete(served, tiny_engine, tmp_path, COPIED, str(tmp_path / "nothing"), reported)
    assert done.suggestion is not None and completer.stats.attributed == 0
    assert len(reported) == 1 and "no readable index.json" in reported[0] and "not checked" in reported[0]
    assert completer.attribution_error and completer.attribution_index() is None and len(reported) == 1


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_midline_serve_hides_a_copy_of_the_planted_file(served, tiny_model_dir, index_dir, tmp_path):
    served.reset()
    served.feed = answer(COPIED)
    backend = {"kind": "openai", "url": served.url, "tokenizer": str(tiny_model_dir)}
    uri = (tmp_path / "cover.py").as_uri()
    settings = {"debounceMs": 0, "backend": backend, "attribution": {"index": str(index_dir)}}
    async with running_server(settings, tmp_path) as (client, _):
        open_document(client, uri, DOCUMENT)
        assert not (await inline(client, uri, 1, 4)).items
        info = await status(client)
        assert served.requests and info["attributed"] == 1, info
        assert info["last"]["hidden"].startswith("attribution: "), info
        assert info["attribution"]["index"] == str(index_dir) and info["attribution"]["fingerprints"] > 0, info
