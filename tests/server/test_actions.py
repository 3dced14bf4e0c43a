"""Code actions: what is offered where, the gates, the sandbox filter of generated tests, caching,
cancellation — in-process with canned model answers, then end to end through `midline serve`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import make_test_lsp_client

from midline.model import tasks
from midline.model.engine import Generation
from midline.model.instruct import InstructModel
from midline.model.loader import ModelLoadError
from midline.server import actions, security, targets, verify
from midline.server.actions import Actions, Explanation, Nothing, Replace, TestFile
from midline.server.targets import Target
from midline.model.remote import RemoteError
from midline.server.assistant import Assistant, Cancelled, Failed
from midline.server.config import Config
from midline.server.documents import Document
from midline.model.syntax import new_parser, parses
from midline.server.verify import verify_tests

from ..lsp_client import SERVER, open_document, status, wait_until_loaded
from ..marks import needs_sandbox

CODE = '''import math


def area(radius):
    """Area of a circle."""
    return math.pi * radius ** 2


def perimeter(radius):
    return 2 * math.pi * radius


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def grow(self, by):
        self.radius += by


print(area(2.0))

# Write a function that takes a list of numbers and returns only the even ones
'''
LINES = CODE.split("\n")
SEED = LINES.index("# Write a function that takes a list of numbers and returns only the even ones")
EVENS = "def evens(numbers):\n    return [n for n in numbers if n % 2 == 0]\n"


def doc(text: str = CODE, name: str = "circle.py", root: Path = Path("/tmp/midline-tests"),
        language: str = "python") -> Document:
    return Document((root / name).as_uri(), language, 1, text)


def at(text: str, needle: str, delta: int = 0) -> int:
    return text.index(needle) + delta


# -- targets and offers -----------------------------------------------------------------------------


def test_target_is_the_innermost_definition_else_the_statement():
    d = doc()
    target = targets.target_at(d, at(CODE, "return math.pi"), at(CODE, "return math.pi"))
    assert (target.kind, target.name) == ("function", "area")
    assert target.code == 'def area(radius):\n    """Area of a circle."""\n    return math.pi * radius ** 2\n'
    method = targets.target_at(d, at(CODE, "self.radius += by"), at(CODE, "self.radius += by"))
    assert (method.kind, method.name, method.indent) == ("function", "grow", "    ")
    assert targets.target_at(d, at(CODE, "class Circle"), at(CODE, "class Circle")).kind == "class"
    statement = targets.target_at(d, at(CODE, "print(area"), at(CODE, "print(area"))
    assert (statement.kind, statement.code) == ("statement", "print(area(2.0))\n")
    assert targets.target_at(d, at(CODE, "\n\n\ndef area") + 1, at(CODE, "\n\n\ndef area") + 1) is None  # blank line


def test_selection_is_widened_to_whole_lines():
    d = doc()
    start, end = at(CODE, "pi * radius ** 2"), at(CODE, "radius ** 2") + 3
    target = targets.target_at(d, start, end)
    assert (target.kind, target.code) == ("selection", "    return math.pi * radius ** 2\n")
    whole = targets.target_at(d, at(CODE, "def perimeter"), at(CODE, "class Circle"))
    assert (whole.kind, whole.name) == ("function", "perimeter")


def test_offers_at_a_function_and_only_filter():
    d = doc()
    cursor = at(CODE, "def area") + 5
    found = actions.offers(d, cursor, cursor)
    assert [o.action for o in found] == ["explain", "fix", "tests"]
    assert all(o.data["uri"] == d.uri and o.data["name"] == "area" for o in found)
    assert [o.action for o in actions.offers(d, cursor, cursor, only=["quickfix"])] == ["fix"]
    assert [o.action for o in actions.offers(d, cursor, cursor, only=["refactor.midline.tests"])] == ["tests"]
    statement = actions.offers(d, at(CODE, "print("), at(CODE, "print("))
    assert [o.action for o in statement] == ["explain", "fix"]  # no tests for a statement


def test_fix_offer_carries_the_diagnostics_inside_the_node():
    d = doc()
    row = LINES.index("    return 2 * math.pi * radius")
    found = actions.offers(d, at(CODE, "def perimeter"), at(CODE, "def perimeter"),
                           [(row, "radius may be negative"), (0, "unused import")])
    fix = next(o for o in found if o.action == "fix")
    assert fix.data["diagnostics"] == ["line 2: radius may be negative"]
    assert "radius may be negative" in fix.title


def test_code_from_a_comment_is_offered_only_for_unwritten_code():
    d = doc()
    comment = targets.comment_at(d, at(CODE, "# Write a function") + 3)
    assert comment is not None and comment.insert == len(CODE) and comment.indent == ""
    assert [o.action for o in actions.offers(d, comment.start, comment.start)] == ["fromComment"]
    described = "# the area of a circle\ndef area(r):\n    return r\n"
    assert targets.comment_at(doc(described), 3) is None
    stub = 'def evens(numbers):\n    """Only the even numbers."""\n    pass\n'
    docstring = targets.comment_at(doc(stub), stub.index("Only"))
    assert docstring is not None and docstring.indent == "    "
    assert stub[docstring.insert : docstring.replace_end] == "    pass\n"


def test_fix_gate_rejects_unparsable_and_unchanged_fixes():
    d = doc()
    target = targets.target_at(d, at(CODE, "self.radius += by"), at(CODE, "self.radius += by"))
    assert actions.fix_gate(CODE, target, "def grow(self, by:\n    self.radius += by\n", "python") is None
    assert actions.fix_gate(CODE, target, "def grow(self, by):\n    self.radius += by\n", "python") is None  # the same
    assert actions.fix_gate(CODE, target, "", "python") is None
    fixed = actions.fix_gate(CODE, target, "def grow(self, by):\n    self.radius += abs(by)\n", "python")
    assert fixed == "    def grow(self, by):\n        self.radius += abs(by)\n"  # back at the method's indentation
    assert actions.fix_gate("x", Target("selection", "", 0, 1, "x"), "y", "plaintext") is None  # nothing to parse with


def test_test_file_placement(tmp_path):
    module = tmp_path / "src" / "pkg" / "shapes.py"
    module.parent.mkdir(parents=True)
    (module.parent / "__init__.py").write_text("")
    assert actions.test_file_for(module, tmp_path, "python") == module.parent / "test_shapes.py"
    (tmp_path / "tests").mkdir()
    assert actions.test_file_for(module, tmp_path, "python") == tmp_path / "tests" / "test_shapes.py"
    assert actions.test_file_for(tmp_path / "calc.go", tmp_path, "go") == tmp_path / "calc_test.go"
    assert actions.test_file_for(tmp_path / "calc.ts", tmp_path, "typescript") == tmp_path / "tests" / "calc.test.ts"
    assert actions.python_module(module, tmp_path) == ("pkg.shapes", tmp_path / "src")


def test_appending_tests_drops_imports_the_file_has():
    existing = "import pytest\n\nfrom calc import add\n\n\ndef test_old():\n    assert add(1, 1) == 2\n"
    added = actions.merge_tests(existing, "import pytest\n\nfrom calc import add\n\n\n"
                                          "def test_new():\n    assert add(2, 2) == 4\n")
    assert added == "\n\ndef test_new():\n    assert add(2, 2) == 4\n"
    assert parses("python", existing + added)


# -- resolving with canned model answers ------------------------------------------------------------


class Canned:
    """An assistant whose model answers each task with fixed text (parsed as the completion model's): a string for
    every ask of the task, or a list, one item per ask in turn (the last again after that); an item that is a list
    is the candidates of one ask (`Assistant.candidates`)."""

    def __init__(self, answers: dict[str, str | list]) -> None:
        self.answers = answers
        self.asks = []

    def _next(self, ask):
        self.asks.append(ask)
        answer = self.answers.get(ask.task, "")
        if isinstance(answer, list):
            asked = sum(a.task == ask.task for a in self.asks)
            answer = answer[min(asked, len(answer)) - 1]
        return answer if isinstance(answer, list) else [answer]

    async def run(self, ask, cancel=None):
        return ask.parse(self._next(ask)[0])

    async def candidates(self, ask, n, cancel=None):
        return [parsed for text in self._next(ask)[:n] if (parsed := ask.parse(text)).strip()]


def resolve(answers: dict[str, str], d: Document, offer, root: Path | None = None, config: Config | None = None):
    acts = Actions(Canned(answers), config or Config(), str(root) if root else None)
    return asyncio.run(acts.resolve(d, offer.data)), acts.assistant


def offer_of(d: Document, action: str, offset: int):
    return next(o for o in actions.offers(d, offset, offset) if o.action == action)


def test_explain_resolves_to_markdown():
    d = doc()
    outcome, assistant = resolve({"explain": "Computes the area.\n    \"\"\"\n    junk"}, d,
                                 offer_of(d, "explain", at(CODE, "def area")))
    assert outcome == Explanation("### `area`\n\nComputes the area.\n")
    assert assistant.asks[0].prompt.prefix == 'def area(radius):\n    """'


def test_fix_resolves_to_a_replacement_only_when_it_parses():
    d = doc()
    offer = offer_of(d, "fix", at(CODE, "def perimeter"))
    answer = "def perimeter(radius):\n    return 2 * math.pi * abs(radius)\n# Fixed version:\n"
    outcome, _ = resolve({"fix": answer}, d, offer)
    assert isinstance(outcome, Replace) and CODE[outcome.start : outcome.end].startswith("def perimeter")
    assert outcome.text == "def perimeter(radius):\n    return 2 * math.pi * abs(radius)\n"
    bad, _ = resolve({"fix": "def perimeter(radius:\n    return (\n"}, d, offer)
    assert isinstance(bad, Nothing) and "did not parse" in bad.message


def test_code_from_the_seed_comment_is_inserted_below_it():
    d = doc()
    offer = offer_of(d, "fromComment", at(CODE, "# Write a function"))
    outcome, assistant = resolve({"fromComment": EVENS + "\n\ndef broken(:\n"}, d, offer)
    assert outcome == Replace(len(CODE), len(CODE), EVENS)
    assert assistant.asks[0].prompt.prefix == CODE
    new = CODE + outcome.text
    assert not new_parser("python").parse(new.encode()).root_node.has_error


def test_code_from_a_comment_that_only_copies_the_file_is_not_offered():
    d = doc()
    offer = offer_of(d, "fromComment", at(CODE, "# Write a function"))
    copied = "def perimeter(radius):\n    return 2 * math.pi * radius\n\n\ndef area(radius):\n    return 1\n"
    outcome, _ = resolve({"fromComment": copied}, d, offer)
    assert isinstance(outcome, Nothing) and "already has" in outcome.message
    outcome, _ = resolve({"fromComment": copied + "\n\n" + EVENS}, d, offer)  # with something new: offered
    assert isinstance(outcome, Replace)


def test_code_from_a_docstring_replaces_the_placeholder_body():
    stub = 'def evens(numbers):\n    """Only the even numbers of `numbers`."""\n    pass\n\n\nprint(evens([1, 2]))\n'
    d = doc(stub)
    offer = offer_of(d, "fromComment", stub.index("Only"))
    outcome, _ = resolve({"fromComment": "    return [n for n in numbers if n % 2 == 0]\n"}, d, offer)
    new = stub[: outcome.start] + outcome.text + stub[outcome.end :]
    assert new == ('def evens(numbers):\n    """Only the even numbers of `numbers`."""\n'
                   "    return [n for n in numbers if n % 2 == 0]\n\n\nprint(evens([1, 2]))\n")


def test_stale_offer_is_refused():
    d = doc()
    offer = offer_of(d, "explain", at(CODE, "def area"))
    d.apply_change(types.TextDocumentContentChangeWholeDocument(text=CODE.replace("radius ** 2", "radius * radius")),
                   None)
    d.version = 2
    outcome, assistant = resolve({"explain": "x"}, d, offer)
    assert isinstance(outcome, Nothing) and "changed" in outcome.message and not assistant.asks


# -- the table of actions ---------------------------------------------------------------------------

CLIENT = Path(__file__).resolve().parents[2] / "vscode-client/src/codeActions.ts"
GO_CALC = "package calc\n\nfunc Add(a, b int) int {\n\treturn a + b\n}\n"
# Per action: a document, where it is offered there, and a model's answer that resolves it to an outcome.
PICKED = {
    "explain": (lambda root: doc(), "def area", "Computes the area.\n", Explanation),
    "fix": (lambda root: doc(), "def perimeter", "def perimeter(radius):\n    return 2 * math.pi * abs(radius)\n",
            Replace),
    "tests": (lambda root: doc(GO_CALC, "calc.go", root, "go"), "Add", "func TestAdd(t *testing.T) {}\n", TestFile),
    "fromComment": (lambda root: doc(), "# Write a function", EVENS, Replace),
}


@pytest.mark.parametrize("spec", actions.ACTIONS, ids=[spec.name for spec in actions.ACTIONS])
def test_every_action_is_offered_with_its_kind_and_resolves_by_asking_its_task(spec, tmp_path):
    assert tasks.TASKS[spec.name] is spec.task and actions.BY_NAME[spec.name] is spec
    make, needle, answer, outcome_type = PICKED[spec.name]
    d = make(tmp_path)
    offer = offer_of(d, spec.name, d.text.index(needle))
    assert offer.kind == spec.kind and offer.data["action"] == spec.name
    assert all(isinstance(offer.data[key], kind) for key, kind in spec.fields.items())  # what resolving reads
    outcome, assistant = resolve({spec.name: answer}, d, offer, tmp_path)
    assert isinstance(outcome, outcome_type), outcome
    assert getattr(outcome, "warning", None) is None  # benign code: no security warning
    assert [ask.task for ask in assistant.asks] == [spec.task.name]


def test_the_action_table_is_what_the_server_checks_and_the_vs_code_client_asks_for():
    from midline.server import server

    assert server._DATA_FIELDS == {spec.name: spec.fields for spec in actions.ACTIONS}  # resolve's check of `data`
    client_kinds = re.findall(r'\bkind: "([^"]+)"', CLIENT.read_text(encoding="utf-8"))
    assert sorted(client_kinds) == sorted(spec.kind for spec in actions.ACTIONS)
    # one name and one kind each
    assert len({spec.kind for spec in actions.ACTIONS}) == len(actions.BY_NAME) == len(actions.ACTIONS)


# -- security warnings on action results (security.py) ----------------------------------------------

SHELL = "from subprocess import call\n\n\ndef run(cmd):\n    return call(cmd)\n"  # `call` is subprocess's: the import
SHELL_FIX = "def run(cmd):\n    return call(cmd, shell=True)\n"


@pytest.mark.parametrize("scan, warned", [("all", True), ("actions", True), ("completions", False), ("off", False)])
def test_an_insecure_fix_is_offered_with_a_security_warning_where_the_setting_covers_actions(scan, warned):
    d = doc(SHELL, "run.py")
    config = Config.from_json({"security": {"scan": scan}})
    outcome, _ = resolve({"fix": SHELL_FIX}, d, offer_of(d, "fix", SHELL.index("return call")), config=config)
    assert isinstance(outcome, Replace) and outcome.text == SHELL_FIX  # still offered: the user decides
    if warned:  # scanned below the document's imports, lines counted in the fix
        assert outcome.warning == security.warning_for(SHELL_FIX, "python", context=SHELL[: SHELL.index("def run")])
        assert outcome.warning is not None and "line 2: B602" in outcome.warning
    else:
        assert outcome.warning is None


def test_insecure_code_from_a_comment_and_insecure_generated_tests_get_a_security_warning(tmp_path):
    commented = "from os import system\n\n\n# Write a function that runs the given shell command\n"
    d = doc(commented, "run.py")
    outcome, _ = resolve({"fromComment": "def run(cmd):\n    return system(cmd)\n"}, d,
                         offer_of(d, "fromComment", commented.index("# Write")))
    assert isinstance(outcome, Replace) and outcome.warning is not None and "line 2: B605" in outcome.warning
    outcome, _ = resolve({"fromComment": EVENS}, d, offer_of(d, "fromComment", commented.index("# Write")))
    assert isinstance(outcome, Replace) and outcome.warning is None

    (tmp_path / "tests").mkdir()
    module = doc("def add(a, b):\n    return a + b\n", "calc.py", tmp_path)
    planted = {"tests": "add():\n    assert eval('add(1, 1)') == 2\n"}  # passes in the sandbox, and is insecure
    outcome, _ = resolve(planted, module, offer_of(module, "tests", 1), tmp_path)
    assert isinstance(outcome, TestFile) and "eval('add(1, 1)')" in outcome.text
    assert outcome.warning is not None and "B307" in outcome.warning


def test_a_warned_edit_needs_confirmation_where_the_client_takes_change_annotations(tmp_path):
    from pygls.workspace.position_codec import PositionCodec

    from midline.server import lsp

    d, codec = doc(SHELL, "run.py"), PositionCodec()
    warning = security.warning_for("import os\nos.system(cmd)\neval(cmd)\n", "python")
    warned = Replace(SHELL.index("def run"), len(SHELL), SHELL_FIX, warning)
    annotating = client_capabilities(annotations=True)
    edit = lsp.replace_edit(annotating, d, warned, codec)
    (change,) = edit.document_changes
    assert [e.annotation_id for e in change.edits] == [lsp.SECURITY_ANNOTATION]
    assert change.edits[0].new_text == SHELL_FIX
    note = edit.change_annotations[lsp.SECURITY_ANNOTATION]
    assert note.needs_confirmation
    assert note.label == f"midline security: {warning.split(chr(10))[1].strip()} (and 1 more)"
    assert "line 2: B605" in note.description and "line 3: B307" in note.description
    plain = lsp.replace_edit(client_capabilities(), d, warned, codec)  # no change annotations: the edit alone
    assert plain.change_annotations is None and [type(e) for e in plain.document_changes[0].edits] == [types.TextEdit]
    benign = lsp.replace_edit(annotating, d, Replace(warned.start, warned.end, SHELL_FIX), codec)
    assert benign.change_annotations is None and [type(e) for e in benign.document_changes[0].edits] == [types.TextEdit]
    tests = TestFile(tmp_path / "test_run.py", "def test_run():\n    eval('1')\n", None, None, warning)
    create, write = lsp.tests_edit(annotating, tests, [], codec).document_changes
    assert create.annotation_id == write.edits[0].annotation_id == lsp.SECURITY_ANNOTATION


# -- generated tests (verify.py) -------------------------------------------------------------------


def test_test_functions_and_keep_tests_are_pytest_module_surgery():
    source = (
        "import pytest\n\n\ndef test_a():\n    pass\n\n\n@pytest.mark.slow\ndef test_b():\n    pass\n\n\n"
        "def helper():\n    pass\n\n\n"
        "class TestC:\n    def test_d(self):\n        pass\n\n    def test_e(self):\n        pass\n"
    )
    assert [t.name for t in verify.test_functions(source)] == ["test_a", "test_b", "TestC.test_d", "TestC.test_e"]
    kept = verify.keep_tests(source, ["test_b", "TestC.test_e"])
    assert "def test_a" not in kept and "@pytest.mark.slow\ndef test_b" in kept and "def helper" in kept
    assert "class TestC" in kept and "test_d" not in kept and "test_e" in kept and parses("python", kept)
    assert "class TestC" not in verify.keep_tests(source, ["test_a"])


GENERATED_TESTS = '''add():
    assert add(1, 2) == 3


def test_wrong():
    assert add(1, 2) == 4


def test_infinite_loop():
    while True:
        pass


def test_fork_bomb():
    import os
    while True:
        os.fork()


def test_huge_allocation():
    assert len(bytearray(10**12)) > 0


def test_write_outside():
    with open({outside!r}, "w") as f:
        f.write("escaped")
    assert True


def test_negative():
    assert add(-1, 1) == 0
'''


@needs_sandbox
def test_generated_tests_are_run_in_the_sandbox_and_only_passing_ones_kept(tmp_path):
    module = "def add(a, b):\n    return a + b\n"
    outside = tmp_path / f"outside-{uuid.uuid4().hex}.txt"
    (tmp_path / "tests").mkdir()
    d = doc(module, "calc.py", tmp_path)
    offer = offer_of(d, "tests", 1)
    config = Config.from_json({"actions": {"perTestTimeoutMs": 500, "testTimeoutMs": 20000, "testMemoryMb": 512}})
    start = time.monotonic()
    outcome, assistant = resolve({"tests": GENERATED_TESTS.format(outside=str(outside))}, d, offer, tmp_path, config)
    assert time.monotonic() - start < 15
    assert assistant.asks[0].prompt.prefix == "import pytest\n\nfrom calc import add\n\n\ndef test_"
    assert isinstance(outcome, TestFile) and outcome.existing is None
    assert outcome.path == tmp_path / "tests" / "test_calc.py"
    assert outcome.verified.passed == ["test_add", "test_negative"]
    assert set(outcome.verified.failed) == {"test_wrong", "test_infinite_loop", "test_fork_bomb",
                                            "test_huge_allocation", "test_write_outside"}
    assert [t.name for t in verify.test_functions(outcome.text)] == ["test_add", "test_negative"]
    assert not outside.exists()


@needs_sandbox
@pytest.mark.slow
def test_a_test_that_hangs_the_whole_run_costs_only_itself():
    source = (
        "from calc import add\n\n\ndef test_first():\n    assert add(1, 1) == 2\n\n\n"
        "def test_hang():\n    import signal\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "    while True:\n        pass\n\n\n"
        "def test_exit():\n    import os\n    os._exit(0)\n\n\n"
        "def test_last():\n    assert add(2, 2) == 4\n"
    )
    verified = verify_tests(source, test_file="test_calc.py", files={"calc.py": "def add(a, b):\n    return a + b\n"},
                            timeout_s=2, per_test_s=0.5)
    assert verified.passed == ["test_first", "test_last"] and verified.failed == ["test_hang", "test_exit"]
    assert verified.runs == 3


def test_generated_tests_are_appended_to_an_existing_file_and_other_languages_are_unverified(tmp_path):
    module = "def add(a, b):\n    return a + b\n"
    existing = "from calc import add\n\n\ndef test_old():\n    assert add(0, 0) == 0\n"
    (tmp_path / "test_calc.py").write_text(existing)
    d = doc(module, "calc.py", tmp_path)
    outcome, _ = resolve({"tests": "add():\n    assert add(2, 2) == 4\n"}, d, offer_of(d, "tests", 1), tmp_path)
    assert outcome.existing == existing and outcome.path == tmp_path / "test_calc.py"
    assert "from calc import add" not in outcome.text and "def test_add" in outcome.text
    assert parses("python", existing + outcome.text)
    go = doc("package calc\n\nfunc Add(a, b int) int {\n\treturn a + b\n}\n", "calc.go", tmp_path, "go")
    offer = offer_of(go, "tests", go.text.index("Add"))
    assert offer.title.endswith("(unverified)")
    outcome, _ = resolve({"tests": "func TestAdd(t *testing.T) {}\n"}, go, offer, tmp_path)
    assert outcome.path == tmp_path / "calc_test.go" and outcome.verified is None
    assert outcome.text.startswith("// midline: generated tests, unverified (not run)\n// Tests for Add (calc.go)\n")


JS_MODULE = "function add(a, b) {\n  return a + b;\n}\n"
JS_TESTS = {"tests": "test('adds', () => {\n  expect(add(1, 2)).toBe(3);\n});\n"}


def js_tests(uri: str, root: Path | None, folders: tuple[Path, ...] = ()):
    """Generate tests (JavaScript: no sandbox run) for the module at `uri`, in a workspace at `root`."""
    d = Document(uri, "javascript", 1, JS_MODULE)
    acts = Actions(Canned(JS_TESTS), Config(), str(root) if root else None, [str(f) for f in folders])
    return asyncio.run(acts.resolve(d, offer_of(d, "tests", d.text.index("add")).data)), acts.assistant


@pytest.fixture
def workspace(tmp_path) -> tuple[Path, Path]:
    """A workspace folder with tests/, and a folder beside it (outside) with a module."""
    root, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    (root / "tests").mkdir(parents=True)
    (root / "sub").mkdir()
    elsewhere.mkdir()
    (elsewhere / "calc.js").write_text(JS_MODULE)
    return root, elsewhere


def test_generated_tests_go_inside_the_workspace_folder_after_normalising(workspace):
    root, elsewhere = workspace
    outcome, _ = js_tests((root / "calc.js").as_uri(), root)  # the normal case
    assert isinstance(outcome, TestFile) and outcome.path == root / "tests" / "calc.test.js"
    outcome, assistant = js_tests(root.as_uri() + "/sub/../calc.js", root)  # `..` that stays inside: normalised
    assert isinstance(outcome, TestFile) and outcome.path == root / "tests" / "calc.test.js"
    assert ".." not in outcome.path.parts
    assert "(calc.js)" in assistant.asks[0].prompt.prefix
    second = elsewhere.parent / "second"  # another workspace folder: its own tests/
    (second / "tests").mkdir(parents=True)
    outcome, _ = js_tests((second / "calc.js").as_uri(), root, (root, second))
    assert isinstance(outcome, TestFile) and outcome.path == second / "tests" / "calc.test.js"


@pytest.mark.parametrize("where", ["outside", "dot-dot", "symlink", "no-workspace", "untitled"])
def test_generate_tests_writes_nothing_outside_the_workspace_folder(workspace, where):
    root, elsewhere = workspace
    uri = {
        "outside": (elsewhere / "calc.js").as_uri(),
        "dot-dot": root.as_uri() + "/sub/../../elsewhere/calc.js",  # escapes the root once normalised
        "symlink": (root / "calc.js").as_uri(),  # a link to the module outside
        "no-workspace": (elsewhere / "calc.js").as_uri(),
        "untitled": "untitled:Untitled-1",
    }[where]
    (root / "calc.js").symlink_to(elsewhere / "calc.js")
    outcome, assistant = js_tests(uri, None if where == "no-workspace" else root)
    assert isinstance(outcome, Nothing) and outcome.message.startswith("Generate tests: ") and not outcome.error
    assert ("no workspace folder" if where == "no-workspace" else "not saved" if where == "untitled"
            else "outside the workspace folder") in outcome.message
    assert assistant.asks == []  # refused before asking the model


def test_generate_tests_refuses_a_tests_folder_that_links_outside(workspace):
    root, elsewhere = workspace
    (root / "tests").rmdir()
    (elsewhere / "tests").mkdir()
    (root / "tests").symlink_to(elsewhere / "tests")
    outcome, _ = js_tests((root / "calc.js").as_uri(), root)
    assert isinstance(outcome, Nothing) and "test file would be outside the workspace folder" in outcome.message


# -- the assistant: cache and cancellation ------------------------------------------------------


class FakeEngine:
    """Answers at once with `text`, or (blocking) waits until cancelled."""

    def __init__(self, text: str = "", block: bool = False) -> None:
        self.text, self.block, self.calls = text, block, 0
        self.started = threading.Event()

    def encode(self, prompt, mode=None):
        return [1, 2, 3]

    def generate(self, ids, *, max_new_tokens, should_stop=None, cancel=None, deadline=None):
        self.calls += 1
        self.started.set()
        if self.block:
            cancel.wait(10)
            return Generation("", [], "cancelled" if cancel.is_set() else "length", math.nan, 3, 0.0)
        return Generation(self.text, [], "eot", 0.0, 3, 0.0)


def make_assistant(engine: FakeEngine) -> Assistant:
    async def get_engine():
        return engine

    return Assistant(get_engine, Config(), ThreadPoolExecutor(max_workers=1))


class FailingEngine(FakeEngine):
    def generate(self, ids, **kwargs):
        raise RemoteError("the openai backend at http://127.0.0.1:1 answered HTTP 500: CUDA out of memory (test)")


def test_a_failing_model_is_one_error_outcome_not_a_report():
    reported = []
    assistant = Assistant(lambda: asyncio.sleep(0, FailingEngine()), Config(), ThreadPoolExecutor(max_workers=1),
                          report=reported.append)
    d = doc()
    acts = Actions(assistant, Config())
    outcome = asyncio.run(acts.resolve(d, offer_of(d, "explain", at(CODE, "def area")).data))
    assert outcome == Nothing("explain failed: the openai backend at http://127.0.0.1:1 answered HTTP 500: "
                              "CUDA out of memory (test)", error=True)
    assert reported == [] and not assistant.generating
    with pytest.raises(Failed, match="fix failed: .*CUDA out of memory"):
        asyncio.run(assistant.run(actions.fix_ask("x = (", [], "python")))


class BuggyEngine(FakeEngine):
    def generate(self, ids, **kwargs):
        raise KeyError("file:///home/user/secret.py")


def test_a_bug_in_the_model_is_a_sentence_without_the_exception_text():
    assistant = Assistant(lambda: asyncio.sleep(0, BuggyEngine()), Config(), ThreadPoolExecutor(max_workers=1))
    with pytest.raises(Failed) as failed:
        asyncio.run(assistant.run(actions.explain_ask("x = 1", "python")))
    assert str(failed.value) == "explain failed: the model raised KeyError; the server log has the details."


def test_results_are_cached_by_content_hash():
    engine = FakeEngine("Doubles x.\"\"\"")
    assistant = make_assistant(engine)

    async def go():
        first = await assistant.run(actions.explain_ask("def f(x):\n    return 2 * x\n", "python"))
        # same code
        indented = await assistant.run(actions.explain_ask("    def f(x):\n        return 2 * x\n\n", "python"))
        other = await assistant.run(actions.explain_ask("def g(x):\n    return 3 * x\n", "python"))
        return first, indented, other

    assert asyncio.run(go()) == ("Doubles x.", "Doubles x.", "Doubles x.")
    assert engine.calls == 2 and assistant.stats.cache_hits == 1


def test_cancelling_stops_the_generation():
    engine = FakeEngine(block=True)
    assistant = make_assistant(engine)
    cancel = threading.Event()

    async def go():
        task = asyncio.ensure_future(assistant.run(actions.fix_ask("x = (", [], "python"), cancel))
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 5)
        assert assistant.generating
        cancel.set()
        with pytest.raises(Cancelled):
            await task
        # cancelling the awaiting task (a $/cancelRequest) sets the generation's cancel event too
        engine.started.clear()
        task = asyncio.ensure_future(assistant.run(actions.fix_ask("y = (", [], "python")))
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    start = time.monotonic()
    asyncio.run(go())
    assert time.monotonic() - start < 5 and assistant.stats.cancelled == 2 and not assistant.generating


