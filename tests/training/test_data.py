"""Data stage: FIM examples laid out exactly as the server prompts, packed whole into rows, deterministic and
resumable."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import Counter
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midline.model import fim
from midline.model.fim import FimPrompt
from midline.training import data as D
from midline.training.data import DataConfig, PackedDataset, build_data, fim_example, fim_split

from ..corpus_fixtures import write_corpus

SEQ = 128
CONFIG = DataConfig(seq_len=SEQ, shard_rows=60, workers=2)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def built(corpus_dir, tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("data")
    return out, build_data(corpus_dir, tiny_model_dir, out, CONFIG)


def docs_of(corpus_dir: Path, split: str) -> list[tuple[int, dict]]:
    return [(i, json.loads(line)) for i, line in enumerate((corpus_dir / f"{split}.jsonl").read_text().splitlines())]


def parse(example: list[int], tok) -> tuple[str, str, str, str, str, str]:
    """(mode, repo, path, prefix, middle, suffix) of a midline training example, read back from its ids."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in fim.SPECIAL_TOKENS}
    assert example[-1] == ids[fim.EOT] and ids[fim.EOT] not in example[:-1]
    assert ids[fim.FIM_PAD] not in example

    def cut(seq, token):
        i = seq.index(ids[token])
        return seq[:i], seq[i + 1 :]

    rest, repo, path = example[:-1], "", ""
    if rest and rest[0] == ids[fim.REPO_NAME]:
        rest = rest[1:]
        end = next(k for k, t in enumerate(rest) if t in ids.values())
        repo, rest = tok.decode(rest[:end]).removesuffix("\n"), rest[end:]
    if rest and rest[0] == ids[fim.FILE_SEP]:
        text = tok.decode(rest[1:])
        path = text.split("\n", 1)[0]
        rest = rest[1 + len(tok.encode(path + "\n", add_special_tokens=False, split_special_tokens=True)) :]
    if ids[fim.FIM_MIDDLE] not in rest:
        return "plain", repo, path, tok.decode(rest), "", ""
    head, middle = cut(rest, fim.FIM_MIDDLE)
    if head[0] == ids[fim.FIM_PREFIX]:
        prefix, suffix = cut(head[1:], fim.FIM_SUFFIX)
        mode = "psm"
    else:
        assert head[0] == ids[fim.FIM_SUFFIX]
        suffix, prefix = cut(head[1:], fim.FIM_PREFIX)
        mode = "spm"
    return mode, repo, path, tok.decode(prefix), tok.decode(middle), tok.decode(suffix)


# -- examples -------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60), seed=st.integers(0, 2**32))
def test_fim_split_round_trip(text, seed):
    prefix, middle, suffix = fim_split(text, random.Random(seed))
    assert prefix + middle + suffix == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.sampled_from("ab \t\n\r("), max_size=80), seed=st.integers(0, 2**32))
def test_line_spans_end_at_a_line_end_and_start_inside_a_nonblank_line(text, seed):
    prefix, middle, suffix = fim_split(text, random.Random(seed), line_span_rate=1.0)
    assert prefix + middle + suffix == text
    if not text.strip():
        return  # no line to hole: a uniform split
    assert suffix == "" or suffix[0] in "\r\n"  # the hole ends at a line end
    line_start = max(prefix.rfind("\n"), prefix.rfind("\r")) + 1
    assert (prefix[line_start:] + middle + suffix).splitlines()[0].strip(), "the hole starts in a non-blank line"


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60), seed=st.integers(0, 2**32))
def test_end_rate_empties_the_suffix_and_zero_changes_nothing(text, seed):
    prefix, middle, suffix = fim_split(text, random.Random(seed), end_rate=1.0)
    assert prefix + middle == text and suffix == ""
    some, none = fim_split(text, random.Random(seed), end_rate=0.5), fim_split(text, random.Random(seed))
    assert some[0] == none[0] and (some == none or some[2] == "")  # the same split, or run on to the end


TEXTS = ["def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n", "x = '<|endoftext|>'  # ünï 🙂\n\tif x:\r\n  pass",
         "a"]


