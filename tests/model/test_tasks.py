"""model/tasks.py: the instruction tasks' prompt shapes (shared by serving and SFT data) and output parsing."""

from __future__ import annotations

import textwrap

import pytest

from midline.model import tasks
from midline.model.fim import FILE_SEP, MIDLINE, FimPrompt
from midline.model.syntax import parses

AREA = '''@cache
def area(radius, *, pi=3.14):
    """Area of a circle.

    Uses `pi`.
    """
    squared = radius * radius
    return pi * squared
'''


def test_explain_prompt_is_the_docstring_hole():
    prompt = tasks.EXPLAIN.prompt(AREA)
    assert prompt.prefix == '@cache\ndef area(radius, *, pi=3.14):\n    """'
    assert prompt.suffix == '"""\n    squared = radius * radius\n    return pi * squared\n'
    assert prompt.snippets == ()


def test_explain_example_round_trips_to_the_source():
    prompt, middle = tasks.EXPLAIN.example(AREA)
    assert middle == "Area of a circle.\n\n    Uses `pi`.\n    "
    assert prompt.prefix + middle + prompt.suffix == AREA
    assert tasks.EXPLAIN.parse(middle + '"""\n    squared = ...') == "Area of a circle.\n\nUses `pi`."


def test_explain_prompt_for_methods_classes_and_one_liners():
    method = textwrap.dedent('''\
        def push(self, item):
            self.items.append(item)
    ''')
    assert tasks.EXPLAIN.prompt(method).prefix == 'def push(self, item):\n    """'
    klass = 'class Stack(Base):\n    """A stack."""\n\n    def pop(self):\n        return 1\n'
    prompt = tasks.EXPLAIN.prompt(klass)
    assert (prompt.prefix, prompt.suffix) == ('class Stack(Base):\n    """',
                                              '"""\n\n    def pop(self):\n        return 1\n')
    one_liner = tasks.EXPLAIN.prompt("def double(x): return 2 * x")
    assert (one_liner.prefix, one_liner.suffix) == ('def double(x):\n    """', '"""\n    return 2 * x\n')
    indented = tasks.EXPLAIN.prompt("    def f(x):\n        return x\n")
    assert indented.prefix == 'def f(x):\n    """'


def test_explain_prompt_for_other_languages_and_non_definitions():
    go = tasks.EXPLAIN.prompt("func Add(a, b int) int {\n\treturn a + b\n}", "go")
    assert (go.prefix, go.suffix) == ("// ", "\nfunc Add(a, b int) int {\n\treturn a + b\n}\n")
    go_comment = " Adds two ints.\n// Returns the sum.\nfunc Add"
    assert tasks.EXPLAIN.parse(go_comment, "go") == "Adds two ints.\nReturns the sum."
    statement = tasks.EXPLAIN.prompt("x = compute(1)\n")
    assert (statement.prefix, statement.suffix) == ("# ", "\nx = compute(1)\n")


def test_explain_example_needs_a_plain_docstring():
    assert tasks.EXPLAIN.example("def f():\n    return 1\n") is None
    assert tasks.EXPLAIN.example('def f():\n    f"""not {a} docstring"""\n') is None
    assert tasks.EXPLAIN.example("def f():\n    '''Single quotes.'''\n")[1] == "Single quotes."
    assert tasks.EXPLAIN.example("x = 1\n") is None


def test_summary_is_the_first_paragraph_on_one_line():
    assert tasks.summary("Adds two\nnumbers.\n\nArgs: a, b") == "Adds two numbers."


def test_tests_prompt_follows_the_module_under_a_file_separator(tiny_tokenizer):
    module = "def add(a, b):\n    return a + b\n"
    prompt = tasks.TESTS.prompt("pkg/calc.py", module, ["add"], module="pkg.calc", test_path="tests/test_calc.py")
    assert prompt.prefix == "import pytest\n\nfrom pkg.calc import add\n\n\ndef test_"
    assert prompt.suffix == "" and prompt.path == "tests/test_calc.py"
    rendered = MIDLINE.render(prompt, "psm")
    assert rendered.index(f"{FILE_SEP}pkg/calc.py\n{module}") < rendered.index(f"{FILE_SEP}tests/test_calc.py\n")
    ids = MIDLINE.encode_example(prompt, "add():\n    assert add(1, 2) == 3\n", tiny_tokenizer)
    assert ids[-1] == tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tasks.TESTS.prompt("calc.py", module).prefix.startswith("import pytest\n\nimport calc\n")
    go = tasks.TESTS.prompt("calc.go", "package calc", ["Add"], language="go")
    assert go.prefix == "// Tests for Add (calc.go)\n"