# -- end to end ---------------------------------------------------------------------------------

pytestmark_e2e = pytest.mark.asyncio(loop_scope="module")
SETTINGS = {"debounceMs": 0, "maxNewTokens": 16, "actions": {"maxNewTokens": 48, "perTestTimeoutMs": 1000}}


def client_capabilities(
    *, experimental: dict | None = None, show_document: bool = True, annotations: bool = False
) -> types.ClientCapabilities:
    """A client with work done progress, resolvable code actions and file-creating workspace edits (with change
    annotations, as VS Code's, if `annotations`)."""
    annotated = types.ChangeAnnotationsSupportOptions(groups_on_label=True) if annotations else None
    return types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            code_action=types.CodeActionClientCapabilities(
                data_support=True, resolve_support=types.ClientCodeActionResolveOptions(properties=["edit", "command"])
            ),
            hover=types.HoverClientCapabilities(content_format=[types.MarkupKind.Markdown]),
        ),
        workspace=types.WorkspaceClientCapabilities(
            workspace_edit=types.WorkspaceEditClientCapabilities(
                document_changes=True, resource_operations=[types.ResourceOperationKind.Create],
                change_annotation_support=annotated
            )
        ),
        window=types.WindowClientCapabilities(
            work_done_progress=True,
            show_message=types.ShowMessageRequestClientCapabilities(),
            show_document=types.ShowDocumentClientCapabilities(support=show_document),
        ),
        experimental=experimental,
    )


