"""SFT stage: instruction tasks mined from the corpus, asked in the server's own prompt shapes, and a
fine-tune of a trained model on them with the loss on the answers only.

    midline-train sft-mine --corpus work/corpus --out work/sft-mined
    midline-train sft      --model model/default --corpus work/corpus --mined work/sft-mined --out work/sft

Mining (`mine`), per corpus split (so the held-out examples come from the held-out packages):
- explain: functions and classes with a docstring (tree-sitter; up to `explain_per_file` a file). The
  prompt is the definition with an empty docstring slot (`tasks.explain_prompt`); the answer is the
  docstring as written.
- tests:   a module and its test file in the same package (`test_<module>.py` / `<module>_test.py`,
  beside it or in a tests/ dir, the nearest one), in the shape `tasks.tests_example` takes (the test
  file's header is fixed; the answer is the file from its first `def test_` on).
- fix:     a synthetic bug in a function (`mutate`: a comparison or arithmetic operator swapped, `and`/`or`
  swapped, an integer constant, range bound or slice index off by one, two call arguments swapped, or a
  variable read replaced by another variable of the function bound before it; up to `fix_per_file` a
  file); the mutant compiles and differs from the original in one token. The prompt is the buggy
  function (`tasks.fix_prompt`); the answer the original.
Each record is JSON ({"kind", "repo", "path", ...}); `task_example(record)` turns it into the
(FimPrompt, middle) pair of `midline.model.tasks`, so an example is laid out exactly as the server asks.

Data (`build_sft_data`): each example is `FimFormat.encode_example(prompt, middle)`, i.e. the served
prompt, the middle and EOT, in the format's default layout (SPM for midline, as the server sends it).
The prompt's tokens are stored negated (`~id`): the model reads them, and `train.loss_sum` takes no
loss on them, so the loss falls on the middle and EOT only. A share of plain FIM examples of the corpus
(`fim_share` of the tokens, the data stage's recipe, full loss) keeps completion quality. Examples are
packed whole into rows like the data stage's, in the same meta.json + .npy layout (int32), so
`train.train` fine-tunes on them unchanged: resumable, checkpointed, on any device.

The stage: mine (unless --mined), build the rows, `train.train` from the model's weights (`init`), and
`export.export` the result. Every step skips work already done, so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import textwrap
import time
import typing
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np
import tree_sitter

from midline.model import DEFAULT_MODEL_DIR, tasks
from midline.model.fim import EOT, FIM_PAD, MIDLINE, FimFormat, FimPrompt, encode_text
from midline.model.syntax import is_string_statement, line_start, node_name, parse, unwrap
from midline.training.stage import SPLITS, command, corpus_fingerprint, read_json, sha256_file, write_json, write_jsonl, write_npy

KINDS = ("explain", "tests", "fix")
MUTATIONS = ("comparison", "arithmetic", "boolean", "off_by_one", "swapped_args", "wrong_variable")


@dataclass
class MineConfig:
    seed: int = 0
    max_file_chars: int = 200_000  # larger corpus files are skipped
    # explain
    explain_per_file: int = 8  # at most this many definitions per file (a seeded sample)
    max_code_chars: int = 3000  # the definition, docstring included
    min_docstring_chars: int = 12  # non-space characters
    max_docstring_chars: int = 1200
    # fix
    fix_per_file: int = 6
    fix_lines: tuple[int, int] = (3, 40)  # function length in lines
    max_fix_chars: int = 1500
    # tests
    max_module_chars: int = 30_000  # modules and test files (shrunk to fit a row when encoded)
    max_test_chars: int = 30_000
    workers: int | None = None  # mining processes; None: one per core, 0: in this process


# -- definitions ----------------------------------------------------------------------------------


def definitions(tree: tree_sitter.Tree) -> Iterator[tree_sitter.Node]:
    """Function and class definitions at any depth (a decorated one with its decorators), in order."""
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "decorated_definition" or (node.type in ("function_definition", "class_definition") and node.parent.type != "decorated_definition"):
            yield node
        stack.extend(reversed([c for c in node.named_children if c.type in _HOLDS_DEFINITIONS]))


# statements that can hold a def or class (expressions can't: the walk skips them)
_HOLDS_DEFINITIONS = {
    "block", "decorated_definition", "function_definition", "class_definition", "if_statement", "elif_clause", "else_clause",
    "try_statement", "except_clause", "except_group_clause", "finally_clause", "with_statement", "for_statement", "while_statement",
    "match_statement", "case_clause",
}


def definition_code(data: bytes, node: tree_sitter.Node) -> str | None:
    """The definition's lines as the server passes code to `midline.model.tasks` (server/actions.py: dedented,
    a method as if it were top level, one final newline); None if it does not start its line or dedents
    badly (a multi-line string less indented than the code)."""
    first = line_start(data, node.start_byte)
    if data[first:node.start_byte].strip():
        return None
    try:
        code = textwrap.dedent(data[first:node.end_byte].decode("utf-8")).strip("\n").rstrip() + "\n"
    except UnicodeDecodeError:
        return None
    return code if code[:1] not in (" ", "\t") else None


# -- explain --------------------------------------------------------------------------------------


def explain_records(doc: dict, tree: tree_sitter.Tree, rng: random.Random, c: MineConfig) -> list[dict]:
    """Definitions with a docstring worth learning (see MineConfig), at most `explain_per_file` of them."""
    data = doc["text"].encode("utf-8", "surrogatepass")
    out = []
    for node in definitions(tree):
        if node.end_byte - node.start_byte > 4 * c.max_code_chars or b'"""' not in node.text:
            continue
        code = definition_code(data, node)
        if code is None or len(code) > c.max_code_chars:
            continue
        example = tasks.explain_example(code, path=doc["path"])
        if example is None:
            continue
        docstring = example[1]
        if not (c.min_docstring_chars <= len("".join(docstring.split())) and len(docstring) <= c.max_docstring_chars):
            continue
        out.append({"kind": "explain", "repo": doc["repo"], "path": doc["path"], "name": node_name(node, "python"), "code": code})
    return _sample(out, c.explain_per_file, rng)


