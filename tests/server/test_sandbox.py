"""The sandbox for generated code: kernel isolation (bubblewrap) first, an audit hook second.

The attacks are code written to escape (issue 13); each is judged from the host: a file that must not
appear, a process that must not die or must not outlive the run, a listener that must see no
connection, a secret that must not come back. Each runs with the audit hook and without it (the
kernel's isolation alone). Where bubblewrap cannot run, they are skipped, and nothing is run at all.
"""

from __future__ import annotations

import os
import select
import site
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Callable

import pytest

from midline.server import sandbox
from midline.server.sandbox import WORK_DIR, SandboxResult, SandboxUnavailable, run_python, sandbox_state
from midline.server.verify import verify_tests

from ..marks import SANDBOX as STATE, needs_sandbox

# A single fork whose child exits at once: harmless even if it were not blocked.
ONE_FORK = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\nprint('forked')\n"
# Counts the processes in the sandbox's own PID namespace (its /proc), after the code ran.
COUNT_PROCESSES = "\nimport os\nprint('processes', sum(p.isdigit() for p in os.listdir('/proc')))\n"


# -- attacks --------------------------------------------------------------------------------------

# Helpers every attack can use to get past the audit hook first (all of these worked on the sandbox
# that relied on it): the hook's state through the caller's frame, and raw memory writes through a
# ctypes pointer that shares a union with an integer (no audit event).
PRELUDE = '''\
import ctypes, os, signal, struct, sys, time

ZEROS = bytes(64)


def sandbox_globals():
    frame = sys._getframe(1)
    while frame is not None and "_DENIED" not in frame.f_globals:
        frame = frame.f_back
    return frame.f_globals if frame is not None else {}


class Cell(ctypes.Union):  # an address and a pointer in the same bytes
    _fields_ = [("address", ctypes.c_uint64), ("pointer", ctypes.POINTER(ctypes.c_uint64))]


def poke(address, value):
    cell = Cell()
    cell.address = address
    cell.pointer[0] = value


def attempt(what, action):
    try:
        return action()
    except BaseException as e:
        print(what, "failed:", type(e).__name__, e)


def unhook():
    g = sandbox_globals()
    attempt("clear _WRITES", lambda: g["_WRITES"].clear())
    attempt("replace _inside", lambda: setattr(g["_inside"], "__code__", (lambda path, root, cwd: True).__code__))
    denied = g.get("_DENIED")
    if denied is not None:  # empty the frozenset in place: mask 0, a table of empty entries
        attempt("empty _DENIED", lambda: (poke(id(denied) + 32, 0), poke(id(denied) + 40, id(ZEROS) + 32)))


def libc():
    return ctypes.CDLL(None, use_errno=True)


def spawn(argv, setsid=False):
    import subprocess
    err_read, err_write = os.pipe()
    argv = [os.fsencode(a) for a in argv]
    return subprocess._fork_exec(argv, [argv[0]], True, (err_write,), None, None, -1, -1, -1, -1, -1, -1,
                                 err_read, err_write, True, setsid, -1, None, None, None, -1, None, False)

'''


@dataclass
class Host:
    """What the attacks aim at, on the host side."""

    marker: Path  # must not be created
    token: str  # no process whose command line holds it may outlive the run
    secret: str  # in the server's environment and in the planted key
    key: Path  # ~/.ssh/id_test under the HOME of the test
    sleeper: subprocess.Popen  # a host process (with the secret in its environment) that must survive
    listener: socket.socket  # a loopback listener that must see no connection
    workspace: Path  # shown read-only: mod.py must keep its text
    planted: list[Path] = field(default_factory=list)  # other host paths that must not appear

    def values(self) -> dict[str, str]:
        return {"marker": str(self.marker), "token": self.token, "key": str(self.key), "pid": str(self.sleeper.pid),
                "port": str(self.listener.getsockname()[1]), "workspace": str(self.workspace),
                "site": str(self.planted[0]), "shm": str(self.planted[1])}


@dataclass
class Attack:
    name: str
    code: str  # a string.Template over Host.values()
    escaped: Callable[[Host, SandboxResult], str | None]  # how it got out, or None
    limits: dict = field(default_factory=dict)


def spawned(host: Host, result: SandboxResult) -> str | None:
    if "SPAWNED" in result.stdout:
        return "a process started"
    return wrote_marker(host, result)


def wrote_marker(host: Host, result: SandboxResult) -> str | None:
    return f"wrote {host.marker}" if host.marker.exists() else None


def survivors(host: Host, result: SandboxResult) -> str | None:
    alive = _processes_holding(host.token)
    return f"processes outlived the run: {alive}" if alive else None


def killed_sleeper(host: Host, result: SandboxResult) -> str | None:
    time.sleep(0.2)
    return "killed a host process" if host.sleeper.poll() is not None else None


