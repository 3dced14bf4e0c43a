"""sft-mine stage: instruction tasks mined from the corpus for the SFT stage (`sft.py`).

    midline-train sft-mine --corpus work/corpus --out work/sft-mined

Mining (`mine`), per corpus split (so the held-out examples come from the held-out packages):
- explain: functions and classes with a docstring (tree-sitter; up to `explain_per_file` a file). The
  prompt is the definition with an empty docstring slot (`tasks.EXPLAIN.prompt`); the answer is the
  docstring as written.
- tests:   a module and its test file in the same package (`test_<module>.py` / `<module>_test.py`,
  beside it or in a tests/ dir, the nearest one), in the shape `tasks.TESTS.example` takes (the test
  file's header is fixed; the answer is the file from its first `def test_` on).
- fix:     a synthetic bug in a function (`mutate`: a comparison or arithmetic operator swapped, `and`/`or`
  swapped, an integer constant, range bound or slice index off by one, two call arguments swapped, or a
  variable read replaced by another variable of the function bound before it; up to `fix_per_file` a
  file); the mutant compiles and differs from the original in one token. The prompt is the buggy
  function (`tasks.FIX.prompt`); the answer the original.
Each record is JSON ({"kind", "repo", "path", ...}: the inputs of the task named `kind`, see `tasks.Task`);
`sft.task_example(record)` turns it into its task's (FimPrompt, middle) pair, laid out exactly as the server asks.
A finished output with the same settings and corpus is kept.
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import os
import random
import re
import sys
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import tree_sitter

from midline.model import tasks
from midline.model.syntax import is_string_statement, line_start, node_name, parse, unwrap
from midline.training.stage import SPLITS, command, corpus_fingerprint, read_json, write_json, write_jsonl

# the mined tasks, in record order
KINDS = tuple(name for name, task in tasks.TASKS.items() if task.record_example is not None)
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
        if node.type == "decorated_definition" or (node.type in ("function_definition", "class_definition")
                                                   and node.parent.type != "decorated_definition"):
            yield node
        stack.extend(reversed([c for c in node.named_children if c.type in _HOLDS_DEFINITIONS]))


# statements that can hold a def or class (expressions can't: the walk skips them)
_HOLDS_DEFINITIONS = {
    "block", "decorated_definition", "function_definition", "class_definition", "if_statement", "elif_clause",
    "else_clause", "try_statement", "except_clause", "except_group_clause", "finally_clause", "with_statement",
    "for_statement", "while_statement", "match_statement", "case_clause",
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
        example = tasks.EXPLAIN.example(code, path=doc["path"])
        if example is None:
            continue
        docstring = example[1]
        if not (c.min_docstring_chars <= len("".join(docstring.split())) and len(docstring) <= c.max_docstring_chars):
            continue
        out.append({"kind": "explain", "repo": doc["repo"], "path": doc["path"], "name": node_name(node, "python"),
                    "code": code})
    return sample(out, c.explain_per_file, rng)


# -- fix: synthetic bugs --------------------------------------------------------------------------

_COMPARISON = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "is": "is not", "is not": "is",
               "in": "not in", "not in": "in"}
_ARITHMETIC = {"+": "-", "-": "+", "*": "/", "/": "*", "//": "/", "%": "//", "+=": "-=", "-=": "+=", "*=": "/=",
               "/=": "*=", "<<": ">>", ">>": "<<", "&": "|", "|": "&"}
_BOOLEAN = {"and": "or", "or": "and"}
# callees whose arguments commute, or whose order is immaterial to a test: swapping them is no bug
_SYMMETRIC_CALLS = {"max", "min", "print", "set", "frozenset", "hash", "id", "any", "all", "sorted", "isinstance",
                    "issubclass"}
_OFF_BY_ONE_PARENTS = {"slice", "subscript", "comparison_operator", "binary_operator", "argument_list",
                       "unary_operator"}
_PARAMETER_TYPES = {"identifier", "default_parameter", "typed_parameter", "typed_default_parameter",
                    "list_splat_pattern", "dictionary_splat_pattern"}

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
            elif (parent.type in ("binary_operator", "augmented_assignment") and op in _ARITHMETIC
                  and not _is_string_concat(parent)):
                sites["arithmetic"].append((node.start_byte, node.end_byte, _ARITHMETIC[op].encode()))
            elif parent.type == "boolean_operator" and op in _BOOLEAN:
                sites["boolean"].append((node.start_byte, node.end_byte, _BOOLEAN[op].encode()))
        elif kind == "integer" and parent.type in _OFF_BY_ONE_PARENTS and node.text.isdigit() and int(node.text) < 1000:
            if parent.type == "argument_list" and _callee(parent.parent) != "range":
                continue
            value = int(node.text)
            sites["off_by_one"] += [(node.start_byte, node.end_byte, str(v).encode()) for v in (value - 1, value + 1)
                                    if v >= 0]
        elif kind == "argument_list" and _callee(parent) not in _SYMMETRIC_CALLS:
            args = [a for a in node.named_children if a.type != "comment"]
            for a, b in zip(args, args[1:]):
                if _positional(a) and _positional(b) and a.text != b.text:
                    sites["swapped_args"].append((a.start_byte, b.end_byte,
                                                  b.text + data[a.end_byte:b.start_byte] + a.text))
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
            for ident in [target] if target.type == "identifier" else [c for c in target.named_children
                                                                       if c.type == "identifier"]:
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
    if (parent.type in ("assignment", "augmented_assignment", "for_statement", "for_in_clause")
            and parent.child_by_field_name("left") == node):
        return False
    return parent.type not in ("pattern_list", "tuple_pattern", "as_pattern_target", "parameters", "default_parameter",
                               "typed_parameter", "typed_default_parameter", "global_statement", "nonlocal_statement",
                               "dotted_name", "aliased_import", "function_definition", "class_definition",
                               "lambda_parameters", "list_splat_pattern", "dictionary_splat_pattern")


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
            out.append({"kind": "fix", "repo": doc["repo"], "path": doc["path"], "name": node_name(node, "python"),
                        "mutation": found[0], "buggy": found[1], "fixed": code})
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
        if tasks.TESTS.example(module["path"], module["text"], source, test_path=test["path"]) is None:
            continue
        out.append({"kind": "tests", "repo": module["repo"], "path": module["path"], "module": module["text"],
                    "import_name": imported_as(source, tasks.module_name(module["path"])), "test_path": test["path"],
                    "test": source})
    return out


def imported_as(test_source: str, stem: str) -> str:
    """The name a test file imports its module by: `pkg.sub.mod` from `from pkg.sub.mod import ...` (what
    the server's tests prompt names for a package module), else the file name."""
    match = re.search(rf"^(?:from|import)\s+((?:[\w.]+\.)?{re.escape(stem)})\b", test_source, re.MULTILINE)
    return match.group(1) if match else stem


def normalize_test_prelude(source: str) -> str:
    """A test file with what precedes its first test in the shape `tasks.TESTS.example` reads (the fixed
    header of a tests prompt stands for it): no module docstring, and each import on one line."""
    data = source.encode("utf-8", "surrogatepass")
    edits = []
    for node in parse("python", source).root_node.named_children:
        if node.type in ("function_definition", "class_definition", "decorated_definition"):
            break
        if is_string_statement(node) and not edits:
            edits.append((node.start_byte, node.end_byte, b""))  # the module docstring
        elif (node.type in ("import_statement", "import_from_statement", "future_import_statement")
              and b"\n" in node.text):
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


def mine(corpus_dir: Path, out_dir: Path, config: MineConfig = MineConfig(), *, force: bool = False,
         command: list[str] | None = None) -> dict:
    """Mine `corpus_dir`'s train and valid splits into `out_dir`/{train,valid}.jsonl; returns meta.json.
    A finished output with the same settings and corpus is kept."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    params = {**asdict(config), "workers": None, "corpus": corpus_fingerprint(corpus_dir)}
    meta_path = out_dir / "meta.json"
    old = read_json(meta_path)
    if old and old.get("complete") and not force:
        if old.get("params") != params:
            raise ValueError(f"{meta_path} was mined with other settings or from another corpus; "
                             "pass --force to mine again")
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
        records.sort(key=lambda r: (r["repo"], r["path"], KINDS.index(r["kind"]), r.get("name", ""),
                                    r.get("test_path", "")))
        write_jsonl(out_dir / f"{split}.jsonl", records)
        splits[split] = {"records": len(records), **{k: counts[k] for k in sorted(counts)},
                         "packages": len({r["repo"] for r in records})}
    meta = {"splits": splits, "params": params, "command": command, "elapsed_s": round(time.monotonic() - start, 1),
            "complete": True}
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
    """The records mined into `mined_dir` for `split`."""
    with open(Path(mined_dir) / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample(items: list, count: int, rng: random.Random) -> list:
    """At most `count` of `items`, a seeded sample in their order."""
    return items if len(items) <= count else [items[i] for i in sorted(rng.sample(range(len(items)), count))]


# -- command line ---------------------------------------------------------------------------------


def add_parser(stages) -> None:
    """The `sft-mine` subcommand."""
    p = stages.add_parser("sft-mine",
                          help="mine explain / tests / fix examples from a corpus (train and held-out splits)")
    p.add_argument("--corpus", type=Path, required=True, metavar="DIR", help="the corpus stage's output")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes train.jsonl, valid.jsonl, meta.json")
    mine_flags(p, MineConfig())
    p.add_argument("--force", action="store_true", help="mine again even if DIR is complete")
    p.set_defaults(run=run)


def mine_flags(p: argparse.ArgumentParser, m: MineConfig) -> None:
    """The mining flags (sft-mine's and sft's)."""
    p.add_argument("--explain-per-file", type=int, default=m.explain_per_file,
                   help="docstrings per file at most (default: %(default)s)")
    p.add_argument("--fix-per-file", type=int, default=m.fix_per_file,
                   help="synthetic bugs per file at most (default: %(default)s)")
    p.add_argument("--seed", type=int, default=m.seed)
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core; 0: none)")


def mine_config(args: argparse.Namespace) -> MineConfig:
    """The MineConfig of the mining flags."""
    return MineConfig(seed=args.seed, explain_per_file=args.explain_per_file, fix_per_file=args.fix_per_file,
                      workers=args.workers)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    start = time.monotonic()
    meta = mine(args.corpus, args.out, mine_config(args), force=args.force, command=command())
    for split, s in meta["splits"].items():
        print(f"{split}: {s['records']} records from {s.get('files', 0)} files of {s['packages']} packages: "
              f"{s.get('explain', 0)} explain, {s.get('tests', 0)} tests, {s.get('fix', 0)} fix")
    print(f"wrote {args.out} in {time.monotonic() - start:.1f} s")
    return 0