# -- fix: synthetic bugs --------------------------------------------------------------------------

_COMPARISON = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "is": "is not", "is not": "is", "in": "not in", "not in": "in"}
_ARITHMETIC = {"+": "-", "-": "+", "*": "/", "/": "*", "//": "/", "%": "//", "+=": "-=", "-=": "+=", "*=": "/=", "/=": "*=",
               "<<": ">>", ">>": "<<", "&": "|", "|": "&"}
_BOOLEAN = {"and": "or", "or": "and"}
# callees whose arguments commute, or whose order is immaterial to a test: swapping them is no bug
_SYMMETRIC_CALLS = {"max", "min", "print", "set", "frozenset", "hash", "id", "any", "all", "sorted", "isinstance", "issubclass"}
_OFF_BY_ONE_PARENTS = {"slice", "subscript", "comparison_operator", "binary_operator", "argument_list", "unary_operator"}
_PARAMETER_TYPES = {"identifier", "default_parameter", "typed_parameter", "typed_default_parameter", "list_splat_pattern", "dictionary_splat_pattern"}

Site = tuple[int, int, bytes]  # (start byte, end byte, replacement)


def mutation_sites(code: str) -> dict[str, list[Site]]:
    """Every place in the body of the function `code` where each kind of mutation applies."""
    tree = parse("python", code)
    function = unwrap(tree.root_node.named_children[0], "python") if tree.root_node.named_children else None
    if function is None or function.type != "function_definition":
        return {}
    body = function.child_by_field_name("body")
    names = _local_names(function)
    data = code.encode()
    sites: dict[str, list[Site]] = defaultdict(list)
    stack = [body]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        kind, parent = node.type, node.parent
        if not node.is_named:
            op = node.text.decode()
            if parent.type == "comparison_operator" and op in _COMPARISON:
                sites["comparison"].append((node.start_byte, node.end_byte, _COMPARISON[op].encode()))
            elif parent.type in ("binary_operator", "augmented_assignment") and op in _ARITHMETIC and not _is_string_concat(parent):
                sites["arithmetic"].append((node.start_byte, node.end_byte, _ARITHMETIC[op].encode()))
            elif parent.type == "boolean_operator" and op in _BOOLEAN:
                sites["boolean"].append((node.start_byte, node.end_byte, _BOOLEAN[op].encode()))
        elif kind == "integer" and parent.type in _OFF_BY_ONE_PARENTS and node.text.isdigit() and int(node.text) < 1000:
            if parent.type == "argument_list" and _callee(parent.parent) != "range":
                continue
            value = int(node.text)
            sites["off_by_one"] += [(node.start_byte, node.end_byte, str(v).encode()) for v in (value - 1, value + 1) if v >= 0]
        elif kind == "argument_list" and _callee(parent) not in _SYMMETRIC_CALLS:
            args = [a for a in node.named_children if a.type != "comment"]
            for a, b in zip(args, args[1:]):
                if _positional(a) and _positional(b) and a.text != b.text:
                    sites["swapped_args"].append((a.start_byte, b.end_byte, b.text + data[a.end_byte:b.start_byte] + a.text))
        elif kind == "identifier" and node.text.decode() in names and _is_read(node):
            name = node.text.decode()
            others = [n for n, first in names.items() if n != name and first < node.start_byte]
            sites["wrong_variable"] += [(node.start_byte, node.end_byte, n.encode()) for n in others]
    return sites


def mutate(code: str, rng: random.Random, kinds: Iterable[str] = MUTATIONS) -> tuple[str, str] | None:
    """(mutation kind, mutant) of the function `code`: a random kind that applies, then a random site of it,
    such that the mutant parses (Python's own parser) and differs. None if none does."""
    sites = mutation_sites(code)
    kinds = [k for k in kinds if sites.get(k)]
    rng.shuffle(kinds)
    data = code.encode()
    for kind in kinds:
        candidates = sites[kind]
        for start, end, new in rng.sample(candidates, min(len(candidates), 4)):
            mutant = (data[:start] + new + data[end:]).decode()
            if mutant != code and compiles(mutant):  # a different token: a different syntax tree
                return kind, mutant
    return None