def leaked_secret(host: Host, result: SandboxResult) -> str | None:
    return "read the secret" if host.secret in result.stdout + result.stderr else None


def connected(host: Host, result: SandboxResult) -> str | None:
    ready, _, _ = select.select([host.listener], [], [], 0.2)
    return "connected to the host's loopback" if ready else None


def changed_workspace(host: Host, result: SandboxResult) -> str | None:
    return "changed the workspace" if (host.workspace / "mod.py").read_text() != "VALUE = 1\n" else None


def planted_file(host: Host, result: SandboxResult) -> str | None:
    made = [str(p) for p in host.planted if p.exists()]
    return f"created {made}" if made else None


def over_the_disk_cap(host: Host, result: SandboxResult) -> str | None:
    written = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("written ")]
    return f"wrote {written[0]} bytes with a 4 MiB cap" if written and written[0] > 4 * 2**20 else None


def forked_past_the_limit(host: Host, result: SandboxResult) -> str | None:
    forks = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("forks ")]
    return f"{forks[0]} processes with a limit of 8" if forks and forks[0] > 8 else None


def privileged(host: Host, result: SandboxResult) -> str | None:
    ids = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("ids ")]
    if not ids:
        return None
    uid, euid, caps = ids[0]
    return f"ran as uid {uid} with capabilities {caps}" if "0" in (uid, euid) or int(caps, 16) else None


SHELL = "echo SPAWNED; echo x > $marker"
ATTACKS = [
    Attack("fork_exec captured by subprocess", f"spawn(['/bin/sh', '-c', '{SHELL}'])\ntime.sleep(0.5)", spawned),
    Attack("setsid child survives the group kill",
           "spawn([sys.executable, '-c', 'import time; time.sleep(30)', '$token'], setsid=True)\ntime.sleep(0.5)",
           survivors),
    Attack("frame globals: _WRITES.clear()",
           "attempt('clear', lambda: sandbox_globals()['_WRITES'].clear())\nos.mkdir('$marker')", wrote_marker),
    Attack("frame globals: _inside.__code__",
           "g = sandbox_globals()\n"
           "attempt('replace', lambda: setattr(g['_inside'], '__code__', (lambda p, r, c: True).__code__))\n"
           "open('$marker', 'w').write('x')", wrote_marker),
    Attack("subinterpreter runs os.system",
           "try:\n    import _xxsubinterpreters as interpreters\n"
           "except ImportError:\n    import _interpreters as interpreters\n"
           f"interpreters.run_string(interpreters.create(), \"import os; os.system('{SHELL}')\")", spawned),
    Attack("ctypes memory writes re-enable system()", f"unhook()\nlibc().system(b'{SHELL}')", spawned),
    Attack("kill a host process", "unhook()\nattempt('kill', lambda: os.kill($pid, signal.SIGKILL))\n"
           "attempt('pidfd', lambda: signal.pidfd_send_signal(os.pidfd_open($pid), signal.SIGKILL))", killed_sleeper),
    Attack("read ~/.ssh", "unhook()\nprint(open('$key').read())", leaked_secret),
    Attack("read the server's environment",
           "print(dict(os.environ))\nfor pid in os.listdir('/proc'):\n"
           "    attempt(pid, lambda: print(open(f'/proc/{pid}/environ', 'rb').read()))", leaked_secret),
    Attack("connect to the host's loopback",
           "import socket\n"
           "attempt('socket', lambda: socket.create_connection(('127.0.0.1', $port), timeout=1))\nunhook()\n"
           "fd = libc().socket(2, 1, 0)\naddress = struct.pack('!HH4s8x', 2, $port, bytes([127, 0, 0, 1]))\n"
           "address = struct.pack('=H', 2) + address[2:]\nprint('connect', libc().connect(fd, address, 16))",
           connected),
    Attack("write outside the work dir", "unhook()\nopen('$marker', 'w').write('x')", wrote_marker),
    Attack("change the code under test (read-only)", "unhook()\nopen('$workspace/mod.py', 'w').write('VALUE = 2\\n')",
           changed_workspace, {"read_only": "workspace"}),
    Attack("plant code in site-packages", "unhook()\nopen('$site', 'w').write('import os\\n')", planted_file),
    Attack("fill the host's shared memory", "unhook()\nopen('$shm', 'w').write('x')", planted_file),
    Attack("disk over the total cap in small files",
           "total = 0\nfor i in range(100):\n    try:\n"
           "        with open(f'f{i}', 'wb') as f:\n            f.write(bytes(100_000))\n"
           "        total += 100_000\n    except OSError:\n        break\nprint('written', total)", over_the_disk_cap,
           {"disk_mb": 4}),
    Attack("fork bomb through libc",
           "unhook()\nforks = 0\nfor _ in range(40):\n    pid = libc().fork()\n"
           "    if pid == 0:\n        time.sleep(2)\n        os._exit(0)\n"
           "    forks += pid > 0\nprint('forks', forks)" + COUNT_PROCESSES, forked_past_the_limit,
           {"max_processes": 8}),
    Attack("runs as root or with capabilities",
           "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]\n"
           "print('ids', os.getuid(), os.geteuid(), caps)", privileged),
]