@contextlib.asynccontextmanager
async def serve(settings: dict, root: Path, capabilities: types.ClientCapabilities):
    client = make_test_lsp_client()
    await client.start_io(*SERVER)
    try:
        await client.initialize_session(
            types.InitializeParams(capabilities=capabilities, root_uri=root.as_uri(),
                                   initialization_options={"midline": settings})
        )
        await wait_until_loaded(client)
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), timeout=10)
        await client.stop()


def test_instruct_model_uses_its_chat_template_and_stops_when_cancelled(tiny_chat_model_dir, tiny_model_dir):
    model = InstructModel.load(tiny_chat_model_dir, device="cpu")
    messages = tasks.EXPLAIN.messages("def f(): pass")
    prompt = model.tokenizer.decode(model.prompt_ids(messages))
    assert prompt.startswith("<|system|>\n" + tasks.SYSTEM + "\n<|user|>\nExplain")
    assert model.generate(messages, max_new_tokens=3).finish_reason == "length"
    cancel = threading.Event()
    cancel.set()
    assert model.generate(messages, cancel=cancel).finish_reason == "cancelled"
    with pytest.raises(ModelLoadError, match="chat template"):
        InstructModel.load(tiny_model_dir, device="cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lsp(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("workspace")
    (root / "tests").mkdir()
    async with serve({"model": str(tiny_model_dir), **SETTINGS}, root, client_capabilities()) as client:
        yield client, root


async def ready_status(client) -> dict:
    """`midline.status` once the model is loaded."""
    for _ in range(500):
        if (now := await status(client))["ready"]:
            return now
        await asyncio.sleep(0.02)
    pytest.fail("the model did not load")


async def code_actions(client, uri: str, line: int, character: int, diagnostics=()) -> list[types.CodeAction]:
    position = types.Position(line, character)
    result = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(position, position),
            context=types.CodeActionContext(diagnostics=list(diagnostics)),
        )
    )
    return result or []