@pytest.mark.parametrize("mode", ["psm", "spm"])
@pytest.mark.parametrize("context", [True, False])
def test_example_is_the_servers_prompt_then_middle_then_eot(tiny_engine, tiny_tokenizer, mode, context):
    """Token for token: training example == Engine.encode(FimPrompt(prefix, suffix, path, repo), mode) + middle +
    EOT."""
    assert tiny_engine.fim is fim.MIDLINE and fim.MIDLINE.default_mode == "spm"
    config = DataConfig(fim_rate=1.0, spm_rate=1.0 if mode == "spm" else 0.0, context_rate=1.0 if context else 0.0)
    path, repo = ("src/calc.py", "calc") if context else ("", "")
    for text in TEXTS:
        for seed in range(20):
            ids = fim_example(text, random.Random(seed), tiny_tokenizer, config, path="src/calc.py", repo="calc")
            got_mode, got_repo, got_path, prefix, middle, suffix = parse(ids, tiny_tokenizer)
            assert (got_mode, got_repo, got_path) == (mode, repo, path)
            assert prefix + middle + suffix == text
            served = tiny_engine.encode(FimPrompt(prefix, suffix, path=path, repo=repo), mode)
            middle_ids = tiny_tokenizer.encode(middle, add_special_tokens=False, split_special_tokens=True)
            assert ids == served + middle_ids + [tiny_tokenizer.convert_tokens_to_ids(fim.EOT)]
            assert tiny_tokenizer.convert_tokens_to_ids(fim.EOT) in tiny_engine.stop_ids


def test_plain_example_is_header_then_text(tiny_tokenizer):
    config = DataConfig(fim_rate=0.0, context_rate=1.0)
    ids = fim_example(TEXTS[0], random.Random(0), tiny_tokenizer, config, path="a.py", repo="r")
    assert tiny_tokenizer.decode(ids) == f"{fim.REPO_NAME}r\n{fim.FILE_SEP}a.py\n{TEXTS[0]}{fim.EOT}"
    assert parse(ids, tiny_tokenizer) == ("plain", "r", "a.py", TEXTS[0], "", "")
    assert D.shown_repo("python/cpython") == "cpython" == D.shown_repo("cpython")


def test_rates_are_respected(tiny_tokenizer):
    rng, config = random.Random(0), DataConfig(fim_rate=0.7, spm_rate=0.25, context_rate=0.5)
    kinds = Counter()
    for _ in range(2000):
        _, kind, context = D._example("abc\n", rng, tiny_tokenizer, config, "p.py", "r")
        kinds[kind] += 1
        kinds["context"] += context
    assert abs(kinds["plain"] / 2000 - 0.3) < 0.04
    assert abs(kinds["spm"] / (kinds["spm"] + kinds["psm"]) - 0.25) < 0.04
    assert abs(kinds["context"] / 2000 - 0.5) < 0.04


def test_documents_are_chunked_at_line_ends_to_fit_a_row(tiny_tokenizer):
    text = "".join(f"def function_{i}(argument):\n    return argument * {i}\n\n" for i in range(200))
    pieces = D.chunks(text, tiny_tokenizer, 100)
    assert "".join(pieces) == text and len(pieces) > 5
    assert all(p.endswith("\n") for p in pieces)
    config = DataConfig(seq_len=SEQ)
    examples = D.document_examples(text, random.Random(0), tiny_tokenizer, config, path="f.py", repo="r")
    assert all(len(ids) <= SEQ + 1 for ids, _, _ in examples)
    rebuilt = "".join("".join(parse(ids, tiny_tokenizer)[3:]) for ids, _, _ in examples)
    assert rebuilt == text
    one_line = "x" * 5000  # minified: cut inside the line
    assert "".join(D.chunks(one_line, tiny_tokenizer, 100)) == one_line
    assert all(len(ids) <= SEQ + 1
               for ids, _, _ in D.document_examples(one_line, random.Random(0), tiny_tokenizer, config))


# -- the built data -------------------------------------------------------------------------------


def test_meta_and_shards(built, tiny_tokenizer):
    out, meta = built
    assert meta["complete"] and meta["seq_len"] == SEQ and meta["dtype"] == "uint16" and meta["vocab_size"] == 1024
    assert meta["pad_id"] == tiny_tokenizer.convert_tokens_to_ids(fim.FIM_PAD) and meta["eot_id"] == 0
    assert json.loads((out / "meta.json").read_text()) == meta
    train = meta["splits"]["train"]
    assert len(train["shards"]) > 1 and train["documents"] == 16  # the empty document is skipped
    assert train["examples"] == train["psm"] + train["spm"] + train["plain"]
    assert train["psm"] and train["spm"] and train["plain"]
    assert train["fill"] > 0.85
    for split in D.SPLITS:
        arrays = [np.load(out / name, allow_pickle=False) for name in meta["splits"][split]["shards"]]
        assert all(a.shape[1] == SEQ + 1 and a.dtype == np.uint16 for a in arrays)
        assert sum(len(a) for a in arrays) == meta["splits"][split]["rows"]
        assert sum(int((a != meta["pad_id"]).sum()) for a in arrays) == meta["splits"][split]["tokens"]
    copied = (out / "tokenizer" / "tokenizer.json").read_bytes()
    assert copied == (Path(meta["tokenizer"]) / "tokenizer.json").read_bytes()