def _processes_holding(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture
def host(tmp_path, monkeypatch):
    token = uuid.uuid4().hex
    secret = f"secret-{uuid.uuid4().hex}"
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_test"
    key.write_text(secret)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MIDLINE_TEST_SECRET", secret)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "mod.py").write_text("VALUE = 1\n")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                               env={**os.environ, "MIDLINE_TEST_SECRET": secret})
    listener = socket.create_server(("127.0.0.1", 0))
    planted = [Path(site.getsitepackages()[0]) / f"midline_escape_{token}.pth",
               Path(f"/dev/shm/midline-escape-{token}")]
    yield Host(tmp_path / f"escaped-{token}", token, secret, key, sleeper, listener, workspace, planted)
    sleeper.kill()
    sleeper.wait()
    listener.close()
    for pid in _processes_holding(token):
        os.kill(pid, 9)
    for path in planted:
        path.unlink(missing_ok=True)


def attempt(attack: Attack, host: Host, run: Callable[..., SandboxResult] = run_python, **options) -> str | None:
    """Run `attack` against `host` with `run`; how it escaped, or None."""
    limits = {name: [str(host.workspace)] if value == "workspace" else value for name, value in attack.limits.items()}
    code = PRELUDE + Template(attack.code).substitute(host.values())
    result = run(code, timeout_s=10, **limits, **options)
    return attack.escaped(host, result)


@needs_sandbox
@pytest.mark.parametrize("hook", [True, False], ids=["with hook", "kernel alone"])
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_does_not_escape(attack, hook, host):
    assert attempt(attack, host, audit_hook=hook) is None


# -- ordinary code --------------------------------------------------------------------------------


@needs_sandbox
def test_normal_code_runs_and_output_is_captured():
    result = run_python("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nraise SystemExit(3)")
    assert (result.returncode, result.stdout, result.stderr) == (3, "hello\n", "oops\n")
    assert not result.timed_out and result.killed_reason is None


@needs_sandbox
def test_files_are_importable_in_the_work_dir():
    result = run_python("import os, helper\nprint(helper.answer())\nprint(os.getcwd())",
                        files={"pkg/__init__.py": "", "helper.py": "def answer():\n    return 42\n"})
    assert result.ok, result.stderr
    assert result.stdout.split() == ["42", WORK_DIR]


@needs_sandbox
def test_read_only_folders_are_importable(tmp_path):
    (tmp_path / "shared.py").write_text("NAME = 'shared'\n")
    result = run_python(f"import sys\nsys.path.append({str(tmp_path)!r})\nimport shared\nprint(shared.NAME)",
                        read_only=[str(tmp_path)])
    assert result.ok and result.stdout == "shared\n", result.stderr


@needs_sandbox
def test_writes_inside_the_work_dir_work():
    code = ("import pathlib, tempfile\npathlib.Path('out.txt').write_text('x')\n"
            "print(pathlib.Path('out.txt').read_text(), tempfile.mkdtemp() != '')")
    result = run_python(code)
    assert result.ok and result.stdout == "x True\n", result.stderr


@needs_sandbox
def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1)
    assert result.timed_out and result.killed_reason == "timeout" and not result.ok
    assert time.monotonic() - start < 5


@needs_sandbox
def test_signals_are_reported_as_negative_status():
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", audit_hook=False)
    assert result.returncode == -11 and result.killed_reason == "crashed (SIGSEGV)"


@needs_sandbox
def test_huge_allocation_fails():
    result = run_python("x = bytearray(10**11)", memory_mb=256)
    assert not result.ok
    assert "MemoryError" in result.stderr or result.killed_reason is not None


@needs_sandbox
def test_careless_writes_outside_fail_with_a_clear_message(tmp_path):
    target = tmp_path / f"evil-{uuid.uuid4().hex}"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 "import os\nos.chdir('/')\nopen('evil', 'w')", f"import os\nos.mkdir({str(target)!r})"):
        result = run_python(code)
        assert not result.ok and "blocked" in result.stderr, code
        assert not target.exists()