def apply(text: str, edit: types.TextEdit) -> str:
    d = Document("file:///x.py", "python", 0, text)
    from pygls.workspace.position_codec import PositionCodec

    codec = PositionCodec()
    return text[: d.offset_at(edit.range.start, codec)] + edit.new_text + text[d.offset_at(edit.range.end, codec) :]


def only_edit(action: types.CodeAction) -> tuple[str, types.TextEdit]:
    changes = [c for c in action.edit.document_changes if isinstance(c, types.TextDocumentEdit)]
    assert len(changes) == 1 and len(changes[0].edits) == 1
    return changes[0].text_document.uri, changes[0].edits[0]


@pytestmark_e2e
@pytest.mark.e2e
async def test_e2e_actions_are_listed_without_the_model_then_resolved(lsp):
    client, root = lsp
    uri = (root / "circle.py").as_uri()
    open_document(client, uri, CODE)
    before = (await ready_status(client))["actions"]
    listed = await code_actions(client, uri, LINES.index("def area(radius):"), 5)
    assert [a.kind for a in listed] == ["refactor.midline.explain", "quickfix.midline.fix", "refactor.midline.tests"]
    assert all(a.edit is None and a.command is None and a.data["action"] for a in listed)
    assert (await status(client))["actions"]["calls"] == before["calls"]  # listing never calls the model

    client.messages.clear()
    explain = await client.code_action_resolve_async(listed[0])
    if explain.command is not None:
        assert explain.command.command == "midline.openExplanation"
        assert explain.command.arguments[0].startswith("### `area`\n\n")
    else:  # the random model explained nothing: said so
        assert client.messages and "explanation" in client.messages[-1].message
    after = (await status(client))["actions"]
    assert after["calls"] == before["calls"] + 1

    again = await client.code_action_resolve_async(listed[0])  # the same code: from the cache
    assert again.command == explain.command
    cached = (await status(client))["actions"]
    assert cached["calls"] == after["calls"] and cached["cacheHits"] == after["cacheHits"] + 1
    reports = [r for r in client.progress_reports.values() if r and r[0].title == "midline: Explain `area`"]
    assert reports and isinstance(reports[0][-1], types.WorkDoneProgressEnd)