def test_tests_example_from_a_real_test_file():
    test_file = "import pytest\nfrom pkg.calc import add, sub\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    prompt, middle = tasks.TESTS.example("pkg/calc.py", "def add(a, b): ...", test_file)
    assert prompt.prefix == "import pytest\n\nfrom calc import add, sub\n\n\ndef test_"
    assert middle == "add():\n    assert add(1, 2) == 3\n"
    # a package module
    dotted, _ = tasks.TESTS.example("pkg/calc.py", "def add(a, b): ...", test_file, module="pkg.calc")
    assert dotted.prefix == "import pytest\n\nfrom pkg.calc import add, sub\n\n\ndef test_"
    with_fixture = "import pytest\n\n@pytest.fixture\ndef calc():\n    return 1\n\n\ndef test_add(calc):\n    pass\n"
    assert tasks.TESTS.example("calc.py", "", with_fixture) is None
    assert tasks.TESTS.example("calc.py", "", "import calc\n") is None


def test_parse_tests_keeps_whole_statements_that_parse():
    prompt = tasks.TESTS.prompt("calc.py", "", ["add"])
    out = tasks.TESTS.parse(prompt, "add():\n    assert add(1, 2) == 3\n\n\ndef test_sub():\n    assert sub(2, 1) ==")
    assert out == "import pytest\n\nfrom calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    assert parses("python", out)


def test_fix_prompt_layout_and_parsing():
    prompt = tasks.FIX.prompt("def inc(x):\n    return x - 1\n", [tasks.diagnostic_line(2, "wrong\n  sign")])
    assert prompt.prefix == (
        "# Buggy version:\ndef inc(x):\n    return x - 1\n# Problems:\n# - line 2: wrong sign\n# Fixed version:\n"
    )
    assert prompt.suffix == ""
    assert tasks.FIX.prompt("int f() {}", [], "c").prefix == "// Buggy version:\nint f() {}\n// Fixed version:\n"
    assert tasks.FIX.target("def inc(x):\n    return x + 1") == "def inc(x):\n    return x + 1\n"
    answer = "def inc(x):\n    return x + 1\n\n\n# Fixed version:\nnoise"
    assert tasks.FIX.parse(answer) == "def inc(x):\n    return x + 1\n"
    assert tasks.FIX.parse("  \n") == ""
    prompt, middle = tasks.FIX.example("a = b -1", "a = b - 1", ["line 1: style"])
    assert middle == "a = b - 1\n" and "# - line 1: style\n" in prompt.prefix


def test_from_comment_prompt_and_parsing():
    prompt = tasks.FROM_COMMENT.prompt("# Write a function that returns one\n", "\nprint(1)\n", path="a.py")
    assert (prompt.prefix, prompt.suffix, prompt.path) == ("# Write a function that returns one\n", "\nprint(1)\n",
                                                           "a.py")
    assert tasks.FROM_COMMENT.parse("def one():\n    return 1\n\n\ndef two(:\n") == "def one():\n    return 1\n"
    assert tasks.FROM_COMMENT.parse("))))") == ""
    assert tasks.FROM_COMMENT.target("x = 1") == "x = 1\n"


@pytest.mark.parametrize(
    "messages",
    [
        tasks.EXPLAIN.messages("def f(): pass"),
        tasks.FIX.messages("def f(: pass", ["line 1: syntax error"]),
        tasks.TESTS.messages("calc.py", "def add(a, b): ...", ["add"]),
        tasks.FROM_COMMENT.messages("# even numbers", "import os\n# even numbers\n"),
    ],
)
def test_chat_messages_are_system_then_user(messages):
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "```python\n" in messages[1]["content"]