def compiles(code: str) -> bool:
    """Whether Python's own parser accepts `code` (stricter than tree-sitter: `a < = b`, `x is not in y`)."""
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _local_names(function: tree_sitter.Node) -> dict[str, int]:
    """Parameters and names assigned in the function (not self/cls): name -> the byte after its first binding
    (a parameter's own position, the end of an assignment statement, a loop's target)."""
    names: dict[str, int] = {}
    params = function.child_by_field_name("parameters")
    for p in params.named_children if params is not None else ():
        if p.type in _PARAMETER_TYPES:
            ident = p if p.type == "identifier" else next((c for c in p.named_children if c.type == "identifier"), None)
            if ident is not None:
                names.setdefault(ident.text.decode(), ident.start_byte)
    stack = [function.child_by_field_name("body")]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        target = bound = None
        if node.type in ("assignment", "augmented_assignment"):
            target, bound = node.child_by_field_name("left"), node.end_byte
        elif node.type in ("for_statement", "for_in_clause"):
            target = node.child_by_field_name("left")
            bound = target.end_byte if target is not None else None
        elif node.type == "as_pattern_target":
            target, bound = node, node.end_byte
        if target is not None:
            for ident in [target] if target.type == "identifier" else [c for c in target.named_children if c.type == "identifier"]:
                names[ident.text.decode()] = min(bound, names.get(ident.text.decode(), bound))
    for skip in ("self", "cls"):
        names.pop(skip, None)
    return names


def _is_read(node: tree_sitter.Node) -> bool:
    """Whether an identifier is a variable being read (not a name being bound, an attribute or a keyword)."""
    parent = node.parent
    if parent.type == "attribute" and parent.child_by_field_name("attribute") == node:
        return False
    if parent.type == "keyword_argument" and parent.child_by_field_name("name") == node:
        return False
    if parent.type in ("assignment", "augmented_assignment", "for_statement", "for_in_clause") and parent.child_by_field_name("left") == node:
        return False
    return parent.type not in ("pattern_list", "tuple_pattern", "as_pattern_target", "parameters", "default_parameter", "typed_parameter",
                               "typed_default_parameter", "global_statement", "nonlocal_statement", "dotted_name", "aliased_import",
                               "function_definition", "class_definition", "lambda_parameters", "list_splat_pattern", "dictionary_splat_pattern")


def _callee(call: tree_sitter.Node | None) -> str:
    if call is None or call.type != "call":
        return ""
    function = call.child_by_field_name("function")
    if function is None:
        return ""
    if function.type == "attribute":
        function = function.child_by_field_name("attribute")
    return function.text.decode() if function is not None else ""


def _positional(arg: tree_sitter.Node) -> bool:
    return arg.type not in ("keyword_argument", "list_splat", "dictionary_splat", "generator_expression")


def _is_string_concat(node: tree_sitter.Node) -> bool:
    return any(c.type in ("string", "concatenated_string") for c in node.named_children)


def fix_records(doc: dict, tree: tree_sitter.Tree, rng: random.Random, c: MineConfig) -> list[dict]:
    """One synthetic bug in each of up to `fix_per_file` functions of fitting size."""
    data = doc["text"].encode("utf-8", "surrogatepass")
    functions = []
    for node in definitions(tree):
        if unwrap(node, "python").type != "function_definition":
            continue
        lines = node.end_point.row - node.start_point.row + 1
        if c.fix_lines[0] <= lines <= c.fix_lines[1] and node.end_byte - node.start_byte <= 2 * c.max_fix_chars:
            functions.append(node)
    rng.shuffle(functions)
    out = []
    for node in functions:
        if len(out) >= c.fix_per_file:
            break
        code = definition_code(data, node)
        if code is None or len(code) > c.max_fix_chars:
            continue
        found = mutate(code, rng)
        if found is not None:
            out.append({"kind": "fix", "repo": doc["repo"], "path": doc["path"], "name": node_name(node, "python"), "mutation": found[0],
                        "buggy": found[1], "fixed": code})
    return out


# -- tests: a module and its test file ------------------------------------------------------------

_TEST_FILE = re.compile(r"^(?:test_(\w+)|(\w+?)_test)\.py$")


def tested_module(test_path: str) -> str | None:
    """The module name a test file is named for (`test_foo.py`, `foo_test.py` -> `foo`), else None."""
    match = _TEST_FILE.match(PurePosixPath(test_path).name)
    return (match.group(1) or match.group(2)) if match else None