@pytestmark_e2e
@pytest.mark.e2e
async def test_e2e_fix_never_returns_an_invalid_edit(lsp):
    client, root = lsp
    uri = (root / "fix.py").as_uri()
    open_document(client, uri, CODE)
    row = LINES.index("    return 2 * math.pi * radius")
    diagnostic = types.Diagnostic(range=types.Range(types.Position(row, 4), types.Position(row, 10)),
                                  message="suspicious constant")
    listed = await code_actions(client, uri, row, 6, [diagnostic])
    fix = next(a for a in listed if a.kind == "quickfix.midline.fix")
    assert fix.data["diagnostics"] == ["line 2: suspicious constant"]
    resolved = await client.code_action_resolve_async(fix)
    if resolved.edit is not None:
        edit_uri, edit = only_edit(resolved)
        new = apply(CODE, edit)
        assert edit_uri == uri and new != CODE and not new_parser("python").parse(new.encode()).root_node.has_error
    else:
        assert "not offered" in client.messages[-1].message


@pytestmark_e2e
@pytest.mark.e2e
async def test_e2e_code_from_a_comment_and_generated_tests(lsp):
    client, root = lsp
    uri = (root / "comment.py").as_uri()
    open_document(client, uri, CODE)
    listed = await code_actions(client, uri, SEED, 4)
    assert [a.kind for a in listed] == ["refactor.midline.fromComment"]
    resolved = await client.code_action_resolve_async(listed[0])
    if resolved.edit is not None:
        _, edit = only_edit(resolved)
        assert edit.range.start.line == SEED + 1
        assert not new_parser("python").parse(apply(CODE, edit).encode()).root_node.has_error

    tests = next(a for a in await code_actions(client, uri, LINES.index("def perimeter(radius):"), 4)
                 if a.kind == "refactor.midline.tests")
    resolved = await client.code_action_resolve_async(tests)
    if resolved.edit is not None:  # only tests that passed in the sandbox, in tests/test_circle.py
        create, change = resolved.edit.document_changes
        assert create.uri == (root / "tests" / "test_circle.py").as_uri()
        assert verify.test_functions(change.edits[0].new_text)
    else:
        assert "tests" in client.messages[-1].message


