"""The sandbox for generated code: time, memory, processes, file writes, network and environment are contained."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from midline.training.sandbox import run_python

# A single fork whose child exits at once: harmless even if the hook did not block it.
ONE_FORK = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\nprint('forked')\n"


def _process_count() -> int:
    return sum(name.isdigit() for name in os.listdir("/proc"))


def test_normal_code_runs_and_output_is_captured():
    result = run_python("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nraise SystemExit(3)")
    assert (result.returncode, result.stdout, result.stderr) == (3, "hello\n", "oops\n")
    assert not result.timed_out and result.killed_reason is None


def test_files_are_importable_and_the_temp_dir_is_deleted():
    result = run_python("import os, helper\nprint(helper.answer())\nprint(os.getcwd())", files={"helper.py": "def answer():\n    return 42\n"})
    assert result.ok, result.stderr
    answer, cwd = result.stdout.split()
    assert answer == "42"
    assert not Path(cwd).exists()


def test_writes_inside_the_temp_dir_work():
    code = "import pathlib, tempfile\npathlib.Path('out.txt').write_text('x')\nprint(pathlib.Path('out.txt').read_text(), tempfile.mkdtemp() != '')"
    result = run_python(code)
    assert result.ok and result.stdout == "x True\n", result.stderr


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1)
    assert result.timed_out and result.killed_reason == "timeout" and not result.ok
    assert time.monotonic() - start < 5


def test_huge_allocation_fails():
    result = run_python("x = bytearray(10**11)", memory_mb=256)
    assert not result.ok
    assert "MemoryError" in result.stderr or result.killed_reason is not None


def test_write_outside_the_temp_dir_is_blocked():
    target = Path(f"/tmp/evil-{uuid.uuid4().hex}")
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 f"import os\nos.chdir('/tmp')\nopen({target.name!r}, 'w')", f"import os\nos.mkdir({str(target)!r})"):
        result = run_python(code)
        assert not result.ok and "blocked" in result.stderr, code
        assert not target.exists()


def test_one_fork_is_blocked_before_it_happens():
    result = run_python(ONE_FORK)
    assert not result.ok and "os.fork is blocked" in result.stderr and "forked" not in result.stdout


def test_fork_bomb_and_process_spawning_are_contained():
    # Run the bomb only once a single fork is known to be blocked: the hook raises before fork() runs.
    precheck = run_python(ONE_FORK)
    if "os.fork is blocked" not in precheck.stderr:
        pytest.fail(f"fork is not blocked; not running the fork bomb: {precheck}")
    before = _process_count()
    bombs = {
        "import os\nfor _ in range(1000):\n    os.fork()": "os.fork is blocked",
        "import subprocess\nfor _ in range(1000):\n    subprocess.Popen(['sleep', '60'])": "subprocess.Popen is blocked",
        "import os\nos.system('sleep 60')": "os.system is blocked",
        "import os\nos.posix_spawn('/bin/sleep', ['sleep', '60'], {})": "os.posix_spawn is blocked",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()": "os.fork is blocked",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()": "creating processes",
    }
    for code, message in bombs.items():
        result = run_python(code, timeout_s=5, max_processes=16)
        assert not result.ok and message in result.stderr, (code, result)
    assert _process_count() <= before + 2
    assert run_python("print('still fine')").stdout == "still fine\n"


def test_signalling_other_processes_is_blocked():
    result = run_python("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)")
    assert not result.ok and "signalling other processes is blocked" in result.stderr


def test_network_is_blocked():
    result = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert not result.ok and "network access is blocked" in result.stderr


def test_environment_has_no_secrets(monkeypatch):
    monkeypatch.setenv("MIDLINE_TEST_SECRET", "hunter2")
    result = run_python("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'] == os.getcwd())")
    assert result.ok and "MIDLINE_TEST_SECRET" not in result.stdout and "True" in result.stdout


def test_limits_are_set():
    code = "import resource as r\nprint(r.getrlimit(r.RLIMIT_NPROC)[1], r.getrlimit(r.RLIMIT_AS)[1] // 2**20)\nr.setrlimit(r.RLIMIT_AS, (-1, -1))"
    result = run_python(code, memory_mb=300, max_processes=8)
    assert result.stdout.split() == ["8", "300"]
    assert "resource.setrlimit is blocked" in result.stderr


def test_output_is_bounded():
    result = run_python("print('x' * 10**6)", max_output_chars=1000)
    assert result.ok and len(result.stdout) < 1100 and result.stdout.endswith("[... output truncated]")