def test_rows_hold_whole_examples_ending_in_eot(built, corpus_dir, tiny_tokenizer):
    """Every row is whole examples then FIM_PAD; together they are exactly the documents' examples."""
    out, meta = built
    pad, eot = meta["pad_id"], meta["eot_id"]
    for split in D.SPLITS:
        ds = PackedDataset(out, split)
        found = []
        for i in range(len(ds)):
            row = ds[i].tolist()
            n = len(row) - next((k for k, t in enumerate(reversed(row)) if t != pad), len(row))
            assert row[n - 1] == eot and pad not in row[:n]  # the last example's EOT is inside the row
            starts = [0] + [k + 1 for k in range(n) if row[k] == eot][:-1]
            found += [tuple(row[a : b + 1]) for a, b in zip(starts, [k for k in range(n) if row[k] == eot])]
        expected = []
        for number, doc in docs_of(corpus_dir, split):
            rng = random.Random(f"{CONFIG.seed}/{split}/{number}")
            examples = D.document_examples(doc["text"], rng, tiny_tokenizer, CONFIG, path=doc["path"],
                                           repo=D.shown_repo(doc["repo"])) if doc["text"] else []
            expected += [tuple(ids) for ids, _, _ in examples]
        assert sorted(found) == sorted(expected)
        assert len(found) == meta["splits"][split]["examples"]
        for ids in found[:50]:
            parse(list(ids), tiny_tokenizer)  # valid layouts


def test_deterministic_whatever_the_workers(built, corpus_dir, tiny_model_dir, tmp_path):
    out, meta = built
    inline = build_data(corpus_dir, tiny_model_dir, tmp_path / "inline",
                        DataConfig(seq_len=SEQ, shard_rows=60, workers=0))
    assert inline["splits"] == meta["splits"]
    for name in meta["splits"]["train"]["shards"]:
        assert (tmp_path / "inline" / name).read_bytes() == (out / name).read_bytes()
    other = build_data(corpus_dir, tiny_model_dir, tmp_path / "seed1",
                       DataConfig(seq_len=SEQ, shard_rows=60, workers=0, seed=1))
    assert (tmp_path / "seed1" / "train-00000.npy").read_bytes() != (out / "train-00000.npy").read_bytes()
    assert other["splits"]["train"]["documents"] == meta["splits"]["train"]["documents"]