@pytestmark_e2e
@pytest.mark.e2e
async def test_e2e_tests_are_written_only_in_a_workspace_folder_as_folders_change(lsp, tmp_path):
    client, _ = lsp
    other = tmp_path / "other"
    other.mkdir()
    uri = (other / "shapes.py").as_uri()
    open_document(client, uri, CODE)
    line = LINES.index("def perimeter(radius):")

    async def resolve_tests() -> types.CodeAction:
        tests = next(a for a in await code_actions(client, uri, line, 4) if a.kind == "refactor.midline.tests")
        client.messages.clear()
        return await client.code_action_resolve_async(tests)

    assert (await resolve_tests()).edit is None
    assert "outside the workspace folder" in client.messages[-1].message
    folder = types.WorkspaceFolder(uri=other.as_uri(), name="other")
    client.workspace_did_change_workspace_folders(
        types.DidChangeWorkspaceFoldersParams(event=types.WorkspaceFoldersChangeEvent(added=[folder], removed=[]))
    )
    resolved = await resolve_tests()
    assert not any("outside the workspace folder" in m.message for m in client.messages)
    if resolved.edit is not None:
        assert resolved.edit.document_changes[0].uri == (other / "tests" / "test_shapes.py").as_uri()
    client.workspace_did_change_workspace_folders(
        types.DidChangeWorkspaceFoldersParams(event=types.WorkspaceFoldersChangeEvent(added=[], removed=[folder]))
    )
    assert (await resolve_tests()).edit is None
    assert "outside the workspace folder" in client.messages[-1].message