def test_pairs(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(module, test file) pairs within one package: for each test file, the module of its name whose
    directory is nearest the test file's (its tests/ or test/ directory left out)."""
    modules: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for doc in docs:
        path = PurePosixPath(doc["path"])
        if tested_module(doc["path"]) is None and path.suffix == ".py" and path.stem != "__init__":
            modules[(doc["repo"], path.stem)].append(doc)
    pairs = []
    for doc in docs:
        name = tested_module(doc["path"])
        candidates = modules.get((doc["repo"], name or ""), [])
        if not candidates:
            continue
        home = [p for p in PurePosixPath(doc["path"]).parent.parts if p not in ("tests", "test", "testing")]

        def nearness(module: dict) -> tuple[int, int]:
            parts = PurePosixPath(module["path"]).parent.parts
            shared = next((i for i, (a, b) in enumerate(zip(parts, home)) if a != b), min(len(parts), len(home)))
            return shared - len(parts) - len(home), -len(module["path"])

        best = max(candidates, key=nearness)
        pairs.append((best, doc))
    return pairs


def tests_records(docs: list[dict], c: MineConfig) -> list[dict]:
    out = []
    for module, test in test_pairs(docs):
        if len(module["text"]) > c.max_module_chars or len(test["text"]) > c.max_test_chars:
            continue
        source = normalize_test_prelude(test["text"])
        if tasks.tests_example(module["path"], module["text"], source, test_path=test["path"]) is None:
            continue
        out.append({"kind": "tests", "repo": module["repo"], "path": module["path"], "module": module["text"],
                    "import_name": imported_as(source, tasks.module_name(module["path"])), "test_path": test["path"], "test": source})
    return out


def imported_as(test_source: str, stem: str) -> str:
    """The name a test file imports its module by: `pkg.sub.mod` from `from pkg.sub.mod import ...` (what
    the server's tests prompt names for a package module), else the file name."""
    match = re.search(rf"^(?:from|import)\s+((?:[\w.]+\.)?{re.escape(stem)})\b", test_source, re.MULTILINE)
    return match.group(1) if match else stem


def normalize_test_prelude(source: str) -> str:
    """A test file with what precedes its first test in the shape `tasks.tests_example` reads (the fixed
    header of a tests prompt stands for it): no module docstring, and each import on one line."""
    data = source.encode("utf-8", "surrogatepass")
    edits = []
    for node in parse("python", source).root_node.named_children:
        if node.type in ("function_definition", "class_definition", "decorated_definition"):
            break
        if is_string_statement(node) and not edits:
            edits.append((node.start_byte, node.end_byte, b""))  # the module docstring
        elif node.type in ("import_statement", "import_from_statement", "future_import_statement") and b"\n" in node.text:
            one_line = re.sub(rb",?\s*\)$", b"", re.sub(rb"\(\s*", b"", b" ".join(node.text.split())))
            edits.append((node.start_byte, node.end_byte, one_line))
    for start, end, new in reversed(edits):
        data = data[:start] + new + data[end:]
    return data.decode("utf-8", "surrogatepass").lstrip("\n")


# -- mining a corpus ------------------------------------------------------------------------------


def mine_documents(docs: list[dict], split: str, c: MineConfig) -> tuple[list[dict], Counter]:
    """The explain and fix records of corpus documents, and their counts (tests pairs span files: `tests_records`)."""
    records: list[dict] = []
    counts: Counter = Counter()
    for doc in docs:
        if not doc["path"].endswith(".py") or not 0 < len(doc["text"]) <= c.max_file_chars:
            continue
        rng = random.Random(f"{c.seed}/{split}/{doc['repo']}/{doc['path']}")
        tree = parse("python", doc["text"])
        for record in explain_records(doc, tree, rng, c) + fix_records(doc, tree, rng, c):
            records.append(record)
            counts[record["kind"]] += 1
            if record["kind"] == "fix":
                counts[f"fix.{record['mutation']}"] += 1
        counts["files"] += 1
    return records, counts


def mine(corpus_dir: Path, out_dir: Path, config: MineConfig = MineConfig(), *, force: bool = False, command: list[str] | None = None) -> dict:
    """Mine `corpus_dir`'s train and valid splits into `out_dir`/{train,valid}.jsonl; returns meta.json.
    A finished output with the same settings and corpus is kept."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    params = {**asdict(config), "workers": None, "corpus": corpus_fingerprint(corpus_dir)}
    meta_path = out_dir / "meta.json"
    old = read_json(meta_path)
    if old and old.get("complete") and not force:
        if old.get("params") != params:
            raise ValueError(f"{meta_path} was mined with other settings or from another corpus; pass --force to mine again")
        return old
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    start = time.monotonic()
    splits = {}
    for split in SPLITS:
        docs = [json.loads(line) for line in open(corpus_dir / f"{split}.jsonl", encoding="utf-8") if line.strip()]
        records, counts = _mine_parallel(docs, split, config)
        tests = tests_records(docs, config)
        counts["tests"] = len(tests)
        records += tests
        records.sort(key=lambda r: (r["repo"], r["path"], KINDS.index(r["kind"]), r.get("name", ""), r.get("test_path", "")))
        write_jsonl(out_dir / f"{split}.jsonl", records)
        splits[split] = {"records": len(records), **{k: counts[k] for k in sorted(counts)},
                         "packages": len({r["repo"] for r in records})}
    meta = {"splits": splits, "params": params, "command": command, "elapsed_s": round(time.monotonic() - start, 1), "complete": True}
    write_json(meta_path, meta, indent=1)
    return meta


def _mine_parallel(docs: list[dict], split: str, c: MineConfig) -> tuple[list[dict], Counter]:
    workers = (os.cpu_count() or 1) if c.workers is None else c.workers
    size = 64
    jobs = [(docs[i : i + size], split, c) for i in range(0, len(docs), size)]
    if workers <= 1 or len(jobs) <= 1:
        results = [mine_documents(*job) for job in jobs]
    else:
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(workers) as pool:
            results = pool.starmap(mine_documents, jobs, chunksize=1)
    records: list[dict] = []
    counts: Counter = Counter()
    for r, n in results:
        records += r
        counts.update(n)
    return records, counts


def read_records(mined_dir: Path, split: str) -> list[dict]:
    with open(Path(mined_dir) / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _sample(items: list, count: int, rng: random.Random) -> list:
    return items if len(items) <= count else [items[i] for i in sorted(rng.sample(range(len(items)), count))]


# -- examples: records in the server's prompt shapes ----------------------------------------------


def task_example(record: dict) -> tuple[FimPrompt, str] | None:
    """(prompt, middle) of a record, built by `midline.model.tasks` exactly as the server builds the prompt."""
    kind = record["kind"]
    if kind == "explain":
        return tasks.explain_example(record["code"], path=record["path"])
    if kind == "tests":
        example = tasks.tests_example(record["path"], record["module"], record["test"], test_path=record["test_path"])
        module = record.get("import_name") or tasks.module_name(record["path"])
        if example is None or module == tasks.module_name(record["path"]):
            return example
        # a package module: the header imports its dotted name, as the server's prompt does (tests_example
        # takes no `module`; these are its names, read the same way)
        prelude = record["test"][: re.search(r"^def test_", record["test"], re.MULTILINE).start()]
        names = [n.strip() for m in re.finditer(rf"^from\s+(?:[\w.]+\.)?{re.escape(tasks.module_name(record['path']))}\s+import\s+\(?([^)\n]+)\)?",
                                                prelude, re.MULTILINE) for n in m.group(1).split(",") if n.strip() and n.strip() != "*"]
        return tasks.tests_prompt(record["path"], record["module"], list(dict.fromkeys(names)), module=module, test_path=record["test_path"]), example[1]
    if kind == "fix":
        return tasks.fix_example(record["buggy"], record["fixed"], path=record["path"])
    raise ValueError(f"unknown record kind {kind!r}")


def encode_record(record: dict, tokenizer, room: int, fmt: FimFormat = MIDLINE, mode: str | None = None) -> tuple[list[int], int] | None:
    """(ids, prompt length) of a record's example — `fmt.encode_example`: the served prompt, the middle,
    end of text — in at most `room` tokens; None if it does not fit. A tests record too long is shrunk
    first (`shrink_tests`)."""
    for variant in shrink_tests(record) if record["kind"] == "tests" else [record]:
        example = task_example(variant)
        if example is None:
            continue
        prompt, middle = example
        ids = fmt.encode_example(prompt, middle, tokenizer, mode)
        if len(ids) <= room:  # encode_example = encode(prompt) + the middle's text + EOT
            return ids, len(ids) - len(encode_text(tokenizer, middle)) - 1
    return None


def shrink_tests(record: dict, tries: int = 6) -> Iterator[dict]:
    """The tests record, then smaller versions of it: the module reduced to the definitions the tests
    use (and the test file's imports from it to those names), then the first half of the tests, and so
    on down to one test."""
    yield record
    names = [t.name for t in tasks.test_functions(record["test"])]
    keep = len(names)
    module = tasks.module_name(record["path"])
    for _ in range(tries):
        test = record["test"] if keep == len(names) else tasks.keep_tests(record["test"], names[:keep])
        used = set(re.findall(r"\w+", tasks.tests_target(test) or ""))
        yield {**record, "test": _imports_used(test, module, used), "module": prune_module(record["module"], used)}
        if keep <= 1:
            return
        keep = max(1, keep // 2)


def _imports_used(test: str, module: str, used: set[str]) -> str:
    """The test file with its `from <package.>module import a, b as c` lines down to the names it uses."""

    def keep(match: re.Match) -> str:
        names = [n.strip() for n in match.group(2).split(",") if n.strip()]
        kept = [n for n in names if set(n.split()) & used]
        return f"{match.group(1)}{', '.join(kept)}" if kept else ""

    return re.sub(rf"^(from\s+(?:[\w.]+\.)?{re.escape(module)}\s+import\s+)\(?([^)\n]+)\)?[ \t]*$", keep, test, flags=re.MULTILINE)


def prune_module(source: str, names: set[str]) -> str:
    """The module without its docstring and its top-level functions and classes not in `names` (the
    imports and the rest stay)."""
    data = source.encode("utf-8", "surrogatepass")
    out, at = [], 0
    for i, node in enumerate(parse("python", source).root_node.named_children):
        docstring = i == 0 and is_string_statement(node)
        if docstring or (unwrap(node, "python").type in ("function_definition", "class_definition") and node_name(node, "python") not in names):
            out.append(data[at:node.start_byte])
            at = node.end_byte
            if data[at:at + 1] == b"\n":
                at += 1
    out.append(data[at:])
    return re.sub(r"\n{4,}", "\n\n\n", b"".join(out).decode("utf-8", "surrogatepass")).lstrip("\n")


# -- data: packed rows, the prompt's tokens stored negated ----------------------------------------


@dataclass
class SftConfig:
    seq_len: int = 0  # tokens per row; 0: the model's context length
    fim_share: float = 0.3  # share of the tokens from plain FIM examples of the corpus (full loss), to keep completion
    max_per_kind: int = 0  # at most this many examples of each kind per split (a seeded sample; 0: all)
    tests_repeat: int = 2  # training copies of each tests example (a few hundred in a corpus, against tens of thousands of the others)
    valid_examples: int = 3000  # held-out examples for the validation loss (a seeded sample; 0: all)
    mode: str = ""  # FIM layout of the examples; "": the format's default, as the server sends them
    seed: int = 0
    shard_rows: int = 16384
    workers: int | None = None  # tokenizing processes; None: one per core, 0: in this process


def masked(ids: list[int], prompt_len: int) -> np.ndarray:
    """An example as stored in rows: its first `prompt_len` ids negated (`~id`, no loss), the rest as they are."""
    out = np.asarray(ids, dtype=np.int32)
    out[:prompt_len] = ~out[:prompt_len]
    return out


def build_sft_data(mined_dir: Path, corpus_dir: Path | None, tokenizer_dir: Path, out_dir: Path, config: SftConfig, *,
                   force: bool = False, command: list[str] | None = None) -> dict:
    """Encode and pack the mined records (and `fim_share` of corpus FIM examples) into `out_dir`, in the
    data stage's layout (meta.json, {split}-NNNNN.npy, tokenizer/); returns meta.json's content."""
    from midline.training import data as D

    mined_dir, tokenizer_dir, out_dir = Path(mined_dir), Path(tokenizer_dir), Path(out_dir)
    if config.fim_share > 0 and corpus_dir is None:
        raise ValueError("a FIM share needs the corpus (--corpus), or pass --fim-share 0")
    if not 0 <= config.fim_share < 1:
        raise ValueError(f"fim_share must be in [0, 1), got {config.fim_share}")
    tokenizer = D.load_tokenizer(tokenizer_dir)
    seq_len = config.seq_len or _context_length(tokenizer_dir)
    mined_meta = read_json(mined_dir / "meta.json")
    if not (mined_meta or {}).get("complete"):
        raise FileNotFoundError(f"{mined_dir} holds no finished mining: run `midline-train sft-mine` first")
    params = {**asdict(config), "seq_len": seq_len, "workers": None, "tokenizer_sha256": sha256_file(tokenizer_dir / "tokenizer.json"),
              "mined": mined_meta["params"], "corpus": corpus_fingerprint(corpus_dir) if corpus_dir and config.fim_share else None}
    meta_path = out_dir / "meta.json"
    old = read_json(meta_path)
    if old and old.get("complete") and old.get("params") == params and not force:
        return old
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    for stale in out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9].npy"):
        stale.unlink()

    mode = config.mode or None
    data_config = D.DataConfig(seq_len=seq_len, seed=config.seed, workers=0)
    workers = (os.cpu_count() or 1) if config.workers is None else config.workers
    pool = None
    if workers > 0:
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_dir), seq_len + 1, mode, data_config))
    else:
        _init_worker(str(tokenizer_dir), seq_len + 1, mode, data_config)
    pad = tokenizer.convert_tokens_to_ids(FIM_PAD)
    splits = {}
    try:
        for split in SPLITS:
            rng = random.Random(f"{config.seed}/{split}")
            records = _choose(read_records(mined_dir, split), config, split, rng)
            asked = _run_jobs(pool, _encode_records, [records[i : i + 256] for i in range(0, len(records), 256)])
            stats = Counter(asked[2])
            sft_tokens = int(asked[1].sum())
            want = round(sft_tokens * config.fim_share / (1 - config.fim_share))
            fim = _fim_examples(pool, Path(corpus_dir) if corpus_dir else None, split, want, rng) if want else _empty()
            stats.update(fim[2])
            ids = np.concatenate([asked[0], fim[0]])
            lengths = np.concatenate([asked[1], fim[1]])
            order = np.random.default_rng([config.seed, SPLITS.index(split)]).permutation(len(lengths))
            shards, rows = _write_rows(out_dir, split, ids, lengths, order, seq_len + 1, pad, config.shard_rows)
            loss_tokens = int((ids >= 0).sum())  # tokens the loss is taken on: all but the prompts
            splits[split] = {"shards": shards, "rows": rows, "examples": len(lengths), "tokens": int(lengths.sum()), "sft_tokens": sft_tokens,
                             "fim_tokens": int(fim[1].sum()), "loss_tokens": loss_tokens,
                             "fill": round(int(lengths.sum()) / (rows * (seq_len + 1)), 4) if rows else 0.0, **dict(sorted(stats.items()))}
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    (out_dir / "tokenizer").mkdir(exist_ok=True)
    for name in D.TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, out_dir / "tokenizer" / name)
    meta = {
        "seq_len": seq_len, "dtype": "int32", "vocab_size": len(tokenizer), "pad_id": pad, "eot_id": tokenizer.convert_tokens_to_ids(EOT),
        "tokenizer": str(tokenizer_dir.resolve()), "format": MIDLINE.name, "sft": True, "masking": "prompt tokens stored as ~id (no loss)",
        "splits": splits, "params": params, "command": command, "complete": True,
    }
    write_json(meta_path, meta, indent=1)
    return meta


def _context_length(model_dir: Path) -> int:
    config = read_json(Path(model_dir) / "config.json") or {}
    return int(config.get("max_position_embeddings") or 1024)


def _choose(records: list[dict], c: SftConfig, split: str, rng: random.Random) -> list[dict]:
    """At most max_per_kind records of each kind (and valid_examples in all for the held-out split); the
    training split's tests records `tests_repeat` times."""
    if c.max_per_kind:
        by_kind = defaultdict(list)
        for r in records:
            by_kind[r["kind"]].append(r)
        records = [r for kind in KINDS for r in _sample(by_kind[kind], c.max_per_kind, rng)]
    if split == "valid" and c.valid_examples:
        records = _sample(records, c.valid_examples, rng)
    if split == "train" and c.tests_repeat > 1:
        records += [r for r in records if r["kind"] == "tests"] * (c.tests_repeat - 1)
    return records


_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, room: int, mode: str | None, data_config) -> None:
    from midline.training.data import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=load_tokenizer(Path(tokenizer_dir)), room=room, mode=mode, data_config=data_config)


