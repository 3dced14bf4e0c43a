"""Data stage: FIM examples laid out exactly as the server prompts, packed whole into rows, deterministic and resumable."""

from __future__ import annotations

import argparse
import json
import random
import sysconfig
from collections import Counter
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
from midline.training.tiny_model import stdlib_corpus

SEQ = 128
CONFIG = DataConfig(seq_len=SEQ, shard_rows=60, workers=2)


def write_corpus(out: Path, n_train: int = 14, n_valid: int = 3) -> Path:
    """A corpus in the corpus stage's format: small stdlib files, plus an empty, a minified and a tricky document."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [f for f in stdlib_corpus(limit=120) if f.stat().st_size < 12_000][: n_train + n_valid]
    docs = [{"repo": "python/cpython", "path": f.relative_to(root).as_posix(), "text": f.read_text()} for f in files]
    docs[1:1] = [
        {"repo": "acme/empty", "path": "empty.py", "text": ""},
        {"repo": "acme/web", "path": "static/app.min.js", "text": "var a=" + ",".join(f"x{i}" for i in range(600)) + ";\n"},
        {"repo": "acme/odd", "path": "odd.py", "text": 's = "<|endoftext|> <|midline:fim_pad|>"  # ünïcödé 🙂\n\tx = 1\r\n'},
    ]
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", docs[: n_train + 3]), ("valid", docs[n_train + 3 :])):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    (out / "manifest.json").write_text(json.dumps({"documents": len(docs)}))
    return out


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


TEXTS = ["def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n", "x = '<|endoftext|>'  # ünï 🙂\n\tif x:\r\n  pass", "a"]


@pytest.mark.parametrize("mode", ["psm", "spm"])
@pytest.mark.parametrize("context", [True, False])
def test_example_is_the_servers_prompt_then_middle_then_eot(tiny_engine, tiny_tokenizer, mode, context):
    """Token for token: training example == Engine.encode(FimPrompt(prefix, suffix, path, repo), mode) + middle + EOT."""
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
    assert all(len(ids) <= SEQ + 1 for ids, _, _ in D.document_examples(one_line, random.Random(0), tiny_tokenizer, config))


# -- the built data -------------------------------------------------------------------------------


def test_meta_and_shards(built, tiny_tokenizer):
    out, meta = built
    assert meta["complete"] and meta["seq_len"] == SEQ and meta["dtype"] == "uint16" and meta["vocab_size"] == 1024
    assert meta["pad_id"] == tiny_tokenizer.convert_tokens_to_ids(fim.FIM_PAD) and meta["eot_id"] == 0
    assert json.loads((out / "meta.json").read_text()) == meta
    train = meta["splits"]["train"]
    assert len(train["shards"]) > 1 and train["documents"] == 16  # the empty document is skipped
    assert train["examples"] == train["psm"] + train["spm"] + train["plain"] and train["psm"] and train["spm"] and train["plain"]
    assert train["fill"] > 0.85
    for split in D.SPLITS:
        arrays = [np.load(out / name, allow_pickle=False) for name in meta["splits"][split]["shards"]]
        assert all(a.shape[1] == SEQ + 1 and a.dtype == np.uint16 for a in arrays)
        assert sum(len(a) for a in arrays) == meta["splits"][split]["rows"]
        assert sum(int((a != meta["pad_id"]).sum()) for a in arrays) == meta["splits"][split]["tokens"]
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (Path(meta["tokenizer"]) / "tokenizer.json").read_bytes()


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
            examples = D.document_examples(doc["text"], rng, tiny_tokenizer, CONFIG, path=doc["path"], repo=D.shown_repo(doc["repo"])) if doc["text"] else []
            expected += [tuple(ids) for ids, _, _ in examples]
        assert sorted(found) == sorted(expected)
        assert len(found) == meta["splits"][split]["examples"]
        for ids in found[:50]:
            parse(list(ids), tiny_tokenizer)  # valid layouts


def test_deterministic_whatever_the_workers(built, corpus_dir, tiny_model_dir, tmp_path):
    out, meta = built
    inline = build_data(corpus_dir, tiny_model_dir, tmp_path / "inline", DataConfig(seq_len=SEQ, shard_rows=60, workers=0))
    assert inline["splits"] == meta["splits"]
    for name in meta["splits"]["train"]["shards"]:
        assert (tmp_path / "inline" / name).read_bytes() == (out / name).read_bytes()
    other = build_data(corpus_dir, tiny_model_dir, tmp_path / "seed1", DataConfig(seq_len=SEQ, shard_rows=60, workers=0, seed=1))
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
    assert resumed["splits"] == meta["splits"] and calls[2:] and not set(calls[2:]) & set(calls[:2])  # finished shards skipped
    assert all((work / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    for name in meta["splits"]["train"]["shards"]:
        assert (work / name).read_bytes() == (out / name).read_bytes()

    calls.clear()
    assert build_data(corpus_dir, tiny_model_dir, work, config) == resumed and not calls  # complete: nothing to do
    with pytest.raises(ValueError, match="--force"):
        build_data(corpus_dir, tiny_model_dir, work, DataConfig(seq_len=SEQ, shard_rows=60, workers=0, fim_rate=0.5))
    forced = build_data(corpus_dir, tiny_model_dir, work, DataConfig(seq_len=SEQ, shard_rows=60, workers=0, fim_rate=0.5), force=True)
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
    assert len({tuple(r.tolist()) for r in epoch0}) == len(epoch0) and {tuple(r.tolist()) for r in epoch0} <= rows  # no repeats
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
    args = parser.parse_args(["data", "--corpus", str(corpus_dir), "--tokenizer", str(tiny_model_dir), "--out", str(out),
                              "--seq-len", "96", "--fim-rate", "0.5", "--spm-rate", "0.5", "--seed", "2", "--workers", "0"])
    assert args.run(parser, args) == 0
    printed = capsys.readouterr().out
    assert "train: 16 documents" in printed and "PSM" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seq_len"], meta["fim_rate"], meta["seed"]) == (96, 0.5, 2)