@pytestmark_e2e
@pytest.mark.e2e
async def test_e2e_cancelling_a_resolve_stops_its_generation(lsp, tiny_chat_model_dir):
    client, root = lsp
    # The chat model has no end-of-turn token: its answers run to the token limit unless cancelled.
    actions_settings = {"model": str(tiny_chat_model_dir), "maxNewTokens": 8000}
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"actions": actions_settings}}))
    uri = (root / "long.py").as_uri()
    open_document(client, uri, CODE)

    async def start_fix(function: str, request_id: str):
        fix = next(a for a in await code_actions(client, uri, LINES.index(function), 4)
                   if a.kind == "quickfix.midline.fix")
        request = asyncio.ensure_future(client.protocol.send_request_async(types.CODE_ACTION_RESOLVE, fix, request_id))
        for _ in range(1000):
            if (await status(client))["actions"]["generating"]:
                return request
            await asyncio.sleep(0.01)
        pytest.fail("the fix never started generating")

    async def stopped() -> dict:
        start = time.monotonic()
        while (now := await status(client))["actions"]["generating"]:
            assert time.monotonic() - start < 2.0, "generation ran on after it was cancelled"
            await asyncio.sleep(0.02)
        return now["actions"]

    before = (await status(client))["actions"]["cancelled"]
    request = await start_fix("def perimeter(radius):", "cancel-me")
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcRequestCancelled):
        await request
    assert (await stopped())["cancelled"] == before + 1

    request = await start_fix("    def grow(self, by):", "progress-cancel")  # the progress's cancel button
    token = next(t for t, r in client.progress_reports.items() if r and r[0].title.startswith("midline: Fix `grow`"))
    client.protocol.notify(types.WINDOW_WORK_DONE_PROGRESS_CANCEL, types.WorkDoneProgressCancelParams(token=token))
    resolved = await asyncio.wait_for(request, 5)
    assert resolved.edit is None and (await stopped())["cancelled"] == before + 2
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"actions": {"model": None, "maxNewTokens": 48}}})
    )