Encoded = tuple[np.ndarray, np.ndarray, Counter]  # (ids of all examples, each example's length, counts)


def _encode_records(records: list[dict]) -> Encoded:
    tokenizer, room, mode = _WORKER["tokenizer"], _WORKER["room"], _WORKER["mode"]
    parts, lengths, stats = [], [], Counter()
    for record in records:
        encoded = encode_record(record, tokenizer, room, mode=mode)
        if encoded is None:
            stats[f"{record['kind']}_dropped"] += 1
            continue
        parts.append(masked(*encoded))
        lengths.append(len(encoded[0]))
        stats[record["kind"]] += 1
    return _joined(parts, lengths, stats)


def _encode_documents(docs: list[dict]) -> Encoded:
    from midline.training.data import document_examples, shown_repo

    tokenizer, config = _WORKER["tokenizer"], _WORKER["data_config"]
    parts, lengths, stats = [], [], Counter()
    for doc in docs:
        rng = random.Random(f"{config.seed}/fim/{doc['repo']}/{doc['path']}")
        for ids, _, _ in document_examples(doc["text"], rng, tokenizer, config, path=doc.get("path", ""), repo=shown_repo(doc.get("repo", ""))):
            parts.append(np.asarray(ids, dtype=np.int32))
            lengths.append(len(ids))
            stats["fim"] += 1
    return _joined(parts, lengths, stats)


