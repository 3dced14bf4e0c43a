"""Run untrusted Python (model-generated code, held-out tests) in a limited, throwaway subprocess.

`run_python(code)` runs `code` as `__main__` in a fresh interpreter, in a fresh temporary directory
that is deleted afterwards, and returns its exit status and output.

Contained by the kernel, whatever the code does:
- wall-clock time: the child leads its own session; at `timeout_s` its whole process group is killed
  (SIGKILL), as is anything still in the group after a normal exit.
- CPU time (RLIMIT_CPU), address space (RLIMIT_AS = `memory_mb`: a huge allocation raises MemoryError),
  the size of every file written, stdout and stderr included (RLIMIT_FSIZE), open files (RLIMIT_NOFILE),
  core dumps (none), and the output read back (`max_output_chars` per stream).
- processes (RLIMIT_NPROC = `max_processes`, threads included): the kernel enforces it only for a
  non-root user. Run as root, the child becomes `nobody` when that user can run this Python (file
  permissions then apply too); otherwise it stays root, and only the audit hook below stops forks.
- environment: a minimal one (PATH, LANG, HOME = TMPDIR = the temp dir, one thread per math library);
  nothing of the caller's, so no tokens or keys. No stdin.

Contained by a Python audit hook (PEP 578) installed before the code runs; each of these raises
PermissionError in the code:
- new processes: os.fork/forkpty, os.exec*, os.posix_spawn, os.system, subprocess (and its internal
  `_posixsubprocess.fork_exec`), os.mknod; signals to other processes.
- network: sockets other than AF_UNIX pairs; connect/bind/send/name lookups on any socket.
- writes outside the temp dir: open() for writing (and opening directories outside it),
  os.remove/rename/mkdir/rmdir/chmod/chown/utime/truncate/xattrs, shutil copy/move/rmtree/archives,
  sqlite3 database files; symlinks and hard links anywhere.
- ctypes (loading libraries, looking up symbols, calling foreign functions, raw memory access),
  raising resource limits, and listing all objects with gc (a way to reach the hook's state).

Not contained:
- reading: the code can read every file its user can read (as root without `nobody`: all of them)
  and print it; only the caller sees the output.
- deliberate escapes: a hook inside the interpreter guards against mistakes and careless code, not
  against code written to defeat it (e.g. memory corruption through a native extension). Run hostile
  code in a container or VM; the kernel limits above hold regardless.
- host contention: the child shares CPU, memory bandwidth and disk with the host (no cgroups).
"""

from __future__ import annotations

import functools
import json
import math
import os
import pwd
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

_MAIN = "main.py"  # the code's file name inside the temp dir
_LAUNCH = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__midline_sandbox__')['_boot'](sys.argv[2])"


@dataclass
class SandboxResult:
    """How a sandboxed run ended."""

    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None  # "timeout", "cpu time limit", "file size limit", "killed (SIGKILL)", ...; None if it exited
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    max_processes: int = 64,
    files: dict[str, str] | None = None,
    file_size_mb: int = 64,
    max_output_chars: int = 200_000,
) -> SandboxResult:
    """Run `code` as `__main__` in a sandboxed interpreter (see the module docstring for the guarantees).

    `files` (relative path -> text) are written into the temp dir first; the code runs there and can
    import them. Limits: wall time `timeout_s`, address space `memory_mb`, `max_processes`, and
    `file_size_mb` per written file.
    """
    ids = _unprivileged_ids()
    with tempfile.TemporaryDirectory(prefix="midline-sandbox-", ignore_cleanup_errors=True) as tmp:
        root = os.path.realpath(tmp)
        _write_files(root, {_MAIN: code, **(files or {})})
        if ids is not None:
            _chown_tree(root, *ids)
        settings = {"root": root, "limits": _limits(timeout_s, memory_mb, max_processes, file_size_mb)}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            returncode, timed_out, elapsed = _supervise(root, settings, out, err, timeout_s, ids)
            stdout, stderr = _read_back(out, max_output_chars), _read_back(err, max_output_chars)
    return SandboxResult(returncode, stdout, stderr, timed_out, _killed_reason(returncode, timed_out), elapsed)


# -- parent side ----------------------------------------------------------------------------------


def _limits(timeout_s: float, memory_mb: int, max_processes: int, file_size_mb: int) -> list[tuple[str, int, int]]:
    """(rlimit name, soft, hard) for the child. CPU: SIGXCPU a second past the wall limit, SIGKILL one later."""
    cpu = math.ceil(timeout_s) + 1
    memory = memory_mb * 2**20
    fsize = file_size_mb * 2**20
    return [
        ("RLIMIT_AS", memory, memory),
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_FSIZE", fsize, fsize),
        ("RLIMIT_NPROC", max_processes, max_processes),
        ("RLIMIT_NOFILE", 256, 256),
        ("RLIMIT_CORE", 0, 0),
    ]