@needs_sandbox
def test_fork_bomb_and_process_spawning_are_contained():
    # Counted inside the sandbox's PID namespace: the machine's other processes do not matter.
    bombs = {
        "import os\nfor _ in range(1000):\n    os.fork()": "os.fork is blocked",
        "import subprocess\nfor _ in range(1000):\n    subprocess.Popen(['sleep', '60'])":
            "subprocess.Popen is blocked",
        "import os\nos.system('sleep 60')": "os.system is blocked",
        "import os\nos.posix_spawn('/bin/sleep', ['sleep', '60'], {})": "os.posix_spawn is blocked",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()": "os.fork is blocked",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()": "creating processes",
        ONE_FORK: "os.fork is blocked",
    }
    for code, message in bombs.items():
        for hook in (True, False):
            result = run_python(f"try:\n{_indent(code)}\nexcept Exception as e:\n    print(e)\n{COUNT_PROCESSES}",
                                timeout_s=5, max_processes=16, audit_hook=hook)
            assert result.ok and "processes 2" in result.stdout and "forked" not in result.stdout, (code, hook, result)
            if hook:
                assert message in result.stdout, (code, result)
    assert run_python("print('still fine')").stdout == "still fine\n"


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.split("\n"))


@needs_sandbox
def test_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("MIDLINE_TEST_SECRET", "hunter2")
    result = run_python("import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'] == os.getcwd())")
    assert result.ok and "MIDLINE_TEST_SECRET" not in result.stdout and "True" in result.stdout


@needs_sandbox
def test_limits_are_set():
    code = ("import resource as r\nprint(r.getrlimit(r.RLIMIT_NPROC)[1], r.getrlimit(r.RLIMIT_AS)[1] // 2**20)\n"
            "r.setrlimit(r.RLIMIT_AS, (-1, -1))")
    result = run_python(code, memory_mb=300, max_processes=8)
    assert result.stdout.split() == ["8", "300"]
    assert "resource.setrlimit is blocked" in result.stderr


@needs_sandbox
def test_output_is_bounded():
    result = run_python("print('x' * 10**6)", max_output_chars=1000)
    assert result.ok and len(result.stdout) < 1100 and result.stdout.endswith("[... output truncated]")


# -- without isolation ----------------------------------------------------------------------------


@pytest.fixture
def fresh_state():
    """Forget the cached availability before and after the test."""
    sandbox.sandbox_state.cache_clear()
    yield
    sandbox.sandbox_state.cache_clear()


def test_without_bubblewrap_nothing_runs_and_tests_are_unverified(tmp_path, monkeypatch, fresh_state):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    marker = tmp_path / "ran"
    state = sandbox_state()
    assert not state.available and state.description == "off: bubblewrap is not installed (apt-get install bubblewrap)"
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        run_python(f"open({str(marker)!r}, 'w')")
    source = f"def test_x():\n    open({str(marker)!r}, 'w')\n"
    verified = verify_tests(source, test_file="test_m.py", files={"m.py": ""})
    assert not verified.ran and not marker.exists()
    assert verified.note == "not run: bubblewrap is not installed (apt-get install bubblewrap)"
    assert verified.source == f"# midline: generated tests, unverified ({verified.note})\n{source}"


def test_a_bubblewrap_that_cannot_isolate_runs_nothing(tmp_path, monkeypatch, fresh_state):
    fake = tmp_path / "bwrap"  # answers like bubblewrap, fails like one without user namespaces
    fake.write_text('#!/bin/sh\ncase "$1" in --version) echo "bubblewrap 0.8.0";; --help) echo "--size BYTES";;\n'
                    '*) echo "bwrap: setting up uid map: Permission denied" >&2; exit 1;; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    state = sandbox_state()
    assert not state.available and "uid map: Permission denied" in state.detail
    with pytest.raises(SandboxUnavailable):
        run_python("print(1)")


def test_generate_tests_without_a_sandbox_offers_them_unverified(tmp_path, monkeypatch, fresh_state):
    from tests.server.test_actions import doc, offer_of, resolve

    monkeypatch.setenv("PATH", str(tmp_path))
    d = doc("def add(a, b):\n    return a + b\n", "calc.py", tmp_path)
    offer = offer_of(d, "tests", 1)
    assert offer.title.endswith("(unverified)")
    outcome, _ = resolve({"tests": "add():\n    assert add(1, 2) == 3\n"}, d, offer, tmp_path)
    assert not outcome.verified.ran and "bubblewrap is not installed" in outcome.text.split("\n")[0]
    assert "def test_add():" in outcome.text


def test_status_says_whether_generated_tests_can_run(tmp_path, monkeypatch, fresh_state):
    from midline.server.server import MidlineServer, status

    ls = MidlineServer()
    if STATE.available:
        assert status(ls)["sandbox"].startswith("bubblewrap ")
    sandbox.sandbox_state.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))
    assert status(ls)["sandbox"] == "off: bubblewrap is not installed (apt-get install bubblewrap)"