def _fim_examples(pool, corpus_dir: Path, split: str, tokens: int, rng: random.Random) -> Encoded:
    """About `tokens` tokens of FIM examples from the corpus split's documents, taken in a seeded order."""
    from midline.training.data import BYTES_PER_TOKEN

    docs = [json.loads(line) for line in open(corpus_dir / f"{split}.jsonl", encoding="utf-8") if line.strip()]
    docs = [d for d in docs if d["text"]]
    rng.shuffle(docs)
    budget, taken = tokens * BYTES_PER_TOKEN * 1.15, 0
    chosen = []
    for doc in docs:
        if taken >= budget:
            break
        chosen.append(doc)
        taken += len(doc["text"].encode("utf-8", "surrogatepass"))
    ids, lengths, stats = _run_jobs(pool, _encode_documents, [chosen[i : i + 32] for i in range(0, len(chosen), 32)])
    keep = int(np.searchsorted(np.cumsum(lengths), tokens)) + 1  # the examples up to `tokens`
    if keep < len(lengths):
        ids, lengths, stats = ids[: int(lengths[:keep].sum())], lengths[:keep], Counter(fim=keep)
    return ids, lengths, stats


def _run_jobs(pool, function, jobs: list) -> Encoded:
    results = pool.map(function, jobs, chunksize=1) if pool is not None else [function(job) for job in jobs]
    stats: Counter = Counter()
    for r in results:
        stats.update(r[2])
    if not results:
        return _empty()
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]), stats