def _write_files(root: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        rel = PurePath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"sandbox file names must be relative paths inside the temp dir, got {name!r}")
        path = Path(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _chown_tree(root: str, uid: int, gid: int) -> None:
    for folder, _, names in os.walk(root):
        os.chown(folder, uid, gid)
        for name in names:
            os.chown(os.path.join(folder, name), uid, gid)


def _environment(root: str) -> dict[str, str]:
    """A minimal environment: nothing inherited from the caller."""
    single_thread = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": root,
        "TMPDIR": root,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # reproducible set/dict-of-str order in doctest output
        "PYTHONDONTWRITEBYTECODE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **single_thread,
    }


def _command(settings: dict) -> list[str]:
    # -s: no user site-packages; -B: no .pyc writes. The environment is ours, so -E/-I are not needed
    # (and would drop PYTHONHASHSEED). The boot code is this file's `_boot`, loaded by path.
    return [sys.executable, "-s", "-B", "-X", "utf8", "-c", _LAUNCH, os.path.abspath(__file__), json.dumps(settings)]


def _supervise(root: str, settings: dict, out, err, timeout_s: float, ids: tuple[int, int] | None) -> tuple[int, bool, float]:
    """Start the child, wait up to `timeout_s`, and kill its process group: (returncode, timed out, seconds)."""
    as_user = {"user": ids[0], "group": ids[1], "extra_groups": []} if ids else {}
    start = time.monotonic()
    proc = subprocess.Popen(
        _command(settings), cwd=root, env=_environment(root), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        start_new_session=True, close_fds=True, **as_user,
    )
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        proc.wait()
    return proc.returncode, timed_out, time.monotonic() - start


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_back(stream, max_chars: int) -> str:
    stream.seek(0)
    data = stream.read(4 * max_chars + 4).decode("utf-8", "replace")
    return data if len(data) <= max_chars else data[:max_chars] + "\n[... output truncated]"


def _killed_reason(returncode: int, timed_out: bool) -> str | None:
    if timed_out:
        return "timeout"
    if returncode >= 0:
        return None
    sig = -returncode
    reasons = {
        signal.SIGXCPU: "cpu time limit",
        signal.SIGXFSZ: "file size limit",
        signal.SIGKILL: "killed (SIGKILL)",
        signal.SIGSEGV: "crashed (SIGSEGV)",
    }
    try:
        return reasons.get(signal.Signals(sig), f"signal {signal.Signals(sig).name}")
    except ValueError:
        return f"signal {sig}"