def test_resumes_an_interrupted_build(built, corpus_dir, tiny_model_dir, tmp_path, monkeypatch):
    out, meta = built
    work = tmp_path / "data"
    config = DataConfig(seq_len=SEQ, shard_rows=60, workers=0)
    calls = []
    real = D._write_shard

    def killed_after_two(path, *args):
        if len(calls) == 2:
            path.with_name(path.name + ".tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        calls.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(D, "_write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_data(corpus_dir, tiny_model_dir, work, config)
    assert not (work / "meta.json").exists() and len(calls) == 2
    with pytest.raises(FileNotFoundError, match="run the data stage"):
        PackedDataset(work)
    stamps = {name: (work / name).stat().st_mtime_ns for name in calls}

    monkeypatch.setattr(D, "_write_shard", lambda path, *args: calls.append(path.name) or real(path, *args))
    resumed = build_data(corpus_dir, tiny_model_dir, work, config)
    # finished shards skipped
    assert resumed["splits"] == meta["splits"] and calls[2:] and not set(calls[2:]) & set(calls[:2])
    assert all((work / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    for name in meta["splits"]["train"]["shards"]:
        assert (work / name).read_bytes() == (out / name).read_bytes()

    calls.clear()
    assert build_data(corpus_dir, tiny_model_dir, work, config) == resumed and not calls  # complete: nothing to do
    with pytest.raises(ValueError, match="--force"):
        build_data(corpus_dir, tiny_model_dir, work, DataConfig(seq_len=SEQ, shard_rows=60, workers=0, fim_rate=0.5))
    forced = build_data(corpus_dir, tiny_model_dir, work,
                        DataConfig(seq_len=SEQ, shard_rows=60, workers=0, fim_rate=0.5), force=True)
    assert forced["fim_rate"] == 0.5 and calls


# -- reading --------------------------------------------------------------------------------------


def test_batches_are_deterministic_and_resumable(built):
    out, _ = built
    ds = PackedDataset(out, "train", seed=3)
    B = 4
    per_epoch = ds.steps_per_epoch(B)
    first = list(islice(ds.batches(B), 2 * per_epoch + 3))
    again = list(islice(PackedDataset(out, "train", seed=3).batches(B), 2 * per_epoch + 3))
    assert all((a == b).all() for a, b in zip(first, again))
    for k in (0, 5, per_epoch - 1, per_epoch, 2 * per_epoch + 1):  # resume at step k: the same batches
        assert all((a == b).all() for a, b in zip(islice(ds.batches(B, start_step=k), 2), first[k : k + 2]))
    epoch0 = np.concatenate(first[:per_epoch])
    rows = {tuple(ds[i].tolist()) for i in range(len(ds))}
    # no repeats
    assert len({tuple(r.tolist()) for r in epoch0}) == len(epoch0) and {tuple(r.tolist()) for r in epoch0} <= rows
    assert not (np.concatenate(first[per_epoch : 2 * per_epoch]) == epoch0).all()  # a new order each epoch
    assert not (PackedDataset(out, "train", seed=4).batch(0, B) == first[0]).all()
    halves = [ds.batch(7, B, rank=r, world=2) for r in range(2)]
    assert (np.concatenate(halves) == ds.batch(7, B)).all()  # ranks split each global batch
    with pytest.raises(ValueError, match="multiple"):
        ds.batch(0, 5, world=2)


def test_cli(corpus_dir, tiny_model_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    D.add_parser(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(["data", "--corpus", str(corpus_dir), "--tokenizer", str(tiny_model_dir), "--out",
                              str(out), "--seq-len", "96", "--fim-rate", "0.5", "--spm-rate", "0.5", "--seed", "2",
                              "--workers", "0"])
    assert args.run(parser, args) == 0
    printed = capsys.readouterr().out
    assert "train: 16 documents" in printed and "PSM" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seq_len"], meta["fim_rate"], meta["seed"]) == (96, 0.5, 2)


# -- syntax-aware holes (holes="ast") -------------------------------------------------------------

CODE = '''"""Shapes: ünïcödé before the code, so characters and bytes differ."""

import math
from dataclasses import dataclass

RATE = {"π": math.pi, "τ": 2 * math.pi}  # 🙂


@dataclass
class Circle:
    radius: float

    def area(self) -> float:
        """The area."""
        return math.pi * self.radius ** 2

    def scaled(self, factor):
        if factor <= 0:
            raise ValueError(
                f"factor must be positive, not {factor}",
            )
        return Circle(self.radius * factor)


def total_area(shapes, *, limit=None):
    total = 0.0
    for shape in shapes:
        if limit is not None and total >= limit:
            break
        total += shape.area()
    return total


def main():
    shapes = [Circle(r) for r in range(1, 4)]
    print(total_area(shapes), RATE["π"] == math.pi)
'''
NODE_KINDS = ("expression", "statement", "statements", "block")


def ast_holes(text: str, path: str = "shapes.py", seeds: range = range(1500)) -> dict[str, list[tuple[str, str, str]]]:
    syntax = D.Syntax.of(text, path)
    found: dict[str, list] = {}
    for seed in seeds:
        prefix, middle, suffix, kind = D.ast_split(text, random.Random(seed), syntax)
        assert prefix + middle + suffix == text
        found.setdefault(kind, []).append((prefix, middle, suffix))
    return found


def line_of(prefix: str) -> str:
    """The cursor's line before the cursor."""
    return prefix[prefix.rfind("\n") + 1 :]


def is_word(text: str, i: int) -> bool:
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] == "_")


def named_spans(text: str) -> tuple[set, set, set]:
    """`text`'s Python tree in characters: spans of named nodes, of runs of sibling named nodes, of block bodies."""
    from midline.model.syntax import new_parser

    data = text.encode()
    char = [len(data[:i].decode(errors="ignore")) for i in range(len(data) + 1)]
    spans, runs, bodies = set(), set(), set()
    todo = [new_parser("python").parse(data).root_node]
    while todo:
        node = todo.pop()
        spans.add((char[node.start_byte], char[node.end_byte]))
        children = [(char[c.start_byte], char[c.end_byte]) for c in node.named_children]
        runs |= {(a[0], b[1]) for k, a in enumerate(children) for b in children[k + 1 :]}
        if node.type == "block":
            bodies.add((children[0][0], children[-1][1]))
        todo += node.named_children
    return spans, runs, bodies


def test_ast_holes_are_where_an_editor_asks():
    found = ast_holes(CODE)
    assert set(found) == set(D.AST_HOLES) - {"node"} | set(NODE_KINDS), "every kind of hole occurs"
    for kind, holes in found.items():
        for prefix, middle, suffix in holes if kind != "chars" else ():  # no hole starts or ends inside a word
            text, i, j = prefix + middle + suffix, len(prefix), len(prefix) + len(middle)
            where = (kind, prefix[-20:], middle)
            assert not (is_word(text, i - 1) and is_word(text, i)), where
            assert not (is_word(text, j - 1) and is_word(text, j)), where
    for prefix, middle, suffix in found["lines"]:  # a fresh line: after the indentation, to a line end
        assert not line_of(prefix).strip() and middle and not middle[0].isspace() and suffix[:1] in ("", "\n")
        assert prefix == "" or prefix.endswith("\n" + line_of(prefix))
    for prefix, middle, suffix in found["line_rest"]:  # mid-line, to the line's end
        assert line_of(prefix).strip() and middle.strip() and suffix[:1] in ("", "\n")
        assert not line_of(prefix).endswith('""') or middle[0] != '"', "not inside a triple quote"
    for prefix, middle, suffix in found["new_line"]:  # at the end of a line, a new line
        assert middle.startswith("\n") and middle.strip() and line_of(prefix).strip() and suffix[:1] in ("", "\n")
    # lines end complete, not in `raise ValueError(`
    for prefix, middle, suffix in found["new_line"] + found["empty"] + found["lines"]:
        assert not (prefix + middle).rstrip(" ").endswith(("(", ","))
    ends = starts = 0
    for prefix, middle, suffix in found["empty"]:  # nothing: at the end of a line, or before a line's code
        assert middle == ""
        ends += bool(line_of(prefix).strip()) and suffix[:1] == "\n"
        starts += not line_of(prefix).strip() and bool(suffix.split("\n", 1)[0].strip())
    assert ends + starts == len(found["empty"]) and ends and starts
    assert all(s == "" and m for _, m, s in found["end"])
    spans, runs, bodies = named_spans(CODE)
    for kind in NODE_KINDS:  # whole nodes: a node, sibling statements, a block's body
        for prefix, middle, suffix in found[kind]:
            i, j = len(prefix), len(prefix) + len(middle)
            if kind in ("expression", "statement"):
                assert (i, j) in spans, (kind, middle)
            elif kind == "statements":
                assert (i, j) in runs, middle
            else:
                assert (i, j) in bodies, middle
            if kind != "expression":
                assert not line_of(prefix).strip() or kind == "block" and line_of(prefix).rstrip().endswith(":")
    assert any(p.endswith("def main():\n    ") and m.startswith("shapes = [")
               for p, m, _ in found["block"]), "a function body after `def ...:` + Enter"


def test_line_rests_start_at_a_token():
    """Mid-line holes start after a blank or where a token starts: never inside `==`, `f"` or an escape."""
    text = "x = ['one\\n', f\"a {b} c\"] == y  # note\n"
    for path, inside in (("a.py", ("f|\"", "\\|n", "=|=")), ("a.txt", ("=|=",))):
        starts = {len(p) for kinds, holes in ast_holes(text, path, seeds=range(2000)).items()
                  if kinds in ("line_rest", "end") for p, _, _ in holes}
        shown = {text[: i] + "|" + text[i :] for i in starts}
        assert not {cut for cut in inside for s in shown if cut in s}, path
        cuts = ("= |[", "[|'", "'|one", "f\"a |{", "# |note")
        assert all(any(cut in s for s in shown) for cut in cuts), (path, sorted(shown))


def test_ast_mixture_shares_are_the_configured_ones():
    found = ast_holes(CODE, seeds=range(4000))
    shares = {kind: len(holes) / 4000 for kind, holes in found.items()}
    shares["node"] = sum(shares.pop(kind) for kind in NODE_KINDS)
    for kind, share in D.AST_HOLES.items():
        assert abs(shares[kind] - share) < 0.03, (kind, shares[kind], share)


def test_ast_holes_fall_back_to_lines_without_a_parse():
    broken = "def f(:\n    ))) = = {\n  x y z ]]\n\tclass class\n" * 3
    assert D.Syntax.of(broken, "broken.py").root.has_error
    for text, path in ((broken, "broken.py"), (CODE, "shapes.txt"), (CODE.replace("\n", "\r\n"), "notes")):
        assert (D.Syntax.of(text, path) is None) == (path != "broken.py")
        found = ast_holes(text, path, seeds=range(400))
        assert not set(found) & set(NODE_KINDS) and found["lines"] and found["new_line"]
        for prefix, middle, suffix in found["lines"]:
            assert not line_of(prefix).strip() and middle.strip() and suffix[:1] in ("", "\r", "\n")
    assert set(ast_holes("\n\n  \n", seeds=range(20))) == {"chars"}  # nothing but blank lines


def test_ast_holes_in_a_chunk_use_the_documents_tree():
    """A chunk from the middle of a file: holes come from the whole file's parse, and stay inside the chunk."""
    start = CODE.index("    def scaled")
    chunk = CODE[start : CODE.index("def main")]
    syntax = D.Syntax.of(CODE, "shapes.py")
    spans, runs, bodies = named_spans(CODE)
    kinds = Counter()
    for seed in range(600):
        prefix, middle, suffix, kind = D.ast_split(chunk, random.Random(seed), syntax, start)
        assert prefix + middle + suffix == chunk
        kinds[kind] += 1
        span = (start + len(prefix), start + len(prefix) + len(middle))
        assert kind not in NODE_KINDS or span in {"block": bodies, "statements": runs}.get(kind, spans)
        # the class's body is not in the chunk
        assert kind != "block" or not middle.startswith(("@dataclass", "radius: float"))
    assert all(kinds[kind] for kind in NODE_KINDS)


def test_ast_recipe_is_deterministic_and_recorded(corpus_dir, tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    split, offsets = D.ast_split, []

    def checked(text, rng, syntax, offset):  # each chunk is split with the document's tree, at its offset
        assert CODE[offset : offset + len(text)] == text and syntax.root.end_byte == len(CODE.encode())
        offsets.append(offset)
        return split(text, rng, syntax, offset)

    monkeypatch.setattr(D, "ast_split", checked)
    config = DataConfig(seq_len=SEQ, holes="ast", fim_rate=1.0)
    stats = [Counter() for _ in range(3)]
    runs = [D.document_examples(CODE, random.Random(f"0/train/{n}"), tiny_tokenizer, config, path="shapes.py",
                                repo="r", stats=s) for n, s in zip((7, 7, 8), stats)]
    assert runs[0] == runs[1] != runs[2] and stats[0] == stats[1] and sum(stats[0].values()) == len(runs[0])
    assert "".join("".join(parse(ids, tiny_tokenizer)[3:]) for ids, _, _ in runs[0]) == CODE and len(set(offsets)) > 2
    monkeypatch.setattr(D, "chunks", lambda text, tokenizer, budget: [text])  # a chunk too long for a row: halved
    halved = D.document_examples(CODE, random.Random(0), tiny_tokenizer, config, path="shapes.py")
    assert "".join("".join(parse(ids, tiny_tokenizer)[3:]) for ids, _, _ in halved) == CODE and len(halved) > 2
    monkeypatch.undo()
    config = DataConfig(seq_len=SEQ, shard_rows=60, workers=0, holes="ast")
    meta = build_data(corpus_dir, tiny_model_dir, tmp_path / "ast", config)
    assert meta["holes"] == meta["params"]["holes"] == "ast" and meta["params"]["ast_holes"] == D.AST_HOLES
    train = meta["splits"]["train"]
    assert sum(train["holes"].values()) == train["psm"] + train["spm"]
    assert train["holes"]["lines"] and train["holes"]["statement"]
    pooled = build_data(corpus_dir, tiny_model_dir, tmp_path / "pooled",
                        DataConfig(seq_len=SEQ, shard_rows=60, workers=2, holes="ast"))
    assert pooled["splits"] == meta["splits"]
    for name in meta["splits"]["train"]["shards"]:
        assert (tmp_path / "ast" / name).read_bytes() == (tmp_path / "pooled" / name).read_bytes()
    chars = build_data(corpus_dir, tiny_model_dir, tmp_path / "chars",
                       DataConfig(seq_len=SEQ, shard_rows=60, workers=0))
    assert (tmp_path / "chars" / "train-00000.npy").read_bytes() != (tmp_path / "ast" / "train-00000.npy").read_bytes()
    assert "holes" not in chars["splits"]["train"] and chars["holes"] == "chars"
    with pytest.raises(ValueError, match="hole recipe"):
        build_data(corpus_dir, tiny_model_dir, tmp_path / "bad", DataConfig(holes="words"))


def test_masked_prompts_teach_the_middles_only(corpus_dir, tiny_model_dir, tiny_tokenizer, tmp_path):
    """`mask_prompt` (a fine-tune's completion-only loss) stores the same rows with each FIM prompt's ids negated:
    the taught targets are the middles and their EOT, and padding."""
    config = DataConfig(seq_len=SEQ, shard_rows=60, workers=0, holes="ast", fim_rate=1.0)
    plain = build_data(corpus_dir, tiny_model_dir, tmp_path / "plain", config)
    masked = build_data(corpus_dir, tiny_model_dir, tmp_path / "masked", replace(config, mask_prompt=True))
    assert masked["dtype"] == "int32" and plain["dtype"] == "uint16" and masked["params"]["mask_prompt"]
    assert masked["splits"] == plain["splits"]
    rows, same = (np.concatenate([np.load(tmp_path / run / name) for name in masked["splits"]["train"]["shards"]])
                  for run in ("masked", "plain"))
    assert np.array_equal(np.where(rows < 0, ~rows, rows), same)
    eot, prefix = (tiny_tokenizer.convert_tokens_to_ids(t) for t in (fim.EOT, fim.FIM_PREFIX))
    taught = rows[(rows >= 0) & (rows != masked["pad_id"])]
    assert (taught == eot).sum() == masked["splits"]["train"]["examples"] and prefix not in taught
    assert 0 < (rows < 0).sum() and (rows >= 0).sum() < (rows < 0).sum()  # most of a row is read, not taught


def test_chars_recipe_is_unchanged(tiny_tokenizer):
    """The chars recipe makes the examples it made before `holes` existed: digests of these loops run then
    (the splits and kinds depend on the random draws only, not on the tokenizer)."""
    text = "def add(a, b):\n    return a + b\n\nclass K:\n    x = [1, 2]\n\n\nprint(add(1, 2))  # ünï\n"
    assert DataConfig().holes == "chars"

    def split_of(ids, kind, context):
        mode, _, _, prefix, middle, suffix = parse(ids, tiny_tokenizer)
        assert prefix + middle + suffix == text and mode == kind
        return (kind, context, len(prefix), len(middle)) if kind != "plain" else (kind, context)

    documents, examples, shared = [], [], random.Random(0)  # a document per seed; one generator through many examples
    for rates in ((0.0, 0.0), (0.5, 0.1), (1.0, 0.5)):
        config = DataConfig(seq_len=256, line_span_rate=rates[0], end_rate=rates[1])
        for seed in range(40):
            (example,) = D.document_examples(text, random.Random(seed), tiny_tokenizer, config, path="a/k.py", repo="r")
            documents.append(split_of(*example))
        examples += [split_of(*D._example(text, shared, tiny_tokenizer, config, "a/k.py", "r")) for _ in range(40)]
    assert documents[:4] == [("spm", True, 62, 3), ("psm", True, 57, 6), ("plain", False), ("spm", True, 74, 6)]
    assert hashlib.sha256(repr(documents).encode()).hexdigest()[:16] == "5c1ef648058b64a8"
    assert hashlib.sha256(repr(examples).encode()).hexdigest()[:16] == "874ed63c330a5fcb"


def test_cli_holes(corpus_dir, tiny_model_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    D.add_parser(parser.add_subparsers())
    out = tmp_path / "cli"
    args = parser.parse_args(["data", "--corpus", str(corpus_dir), "--tokenizer", str(tiny_model_dir), "--out",
                              str(out), "--seq-len", "96", "--workers", "0", "--holes", "ast"])
    assert args.run(parser, args) == 0
    assert "train holes: " in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["params"]["holes"] == "ast"
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "--corpus", "c", "--tokenizer", "t", "--out", "o", "--holes", "words"])