def _joined(parts: list[np.ndarray], lengths: list[int], stats: Counter) -> Encoded:
    return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), np.asarray(lengths, dtype=np.int64), stats


def _empty() -> Encoded:
    return np.zeros(0, np.int32), np.zeros(0, np.int64), Counter()


def _write_rows(out_dir: Path, split: str, ids: np.ndarray, lengths: np.ndarray, order: np.ndarray, room: int, pad: int, shard_rows: int) -> tuple[list[str], int]:
    """Pack the examples (in `order`) whole into rows of `room` tokens padded with `pad`; write them in
    shards of `shard_rows` rows. Returns (shard file names, rows)."""
    from midline.training.data import packed_rows

    out = packed_rows(ids, lengths, order, room, pad, np.int32)
    names = []
    for s in range(0, max(len(out), 1), shard_rows):
        name = f"{split}-{s // shard_rows:05d}.npy"
        write_npy(out_dir / name, out[s : s + shard_rows])
        names.append(name)
    return names, len(out)


# -- the stage: mine, rows, fine-tune, export -----------------------------------------------------

# The fine-tune's defaults (any TrainConfig field can be set): a short cosine run at a tenth of the
# pre-training learning rate, validated and checkpointed often.
SFT_TRAIN = dict(lr=3e-4, min_lr=3e-5, warmup_steps=20, schedule="cosine", weight_decay=0.0, batch_size=32, grad_accum=2,
                 eval_every=100, eval_batches=10, log_every=10, checkpoint_minutes=2.0)
SHAPE_FIELDS = {"hidden_size", "layers", "heads", "kv_heads", "intermediate_size", "max_positions", "rope_theta", "tie_embeddings", "init"}