def test_parse_code_block():
    assert tasks.parse_code_block("Sure:\n```python\nx = 1\n```\nDone.") == "x = 1\n"
    assert tasks.parse_code_block("```\ny = 2\n") == "y = 2\n"
    assert tasks.parse_code_block("z = 3") == "z = 3\n"


def test_generations_stop_at_their_end_or_a_loop_and_the_loop_is_cut():
    looping = "Run the 'spawn' command" + ", which is called by the 'spawn' command" * 3 + ", which"
    stop = tasks.EXPLAIN.should_stop()
    assert stop('Area of a circle."""') and not stop("Area of a circle.") and stop(looping)
    assert tasks.EXPLAIN.parse(looping) == "Run the 'spawn' command, which is called by"  # the first copy of the loop
    assert tasks.EXPLAIN.should_stop("go")("// Area.\nfunc")
    assert tasks.FIX.should_stop()(f"return x\n# {tasks.FIX_BUGGY}") and not tasks.FIX.should_stop()("return x\n")
    comments = "issue_417():\n    # Issue #417\n    # Issue #417\n    # Issue #417\n    # Iss"
    assert tasks.TESTS.should_stop()(comments)
    prompt = tasks.TESTS.prompt("calc.py", "def add(a, b):\n    return a + b\n", ["add"])
    assert tasks.TESTS.parse(prompt, comments).endswith("def test_issue_417():\n    # Issue #417\n")
    # Not loops: a separator line, numbers, a repeated short word, a repeat of two copies.
    assert tasks.EXPLAIN.should_stop()(">>> f(x)\n[1, 2, 3" + ", 22" * 70)  # a loop without letters, long enough
    for text in ("# " + "-" * 70, "x = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", "ab ab ab ab",
                 "assert f(1) == 2\nassert f(1) == 2\n"):
        assert tasks.loop_start(text) is None, text


# -- every task -----------------------------------------------------------------------------------

CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = "import pytest\n\nfrom pkg.calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
# Per task: a record of its inputs (None: not learnt from records), the chat messages' inputs, a model's
# answer (the example's middle and what a model writes after it) and the result the answer parses to.
EXAMPLES = {
    "explain": ({"code": AREA, "path": "geo.py"}, (AREA,), 'Area of a circle.\n\n    Uses `pi`.\n    """\n    squared',
                "Area of a circle.\n\nUses `pi`."),
    "tests": ({"path": "pkg/calc.py", "module": CALC, "test": TEST_CALC, "test_path": "tests/test_calc.py",
               "import_name": "pkg.calc", "name": "add"}, ("pkg/calc.py", CALC, ["add"]),
              "add():\n    assert add(1, 2) == 3\n\n\ndef test_sub(:\n", TEST_CALC),
    "fix": ({"buggy": "def inc(x):\n    return x - 1\n", "fixed": "def inc(x):\n    return x + 1\n", "path": "calc.py"},
            ("def inc(x):\n    return x - 1\n",), "def inc(x):\n    return x + 1\n# Buggy version:\n",
            "def inc(x):\n    return x + 1\n"),
    "fromComment": (None, ("# one", "# one\n"), "def one():\n    return 1\n\n\ndef two(:\n",
                    "def one():\n    return 1\n"),
}


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_every_task_asks_and_reads_a_small_example(name):
    task = tasks.TASKS[name]
    record, chat, answer, result = EXAMPLES[name]
    assert task.name == name
    if record is None:  # not learnt from mined code: no examples from records
        assert task.record_example is None and task.record_prompt is None
        prompt = task.prompt("# one\n", "")
    else:
        prompt, middle = task.record_example(record)
        assert prompt == task.record_prompt(record)  # a training example is asked as eval-tasks and the server ask
        assert answer.startswith(middle)
    assert isinstance(prompt, FimPrompt) and MIDLINE.render(prompt)
    # tests: the prompt's header and the answer
    got = task.parse(prompt, answer) if task is tasks.TESTS else task.parse(answer)
    assert got == result
    assert task.should_stop()(answer) is (task.end is not None)  # at the answer's end marker, if the task has one
    assert task.should_stop()(answer + "the same words, " * 3)  # any task: at a loop
    messages = task.messages(*chat)
    assert [m["role"] for m in messages] == ["system", "user"] and "```python\n" in messages[1]["content"]
