"""The security scan of model-written Python (server/security.py): planted findings hide a suggestion or warn on
an action result, benign code and other languages pass, fragments are scanned in their context; and a planted
`subprocess.call(cmd, shell=True)` answer of a served model is hidden by the completer and by `midline serve`,
and as a fix `midline serve` offers it as an edit that needs confirmation, with a warning."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from lsprotocol import types

from midline.model.remote import RemoteEngine
from midline.server import security
from midline.server.completion import Completer
from midline.server.config import Config, ConfigError
from midline.server.documents import Document

from ..lsp_client import inline, open_document, running_server, status
from ..model_server import answer
from tests.server.test_actions import client_capabilities

FUNCTION = "import os\nimport subprocess\n\n\ndef run(cmd, s, b):\n    "  # a suggestion's context: in a body


@pytest.mark.parametrize(
    "code, test_id",
    [
        ("subprocess.call(cmd, shell=True)", "B602"),  # shell injection
        ("subprocess.Popen(cmd + s, shell=True)", "B602"),
        ("os.system(cmd)", "B605"),
        ("return eval(s)", "B307"),  # eval of input
        ("exec(s)", "B102"),
        ("import hashlib\n    digest = hashlib.md5(b).hexdigest()", "B324"),  # weak hash
        ("from cryptography.hazmat.primitives import hashes\n    hashes.Hash(hashes.MD5())", "B303"),
        ("password = 'hunter2'", "B105"),  # hard-coded password
        ("connect(host, password='hunter2')", "B106"),
        ("import yaml\n    return yaml.load(s)", "B506"),  # unsafe YAML load
        ("import pickle\n    return pickle.loads(b)", "B301"),  # unsafe pickle load
    ],
)
def test_planted_findings_hide_the_suggestion(code, test_id):
    finding = security.hides(code, "python", context=FUNCTION)
    assert finding is not None and finding.test_id == test_id and finding.blocks, (
        security.scan(code, "python", context=FUNCTION))


@pytest.mark.parametrize(
    "code",
    [
        "subprocess.run(['ls', '-l'], check=True)",
        "subprocess.call('ls -l', shell=True)",  # a literal command: bandit's LOW
        "return ast.literal_eval(s)",
        "import yaml\n    return yaml.safe_load(s)",
        "import hashlib\n    return hashlib.sha256(b).hexdigest()",
        "import hashlib\n    return hashlib.md5(b, usedforsecurity=False).hexdigest()",
        "import pickle",  # importing is not loading
        "assert cmd, 'no command'",  # bandit's LOW findings pass
        "eos_token = '</s>'",  # bandit's password names include `token`
        "password = ''",  # a placeholder, not a secret
        "password = os.environ['PASSWORD']",
        "for line in s.splitlines():\n        print(line)",
    ],
)
def test_benign_code_passes(code):
    assert security.hides(code, "python", context=FUNCTION) is None


@pytest.mark.parametrize("language", ["javascript", "go", "plaintext", "markdown"])
def test_other_languages_are_not_scanned(language):
    assert security.scan("eval(s)\nos.system(cmd)\nsubprocess.call(cmd, shell=True)", language) == []
    assert security.warning_for("os.system(cmd)", language) is None
    assert security.scan("os.system(cmd)", "py") != []  # an alias of Python is Python


def test_a_fragment_is_scanned_in_its_line_and_below_the_imports_before_it():
    # Mid-line: the cursor's line before it and the rest of the line after it make the call.
    finding = security.hides("shell=True", "python", context=FUNCTION + "subprocess.call(cmd, ",
                             after=")\n    return 0\n")
    assert finding is not None and (finding.test_id, finding.line) == ("B602", 1)
    assert security.hides("shell=False", "python", context=FUNCTION + "subprocess.call(cmd, ", after=")\n") is None
    # The imports above name what the fragment calls: `call` is subprocess.call, `yaml` is imported.
    assert security.hides("call(cmd, shell=True)", "python", context="from subprocess import call\n\ndef f(cmd):\n    ")
    assert security.hides("call(cmd, shell=True)", "python", context="def f(cmd):\n    ") is None
    assert security.hides("yaml.load(s)", "python", context="import yaml\n\ndef f(s):\n    return ")
    assert security.hides("yaml.load(s)", "python", context="def f(s):\n    return ") is None  # bandit needs the import
    # Findings in the context itself are not the fragment's.
    assert security.scan("x = 1", "python", context="import os\nos.system(cmd)\n") == []


def test_a_fragment_that_is_not_a_block_is_still_scanned():
    # It dedents below its first line: from a nested loop's body to the function's.
    nested = "def f(s):\n    for x in s:\n        for y in x:\n            print(y)"
    found = security.scan("\n        os.system(x)\n    return eval(s)", "python", context=nested)
    assert [(f.test_id, f.line) for f in found] == [("B605", 2), ("B307", 3)]
    # It ends with an open block, or with an open bracket: the lines that parse alone are scanned.
    findings = security.scan("for x in s:\n        eval(x)\n    if eval(s):", "python", context=FUNCTION)
    assert [f.line for f in findings] == [2, 3]
    assert [f.line for f in security.scan("os.system(cmd)\n    subprocess.run(\n", "python", context=FUNCTION)] == [1]
    assert security.scan("(((", "python") == [] and security.scan("", "python") == []


def test_the_policy_names_only_real_bandit_tests():
    from bandit.core import extension_loader

    manager = extension_loader.MANAGER
    known = set(manager.plugins_by_id) | {test["id"] for tests in manager.blacklist.values() for test in tests}
    assert set(security.HIDES) <= known and set(security.HIDES.values()) <= {"LOW", "MEDIUM", "HIGH"}


def test_the_first_scan_logs_nothing_at_info():
    """Loading bandit's plugins (once per process: a fresh one here) writes no log line at `midline serve`'s
    level: stevedore's error for a report formatter bandit cannot load (`sarif` without `sarif_om`) is dropped."""
    check = (
        "import logging; logging.basicConfig(level=logging.INFO); from midline.server import security; "
        "assert security.hides('os.system(cmd)', 'python', context='import os\\n')"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""


def test_only_a_report_formatters_load_failure_is_dropped():
    def failure(name: str) -> logging.LogRecord:
        error = ModuleNotFoundError("No module named 'x'")
        return logging.LogRecord("stevedore.extension", logging.ERROR, "", 0, "Could not load %r: %s",
                                 (name, error), None)

    quiet = security._UnusedFormatters()
    assert not quiet.filter(failure("sarif"))
    assert quiet.filter(failure("yaml_load"))  # a test plugin: still logged


def test_an_action_result_gets_a_diagnostic_style_warning():
    fixed = ("import subprocess\n\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n\n\n"
             "def parse(s):\n    return eval(s)\n")
    warning = security.warning_for(fixed, "python")
    assert warning is not None
    head, *lines = warning.split("\n")
    assert "security" in head and "bandit" in head
    assert [line.split(":")[0].strip() for line in lines] == ["line 5", "line 9"]
    assert "B602" in lines[0] and "high severity" in lines[0] and "B307" in lines[1]
    assert security.warning_for("import subprocess\n\n\ndef run():\n    return subprocess.run(['ls'])\n",
                                "python") is None
    # A fixed function below the file's imports: `yaml` is the module imported above it.
    fixed = "def load(s):\n    return yaml.load(s)\n"
    assert security.warning_for(fixed, "python") is None
    warning = security.warning_for(fixed, "python", context="import yaml\n\n\n")
    assert warning is not None and "line 2: B506" in warning


def test_the_setting_is_strict():
    assert Config().security.scan == "all" and Config().security.completions and Config().security.actions
    only_actions = Config.from_json({"security": {"scan": "actions"}}).security
    assert (only_actions.completions, only_actions.actions) == (False, True)
    with pytest.raises(ConfigError, match=r"midline\.security\.scan must be one of \"off\", \"completions\""):
        Config.from_json({"security": {"scan": True}})


# -- through the completer and the server: a served model whose answer is planted -----------------------------

PLANTED = "subprocess.call(cmd, shell=True)\n"
DOCUMENT = "import subprocess\n\n\ndef run(cmd):\n    \n"
CURSOR = DOCUMENT.index("cmd):\n    ") + len("cmd):\n    ")



@pytest.mark.parametrize(
    "scan, text, shown",
    [
        ("all", PLANTED, False),
        ("completions", PLANTED, False),
        ("actions", PLANTED, True),
        ("off", PLANTED, True),
        ("all", "subprocess.call(cmd)\n", True),  # bandit's LOW: shown
    ],
)
def test_the_completer_hides_an_insecure_answer(served, tiny_engine, tmp_path, scan, text, shown):
    served.reset()
    served.feed = answer(text)
    backend = RemoteEngine("openai", served.url, model="tiny", fim_format=tiny_engine.fim,
                           tokenizer=tiny_engine.tokenizer)
    config = Config.from_json({"debounceMs": 0, "security": {"scan": scan}})
    with ThreadPoolExecutor(max_workers=1) as executor:
        completer = Completer(backend, config, executor, root=str(tmp_path))
        done = asyncio.run(completer.complete(Document((tmp_path / "run.py").as_uri(), "python", 1, DOCUMENT), CURSOR))
    assert completer.trace.raw == text and len(served.requests) == 1  # the model's answer reached post-processing
    if shown:
        assert done.suggestion is not None and done.suggestion.text == text.rstrip("\n")
        assert completer.stats.insecure == 0 and completer.trace.hidden == ""
    else:
        assert done.suggestion is None and completer.stats.insecure == 1 and completer.trace.shown is None
        assert completer.trace.hidden.startswith("insecure: line 1: B602"), completer.trace


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_midline_serve_hides_a_planted_shell_injection(served, tiny_model_dir, tmp_path):
    served.reset()
    served.feed = answer(PLANTED)
    backend = {"kind": "openai", "url": served.url, "tokenizer": str(tiny_model_dir)}
    uri = (tmp_path / "run.py").as_uri()
    async with running_server({"debounceMs": 0, "backend": backend}, tmp_path) as (client, _):
        open_document(client, uri, DOCUMENT)
        assert not (await inline(client, uri, 4, 4)).items
        info = await status(client)
        assert served.requests and info["insecure"] == 1, info
        assert info["last"]["raw"] == PLANTED and info["last"]["hidden"].startswith("insecure: line 1: B602"), info


FIXABLE = ("from subprocess import call\n\n\ndef run(cmd):\n    return call(cmd)\n\n\n"
           "def size(path):\n    return len(path)\n")


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.e2e
async def test_midline_serve_asks_to_confirm_an_insecure_fix(served, tiny_model_dir, tmp_path):
    served.reset()
    backend = {"kind": "openai", "url": served.url, "tokenizer": str(tiny_model_dir)}
    uri = (tmp_path / "run.py").as_uri()
    vscode = client_capabilities(annotations=True)
    settings = {"debounceMs": 0, "backend": backend}
    async with running_server(settings, tmp_path, client_capabilities=vscode) as (client, _):
        open_document(client, uri, FIXABLE)

        async def fix(line: int, planted: str) -> tuple[types.CodeAction, list[str]]:
            """The fix action at `line` resolved with the model's answer `planted`, and the warnings shown."""
            served.feed = answer(planted)
            at = types.Position(line, 6)
            listed = await client.text_document_code_action_async(
                types.CodeActionParams(types.TextDocumentIdentifier(uri), types.Range(at, at),
                                       types.CodeActionContext(diagnostics=[]))
            )
            client.messages.clear()
            fix = next(a for a in listed if a.kind == "quickfix.midline.fix")
            resolved = await client.code_action_resolve_async(fix)
            await status(client)  # a round trip: any message sent with the answer has arrived
            return resolved, [m.message for m in client.messages if m.type == types.MessageType.Warning]

        resolved, warnings = await fix(4, "def run(cmd):\n    return call(cmd, shell=True)\n")
        (change,) = resolved.edit.document_changes
        assert change.edits[0].new_text == "def run(cmd):\n    return call(cmd, shell=True)\n"
        (annotation,) = resolved.edit.change_annotations
        assert getattr(change.edits[0], "annotation_id", None) == annotation
        note = resolved.edit.change_annotations[annotation]
        assert note.needs_confirmation and note.label.startswith("midline security: line 2: B602"), note
        assert len(warnings) == 1 and "line 2: B602" in warnings[0] and "high severity" in warnings[0]

        resolved, warnings = await fix(8, "def size(path):\n    return len(str(path))\n")  # benign: the edit alone
        (change,) = resolved.edit.document_changes
        assert change.edits[0].new_text == "def size(path):\n    return len(str(path))\n"
        assert resolved.edit.change_annotations is None and getattr(change.edits[0], "annotation_id", None) is None
        assert warnings == []