def finetune(model_dir: Path, out_dir: Path, *, corpus_dir: Path | None, mined_dir: Path | None = None, export_dir: Path | None = None,
             mine_config: MineConfig = MineConfig(), sft_config: SftConfig = SftConfig(), train_overrides: dict | None = None,
             epochs: float = 1.0, fresh: bool = False, command: list[str] | None = None, on_step=None) -> dict:
    """The `sft` stage: mine `corpus_dir` into <out>/mined (unless `mined_dir`), build <out>/data, fine-tune
    `model_dir` into <out>/run (resuming its checkpoint unless `fresh`), and export to `export_dir`
    (default <out>/export). Returns a summary."""
    from midline.training import export, train

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if mined_dir is None:
        if corpus_dir is None:
            raise ValueError("sft needs --corpus (to mine it) or --mined")
        mined_dir = out_dir / "mined"
        mine(corpus_dir, mined_dir, mine_config, command=command)
    data_dir, run_dir = out_dir / "data", out_dir / "run"
    meta = build_sft_data(mined_dir, corpus_dir, model_dir, data_dir, sft_config, command=command)
    config = train.TrainConfig(**{**SFT_TRAIN, **(train_overrides or {})})
    global_batch = config.batch_size * config.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    if not (train_overrides or {}).get("max_steps") and not config.tokens:
        config = replace(config, max_steps=max(1, math.ceil(epochs * meta["splits"]["train"]["rows"] / global_batch)))
    config = replace(config, init=str(model_dir), warmup_steps=min(config.warmup_steps, max(1, config.max_steps // 10)))
    summary = train.train(config, data_dir, run_dir, fresh=fresh, command=command, on_step=on_step)
    export_dir = Path(export_dir) if export_dir else out_dir / "export"
    export.export(run_dir, export_dir, corpus_dir=corpus_dir, data_dir=data_dir, command=[shlex_join(command)] if command else None)
    if (settings := model_dir / "midline.json").is_file():  # the base model's confidence floors, until recalibrated
        shutil.copyfile(settings, export_dir / "midline.json")
    return {**summary, "data": {split: {k: v for k, v in s.items() if k != "shards"} for split, s in meta["splits"].items()},
            "export": str(export_dir)}


def shlex_join(argv: list[str]) -> str:
    import shlex

    return shlex.join(argv)


# -- command line ---------------------------------------------------------------------------------


def add_parsers(stages) -> None:
    """The `sft-mine` and `sft` subcommands."""
    m = MineConfig()
    p = stages.add_parser("sft-mine", help="mine explain / tests / fix examples from a corpus (train and held-out splits)")
    p.add_argument("--corpus", type=Path, required=True, metavar="DIR", help="the corpus stage's output")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes train.jsonl, valid.jsonl, meta.json")
    _mine_flags(p, m)
    p.add_argument("--force", action="store_true", help="mine again even if DIR is complete")
    p.set_defaults(run=_run_mine)

    s = SftConfig()
    p = stages.add_parser("sft", help="fine-tune a model on the mined tasks (+ a share of FIM), loss on the answers only; then export")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, metavar="DIR", help="the model to fine-tune (default: %(default)s)")
    p.add_argument("--corpus", type=Path, metavar="DIR", help="the corpus: mined unless --mined, and the FIM share's source")
    p.add_argument("--mined", type=Path, metavar="DIR", help="`sft-mine` output (default: mine --corpus into OUT/mined)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="work dir: mined/, data/, run/ (checkpoint/, model/, loss.csv)")
    p.add_argument("--export", type=Path, metavar="DIR", help="where the fine-tuned model is exported (default: OUT/export)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the SFT rows, unless --max-steps or --tokens (default: %(default)s)")
    p.add_argument("--fim-share", type=float, default=s.fim_share, help="share of tokens from plain FIM examples (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=s.seq_len, help="tokens per row (default: the model's context length)")
    p.add_argument("--max-per-kind", type=int, default=s.max_per_kind, help="examples of each kind at most (default: all)")
    p.add_argument("--valid-examples", type=int, default=s.valid_examples, help="held-out examples for the validation loss (default: %(default)s)")
    p.add_argument("--tests-repeat", type=int, default=s.tests_repeat, help="copies of each tests example (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="start the fine-tune over even if OUT/run has a checkpoint")
    _mine_flags(p, m)
    from midline.training.train import CHOICES, TrainConfig, _int

    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in SHAPE_FIELDS or f.name == "seed":  # (--seed is the mining flag's, and seeds all)
            continue
        kind, flag = hints[f.name], "--" + f.name.replace("_", "-")
        default = SFT_TRAIN.get(f.name, f.default)
        if bool in (kind, *typing.get_args(kind)):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        else:
            p.add_argument(flag, type=_int if kind is int else kind, default=argparse.SUPPRESS, choices=CHOICES.get(f.name), help=f"default: {default!r}")
    p.set_defaults(run=_run_sft)


def _mine_flags(p: argparse.ArgumentParser, m: MineConfig) -> None:
    p.add_argument("--explain-per-file", type=int, default=m.explain_per_file, help="docstrings per file at most (default: %(default)s)")
    p.add_argument("--fix-per-file", type=int, default=m.fix_per_file, help="synthetic bugs per file at most (default: %(default)s)")
    p.add_argument("--seed", type=int, default=m.seed)
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core; 0: none)")


def _mine_config(args: argparse.Namespace) -> MineConfig:
    return MineConfig(seed=args.seed, explain_per_file=args.explain_per_file, fix_per_file=args.fix_per_file, workers=args.workers)


def _run_mine(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    start = time.monotonic()
    meta = mine(args.corpus, args.out, _mine_config(args), force=args.force, command=command())
    for split, s in meta["splits"].items():
        print(f"{split}: {s['records']} records from {s.get('files', 0)} files of {s['packages']} packages: "
              f"{s.get('explain', 0)} explain, {s.get('tests', 0)} tests, {s.get('fix', 0)} fix")
    print(f"wrote {args.out} in {time.monotonic() - start:.1f} s")
    return 0


def _run_sft(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from midline.training.train import TrainConfig

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name) and f.name not in SHAPE_FIELDS}
    overrides["seed"] = args.seed
    sft_config = SftConfig(seq_len=args.seq_len, fim_share=args.fim_share, max_per_kind=args.max_per_kind, tests_repeat=args.tests_repeat,
                           valid_examples=args.valid_examples, seed=args.seed, workers=args.workers)
    summary = finetune(args.model, args.out, corpus_dir=args.corpus, mined_dir=args.mined, export_dir=args.export, mine_config=_mine_config(args),
                       sft_config=sft_config, train_overrides=overrides, epochs=args.epochs, fresh=args.fresh, command=command())
    print(json.dumps(summary, indent=1))
    return 0
