"""`midline-train index` and the attribution check: a planted training file's verbatim continuation is found, a
novel one is not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from midline.server import attribution as A
from midline.training.attribution import build_index
from midline.training.cli import main

from .test_corpus import COPIED, module

# (A planted training file: its functions are long enough to be found whatever the winnowing keeps.)
PLANTED = COPIED + '''

def interval_coverage(intervals, lo, hi):
    """The share of [lo, hi] that the merged intervals cover, between 0 and 1."""
    covered = 0
    for start, end in merge_intervals(intervals, touching=True):
        start, end = max(start, lo), min(end, hi)
        if end > start:
            covered += end - start
    return covered / (hi - lo) if hi > lo else 0.0
'''


def write_corpus(root: Path, planted: str = PLANTED) -> Path:
    """A corpus in the corpus stage's format: modules, the planted file in train; a held-out file in valid."""
    train = [{"repo": f"r{i}", "path": f"m{i}.py", "licence": "MIT", "text": module(i)} for i in range(8)]
    train.insert(3, {"repo": "planted", "path": "intervals.py", "licence": "MIT", "text": planted})
    valid = [{"repo": "held", "path": "held.py", "licence": "MIT", "text": module(50)}]
    root.mkdir(parents=True, exist_ok=True)
    for split, records in (("train", train), ("valid", valid)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "manifest.json").write_text(json.dumps({"complete": True}))
    return root


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> A.AttributionIndex:
    root = tmp_path_factory.mktemp("attribution")
    build_index(write_corpus(root / "corpus"), root / "index")
    return A.AttributionIndex.load(root / "index")


def continuation(text: str, anchor: str, lexemes: int) -> str:
    """`lexemes` lexemes of `text` from `anchor` on, as the model would write them after a prefix ending there."""
    start = text.index(anchor)
    _, _, ends = A.lexemes(text[start:])
    return text[start : start + ends[lexemes - 1]]


def test_a_verbatim_continuation_of_a_training_file_is_found(index):
    guaranteed = index.ngram + index.window - 1
    for anchor in ("    merged = []", "        if merged and", "    covered = 0", "def interval_coverage"):
        suggestion = continuation(PLANTED, anchor, guaranteed)
        match = index.match(suggestion)
        assert match is not None, anchor
        assert index.ngram <= match.lexemes <= guaranteed and 0 <= match.start < match.end <= len(suggestion)
    # Layout does not hide a copy: lexemes ignore whitespace.
    copied = continuation(PLANTED, "    covered = 0", 40)
    assert index.match(" ".join(copied.split())) is not None
    assert index.match(copied.replace("\n", "\n    ")) is not None


def test_novel_code_short_spans_and_held_out_files_are_not_found(index):
    assert index.match(module(77)) is None  # never trained on
    assert index.match(module(50)) is None  # the validation split is not indexed
    assert index.match(continuation(PLANTED, "    covered = 0", index.ngram - 1)) is None  # shorter than an n-gram
    assert index.match("") is None
    renamed = continuation(PLANTED, "    covered = 0", 40).replace("end", "stop")
    assert index.match(renamed) is None  # every n-gram of it names `stop`


def test_the_index_is_sorted_unique_uint64_with_its_header(tmp_path):
    header = build_index(write_corpus(tmp_path / "corpus"), tmp_path / "index", ngram=10, window=4)
    fingerprints = np.load(tmp_path / "index" / A.FINGERPRINTS, allow_pickle=False)
    assert fingerprints.dtype == np.uint64 and (np.diff(fingerprints) > 0).all()
    assert header == json.loads((tmp_path / "index" / A.HEADER).read_text())
    assert header["format"] == A.FORMAT and (header["ngram"], header["window"], header["files"]) == (10, 4, 9)
    assert header["fingerprints"] == len(fingerprints) < header["lexemes"] / 2  # winnowing keeps about 2 / (w + 1)
    assert A.AttributionIndex.load(tmp_path / "index").match(continuation(PLANTED, "    covered = 0", 13))


def test_an_unusable_index_is_refused_saying_why(tmp_path):
    with pytest.raises(A.AttributionError, match="no readable index.json"):
        A.AttributionIndex.load(tmp_path / "missing")
    build_index(write_corpus(tmp_path / "corpus"), tmp_path / "index")
    header = json.loads((tmp_path / "index" / A.HEADER).read_text())
    (tmp_path / "index" / A.HEADER).write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(A.AttributionError, match="not a midline-attribution-index version 1"):
        A.AttributionIndex.load(tmp_path / "index")
    (tmp_path / "index" / A.HEADER).write_text(json.dumps(header))
    np.save(tmp_path / "index" / A.FINGERPRINTS, np.arange(4, dtype=np.int32))
    with pytest.raises(A.AttributionError, match="not a 1-d uint64 array"):
        A.AttributionIndex.load(tmp_path / "index")


def test_the_cli_builds_the_index(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    assert main(["index", "--corpus", str(corpus), "--out", str(tmp_path / "index")]) == 0
    assert "index in" in capsys.readouterr().out and (tmp_path / "index" / A.HEADER).is_file()
    with pytest.raises(SystemExit):
        main(["index", "--corpus", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "has no train.jsonl" in capsys.readouterr().err