@functools.cache
def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` if we are root and `nobody` can run this Python and this file; else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    probe = [sys.executable, "-s", "-B", "-c", "import runpy, sys; runpy.run_path(sys.argv[1])", os.path.abspath(__file__)]
    try:
        done = subprocess.run(
            probe, cwd="/", env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=60, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (entry.pw_uid, entry.pw_gid) if done.returncode == 0 else None


# -- child side -----------------------------------------------------------------------------------
# Everything below runs in the sandboxed interpreter, before the code.

# Events refused outright.
_DENIED = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
    "subprocess.Popen", "pty.spawn", "os.killpg", "os.symlink", "os.link",
    "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.string_at", "ctypes.wstring_at",
    "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "sys._current_frames",
})
# Events that change the file system, and which of their arguments are paths that must be in the temp dir.
_WRITES = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.truncate": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,), "shutil.copytree": (1,),
    "shutil.rmtree": (0,), "shutil.move": (0, 1), "shutil.chown": (0,), "shutil.make_archive": (0,),
    "shutil.unpack_archive": (1,), "sqlite3.connect": (0,),
}
# Events whose file-descriptor form could change a file opened read-only (fchmod & co.).
_FD_DENIED = frozenset({"os.chmod", "os.chown", "os.utime", "os.setxattr", "os.removexattr", "os.chflags"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_REIMPORT_DENIED = frozenset({"_posixsubprocess", "posix"})


def _boot(settings_json: str) -> None:
    """Set the limits, disarm process creation, install the audit hook, and run main.py as __main__."""
    settings = json.loads(settings_json)
    root = settings["root"]
    for name, soft, hard in settings["limits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    _disarm()
    path = os.path.join(root, _MAIN)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    sys.addaudithook(_make_hook(root))
    _run_main(path, source)


def _denied(*_args, **_kwargs):
    raise PermissionError("sandbox: creating processes and device nodes is blocked")


def _disarm() -> None:
    """Replace process/device creation that raises no audit event of its own."""
    import _posixsubprocess
    import posix

    _posixsubprocess.fork_exec = _denied
    for name in ("mknod", "mkfifo"):
        if hasattr(posix, name):
            setattr(posix, name, _denied)
            setattr(os, name, _denied)


def _run_main(path: str, source: str) -> None:
    import types

    main = types.ModuleType("__main__")
    main.__file__ = path
    sys.modules["__main__"] = main
    sys.argv = [path]
    sys.path[0] = os.path.dirname(path)
    exec(compile(source, path, "exec"), main.__dict__)


def _make_hook(root: str):
    """The audit hook. Its state is bound as default arguments (not globals or closures), so assigning
    module attributes does not change it."""
    import posix
    import socket

    def hook(
        event: str, args: tuple, *, root=root, denied=_DENIED, writes=_WRITES, fd_denied=_FD_DENIED,
        reimport=_REIMPORT_DENIED, write_flags=_WRITE_FLAGS, check=_check_open,
        inside=_inside, text=_path_text, getcwd=posix.getcwd, getpid=posix.getpid, stat_=posix.stat,
        af_unix=socket.AF_UNIX,
    ) -> None:
        if event in denied:
            raise PermissionError(f"sandbox: {event} is blocked")
        if event == "open":
            check(args, root, getcwd(), write_flags, inside, text, stat_)
        elif event in writes:
            for i in writes[event]:
                path = args[i]
                if isinstance(path, int) and event not in fd_denied:
                    continue  # an fd: opened through the checks above (ftruncate needs a writable one)
                if event == "sqlite3.connect" and path == ":memory:":
                    continue
                if event == "sqlite3.connect" and isinstance(path, str) and path.startswith("file:"):
                    raise PermissionError("sandbox: sqlite3 URIs are blocked")
                as_text = text(path)
                if as_text is None or not inside(as_text, root, getcwd()):
                    raise PermissionError(f"sandbox: {event} outside the sandbox directory is blocked: {path!r}")
        elif event.startswith("socket."):
            if not (event == "socket.__new__" and args[1] == af_unix) and event != "socket.gethostname":
                raise PermissionError(f"sandbox: network access is blocked ({event})")
        elif event == "os.kill":
            if args[0] != getpid():
                raise PermissionError("sandbox: signalling other processes is blocked")
        elif event == "ctypes.dlopen":
            if args[0] is not None:  # `import ctypes` opens the running program itself (None)
                raise PermissionError(f"sandbox: loading libraries with ctypes is blocked: {args[0]!r}")
        elif event == "import":
            if args[0] in reimport:
                raise PermissionError(f"sandbox: re-importing {args[0]} is blocked")

    return hook


def _check_open(args: tuple, root: str, cwd: str, write_flags: int, inside, text, stat_) -> None:
    """Refuse to open for writing outside `root`, to open a directory outside it (a dir_fd would escape
    the relative-path check), and relative paths with `..` (which could be relative to such a dir_fd)."""
    path, mode, flags = args
    if isinstance(path, int):
        return
    writing = bool((flags or 0) & write_flags) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
    as_text = text(path)
    if as_text is None:
        if writing:
            raise PermissionError(f"sandbox: writing through {type(path).__name__} paths is blocked")
        return
    relative_up = not as_text.startswith("/") and ".." in as_text.split("/")
    if writing or relative_up or _is_dir(as_text, stat_):
        if not inside(as_text, root, cwd):
            what = "writing" if writing else "opening"
            raise PermissionError(f"sandbox: {what} {as_text!r} outside the sandbox directory is blocked")


def _is_dir(path: str, stat_) -> bool:
    try:
        return stat.S_ISDIR(stat_(path).st_mode)
    except (OSError, ValueError):
        return False


def _path_text(path) -> str | None:
    """A path argument as text; None for anything but str, bytes, pathlib paths and os.DirEntry."""
    if isinstance(path, os.DirEntry):
        path = path.path
    if isinstance(path, str):
        return path
    if isinstance(path, bytes):
        return path.decode("utf-8", "surrogateescape")
    if isinstance(path, PurePath):
        return PurePath.__str__(path)
    return None


def _inside(path: str, root: str, cwd: str) -> bool:
    """Whether `path` lies in `root`, judged by its text: no symlinks can exist in `root` (creating them
    is blocked), so normalizing `..` lexically is exact there. A relative path must not go up (it may be
    relative to a directory fd rather than `cwd`), and `cwd` must itself be inside."""
    if not path.startswith("/"):
        if ".." in path.split("/") or not _inside(cwd, root, root):
            return False
        path = cwd + "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    normal = "/" + "/".join(parts)
    return normal == root or normal.startswith(root + "/")