@pytestmark_e2e
@pytest.mark.e2e
async def test_e2e_open_explanation_shows_a_markdown_document(lsp):
    client, root = lsp
    client.shown_documents.clear()
    await client.workspace_execute_command_async(types.ExecuteCommandParams(command="midline.openExplanation",
                                                                            arguments=["### `f`\n\nDoes f."]))
    shown = client.shown_documents[-1]
    assert shown.uri.endswith(".md") and Path(shown.uri.removeprefix("file://")).read_text() == "### `f`\n\nDoes f."
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"actions": {"enable": False}}}))
    assert await code_actions(client, (root / "circle.py").as_uri(), 3, 5) == []
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"midline": {"actions": {"enable": True}}}))


class FakeServer:
    """What the explanation handlers use of the server: capabilities, messages, documents shown."""

    def __init__(self, capabilities: types.ClientCapabilities) -> None:
        self.client_capabilities = capabilities
        self.messages: list[types.ShowMessageParams] = []
        self.shown: list[types.ShowDocumentParams] = []

    def window_show_message(self, params):
        self.messages.append(params)

    async def window_show_document_async(self, params):
        self.shown.append(params)
        return types.ShowDocumentResult(success=True)


def test_explanation_command_is_the_clients_where_it_renders_them_else_the_servers():
    from midline.server import lsp, server as lsp_server

    vscode = client_capabilities(experimental={"midline": {"showExplanation": True}})
    assert lsp.explanation_command(vscode, "Does f.") == types.Command(title="Show explanation",
                                                                       command="midline.showExplanation",
                                                                       arguments=["Does f."])
    other = FakeServer(client_capabilities(show_document=False))
    assert lsp.explanation_command(other.client_capabilities, "Does f.").command == "midline.openExplanation"
    asyncio.run(lsp_server.open_explanation(other, "Does f."))
    assert [m.message for m in other.messages] == ["Does f."] and not other.shown
