"""Run untrusted Python (model-generated code, held-out tests) in a throwaway sandbox isolated by the kernel.

`run_python(code)` runs `code` as `__main__` in a fresh interpreter under bubblewrap (`bwrap`, user
namespaces) and returns its exit status and output. Where that isolation is not available (no `bwrap`,
user namespaces disabled, an old bubblewrap) it runs nothing and raises `SandboxUnavailable`, whose
message says why; `sandbox_state()` tells beforehand (checked once, with a trial run).

The first layer, the operating system's (whatever the code does, including defeating the second):
- namespaces: no network (a private, empty network namespace), a private PID namespace (the code sees
  and can signal only its own processes; all of them die with it), private IPC and host name, and a
  user namespace in which the code is the unprivileged uid 65534 with no capabilities and cannot
  create further namespaces. It never runs as root: it refuses to start if it finds itself root.
- file system: an empty root; read-only views of /usr and the system library folders, the dynamic
  linker's cache, the Python installation and its site-packages, this file, and the folders the caller
  names (`read_only`: the workspace, for the module's imports); a fresh /proc and a minimal /dev; the
  work dir, `WORK_DIR`, a tmpfs capped at `disk_mb` in all, which holds `code` and `files` and is the
  only writable place (HOME and TMPDIR point to it). The user's home, keys and other files are not there.
- environment: a minimal one, nothing of the caller's (no tokens or keys). No stdin.
- a seccomp filter (x86-64 and arm64): no new processes (fork, vfork and clone other than threads fail
  with EPERM), no namespaces, mounts, ptrace, keyrings, BPF, io_uring, pidfds or kernel modules.
- limits: wall-clock time (at `timeout_s` bubblewrap is killed, and with it the whole PID namespace;
  `--die-with-parent` if the caller dies), CPU time, address space (`memory_mb`: a huge allocation
  raises MemoryError), the size of each written file (`file_size_mb`; stdout and stderr are files too),
  threads (`max_processes`, RLIMIT_NPROC: the kernel does not apply it to a caller that is root; the
  address space bounds them anyway), open files, no core dumps, and the output read back.

The second layer, a Python audit hook (PEP 578) installed before the code runs, refuses process
creation, sockets, writes outside the work dir, ctypes and the like with a PermissionError that names
the cause. It makes careless code fail clearly; it is not a security boundary (code in the same
interpreter can defeat it), the first layer is.

Not contained: host contention (CPU, memory bandwidth; no cgroups). The code can read what the
read-only views show: the Python installation, system libraries and the caller's `read_only` folders.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path, PurePath

WORK_DIR = "/midline-sandbox"  # the code's working directory inside the sandbox (a tmpfs)
SANDBOX_UID = 65534  # the code's uid and gid inside its user namespace
INSTALL_HINT = "apt-get install bubblewrap"
_MAIN = "main.py"  # the code's file name inside the work dir
_LAUNCH = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__midline_sandbox__')['_boot'](sys.argv[2])"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime")
_REFUSED_AS_ROOT = 125  # the child's exit status when it finds itself root


class SandboxUnavailable(RuntimeError):
    """The kernel isolation is not available here, so untrusted code is not run; the message says why."""


@dataclass(frozen=True)
class SandboxState:
    """Whether generated code can be run, and with what (or why not)."""

    available: bool
    detail: str  # "bubblewrap 0.8.0, seccomp" or the reason it is off

    @property
    def description(self) -> str:
        return self.detail if self.available else f"off: {self.detail}"


@dataclass
class SandboxResult:
    """How a sandboxed run ended."""

    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool
    # "timeout", "cpu time limit", "file size limit", "killed (SIGKILL)", ...; None if it exited
    killed_reason: str | None
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
    disk_mb: int = 64,
    read_only: list[str] | tuple[str, ...] = (),
    max_output_chars: int = 200_000,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run `code` as `__main__` in the sandbox (see the module docstring for the guarantees).

    `files` (relative path -> text) are written into the work dir first; the code runs there and can
    import them. `read_only` folders are visible at their own paths, read-only (not the home folder or
    a folder above it). Limits: wall time `timeout_s`, address space `memory_mb`, `max_processes`,
    `file_size_mb` per written file and `disk_mb` in all. `audit_hook=False` leaves out the second
    layer (for tests of the first). Raises `SandboxUnavailable` where the sandbox cannot run.
    """
    state = sandbox_state()
    if not state.available:
        raise SandboxUnavailable(state.detail)
    return _run(
        code,
        files or {},
        timeout_s,
        memory_mb,
        max_processes,
        file_size_mb,
        disk_mb,
        read_only,
        max_output_chars,
        audit_hook,
    )


@functools.cache
def sandbox_state() -> SandboxState:
    """Whether bubblewrap is installed and a trial run is isolated as expected (checked once)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return SandboxState(False, f"bubblewrap is not installed ({INSTALL_HINT})")
    version, options = _bwrap_version(bwrap)
    if "--size" not in options:
        return SandboxState(
            False, f"{version or 'bubblewrap'} is too old (no --size for a capped work dir; 0.5 or newer needed)"
        )
    try:
        probe = _run(_PROBE, {}, 30.0, 256, 8, 1, 1, (), 4000, True)
    except OSError as e:
        return SandboxState(False, f"bubblewrap cannot start: {e}")
    if probe.stdout.strip() != "isolated":
        why = (
            (probe.stderr.strip().split("\n") or ["?"])[-1] or probe.stdout.strip() or f"exit status {probe.returncode}"
        )
        return SandboxState(False, f"bubblewrap cannot isolate code here (user namespaces disabled?): {why}")
    return SandboxState(True, f"{version}, seccomp" if _seccomp_program() else version)


# What the trial run checks: an unprivileged uid, no capabilities, alone in its PID namespace, no
# network interface but loopback, and no way to write outside the work dir.
_PROBE = """\
import os, socket
caps = [l for l in open('/proc/self/status') if l.startswith('CapEff:')][0].split()[1]
pids = [p for p in os.listdir('/proc') if p.isdigit()]
for path in ('/', '/dev', '/usr'):
    try:
        open(os.path.join(path, 'probe'), 'w')
        raise SystemExit('writable: ' + path)
    except OSError:
        pass
if os.getuid() != 0 and int(caps, 16) == 0 and len(pids) <= 2 and [n for _, n in socket.if_nameindex()] == ['lo']:
    print('isolated')
else:
    print('not isolated', os.getuid(), caps, pids, socket.if_nameindex())
"""


# -- parent side ----------------------------------------------------------------------------------


def _run(code: str, files: dict[str, str], timeout_s: float, memory_mb: int, max_processes: int, file_size_mb: int,
         disk_mb: int, read_only, max_output_chars: int, audit_hook: bool) -> SandboxResult:
    """Start bubblewrap with the payload (code, files, limits) on a file descriptor, and collect the result."""
    all_files = {_MAIN: code, **files}
    for name in all_files:
        _check_name(name)
    payload = {
        "files": all_files,
        "limits": _limits(timeout_s, memory_mb, max_processes, file_size_mb),
        "hook": audit_hook,
    }
    program = _seccomp_program()
    with (
        tempfile.TemporaryFile() as data,
        tempfile.TemporaryFile() as filt,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        data.write(json.dumps(payload).encode("utf-8"))
        data.seek(0)
        filt.write(program)
        filt.seek(0)
        command = _bwrap_command(disk_mb, read_only, filt.fileno() if program else None, data.fileno())
        returncode, timed_out, elapsed = _supervise(command, (data.fileno(), filt.fileno()), out, err, timeout_s)
        stdout, stderr = _read_back(out, max_output_chars), _read_back(err, max_output_chars)
    returncode = _child_status(returncode)
    return SandboxResult(returncode, stdout, stderr, timed_out, _killed_reason(returncode, timed_out), elapsed)


def _check_name(name: str) -> None:
    rel = PurePath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"sandbox file names must be relative paths inside the work dir, got {name!r}")


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


def _environment() -> dict[str, str]:
    """The child's environment: nothing inherited from the caller."""
    single_thread = {
        name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    }
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": WORK_DIR,
        "TMPDIR": WORK_DIR,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # reproducible set/dict-of-str order in doctest output
        "PYTHONDONTWRITEBYTECODE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **single_thread,
    }


def _bwrap_command(disk_mb: int, read_only, seccomp_fd: int | None, payload_fd: int) -> list[str]:
    """bwrap's command line: namespaces, the read-only views, the capped work dir, then the interpreter."""
    bwrap = shutil.which("bwrap") or "bwrap"
    _, options = _bwrap_version(bwrap)
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox", "--clearenv"]
    if "--disable-userns" in options:
        args.append("--disable-userns")
    for name, value in _environment().items():
        args += ["--setenv", name, value]
    args += _system_view()
    for path in _read_only_paths(read_only):
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(disk_mb * 2**20), "--tmpfs", WORK_DIR,
             "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORK_DIR]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return [*args, "--", *_command(payload_fd)]


def _command(payload_fd: int) -> list[str]:
    # -s: no user site-packages; -B: no .pyc writes. The environment is ours, so -E/-I are not needed
    # (and would drop PYTHONHASHSEED). The boot code is this file's `_boot`, loaded by path.
    return [sys.executable, "-s", "-B", "-X", "utf8", "-c", _LAUNCH, _this_file(), str(payload_fd)]


def _this_file() -> str:
    return os.path.realpath(__file__)


def _system_view() -> list[str]:
    """Read-only /usr and library folders (symlinks where the host has them: merged /usr) and the linker's files."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _SYSTEM_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def _read_only_paths(extra) -> list[str]:
    """The Python installation, its site-packages, this file and `extra`: real paths, outermost first,
    without nested duplicates, /usr-covered paths, the home folder or anything above it."""
    import site

    python = {
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
    }
    candidates = [*python, *site.getsitepackages(), _this_file(), *map(str, extra)]
    home = os.path.realpath(os.path.expanduser("~"))
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates if p}, key=len):
        if (
            not os.path.exists(path)
            or _within(home, path)
            or any(_within(path, outer) for outer in (*kept, *_SYSTEM_DIRS))
        ):
            continue
        kept.append(path)
    return kept


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@functools.cache
def _bwrap_version(bwrap: str) -> tuple[str, str]:
    """('bubblewrap 0.8.0', the text of --help) of this bwrap; ('', '') if it does not answer."""
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        options = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "", ""
    return version, options


def _supervise(command: list[str], fds: tuple[int, ...], out, err, timeout_s: float) -> tuple[int, bool, float]:
    """Start bwrap, wait up to `timeout_s`, and kill its process group: (returncode, timed out, seconds).
    Killing bwrap kills the sandbox's PID 1 (--die-with-parent) and with it every process inside."""
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        start_new_session=True,
        close_fds=True,
        pass_fds=fds,
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


def _child_status(returncode: int) -> int:
    """bwrap reports a child killed by signal N as exit status 128 + N (as shells do): back to -N.
    bwrap itself killed (the timeout) is already negative. (An explicit exit status over 128 reads as a signal.)"""
    if 128 < returncode < 128 + signal.NSIG:
        return 128 - returncode
    return returncode


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


# -- seccomp --------------------------------------------------------------------------------------

# Syscall numbers: x86-64, and the generic table arm64 uses (no fork/vfork there).
_SYSCALLS = {
    "x86_64": {
        "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "acct": 163, "swapon": 167, "swapoff": 168, "reboot": 169, "syslog": 103, "open_by_handle_at": 304,
    },
    "aarch64": {
        "clone": 220, "clone3": 435, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "keyctl": 219, "add_key": 217,
        "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "kexec_load": 104,
        "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106, "acct": 89,
        "swapon": 224, "swapoff": 225, "reboot": 142, "syslog": 116, "open_by_handle_at": 265,
    },
}
# The same number on every architecture.
_COMMON_SYSCALLS = {"pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
                    "pidfd_open": 434, "pidfd_getfd": 438, "mount_setattr": 442}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000
# BPF opcodes and seccomp return values.
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS = 1, 38


@functools.cache
def _seccomp_program() -> bytes:
    """A classic-BPF seccomp filter for this machine (b"" where its syscall table is not known here):
    other architectures' calls kill the process; fork, vfork, clone without CLONE_THREAD and the calls in
    `_SYSCALLS` fail with EPERM; clone3 with ENOSYS (its flags cannot be inspected; libc then uses clone)."""
    machine = platform.machine()
    if machine not in _SYSCALLS:
        return b""
    denied = sorted({*_SYSCALLS[machine].values(), *_COMMON_SYSCALLS.values()} - {_SYSCALLS[machine]["clone"], 435})
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to relative offsets below.
    program: list[tuple[int, str | None, str | None, int]] = [
        (_LD_ABS, None, None, 4), (_JEQ, None, "kill", _AUDIT_ARCH[machine]), (_LD_ABS, None, None, 0),
    ]
    if machine == "x86_64":
        program.append((_JGE, "deny", None, _X32_BIT))
    program += [(_JEQ, "deny", None, nr) for nr in denied]
    program += [
        (_JEQ, "nosys", None, 435),
        (_JEQ, None, "allow", _SYSCALLS[machine]["clone"]),
        (_LD_ABS, None, None, 16),  # clone's flags (the low half of its first argument)
        (_JSET, "allow", "deny", _CLONE_THREAD),
    ]
    returns = {"allow": _ALLOW, "deny": _ERRNO | _EPERM, "nosys": _ERRNO | _ENOSYS, "kill": _KILL}
    position = {label: len(program) + i for i, label in enumerate(returns)}
    program += [(_RET, None, None, value) for value in returns.values()]
    def offset(i: int, label: str | None) -> int:
        return 0 if label is None else position[label] - i - 1

    return b"".join(
        struct.pack("=HBBI", code, offset(i, jt), offset(i, jf), k) for i, (code, jt, jf, k) in enumerate(program)
    )


# -- child side -----------------------------------------------------------------------------------
# Everything below runs in the sandboxed interpreter, before the code.

# Events refused outright.
_DENIED = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
    "subprocess.Popen", "pty.spawn", "os.killpg", "os.symlink", "os.link",
    "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata",
    "ctypes.string_at", "ctypes.wstring_at",
    "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "sys._current_frames",
})
# Events that change the file system, and which of their arguments are paths that must be in the work dir.
_WRITES = types.MappingProxyType({
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.truncate": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,), "shutil.copytree": (1,),
    "shutil.rmtree": (0,), "shutil.move": (0, 1), "shutil.chown": (0,), "shutil.make_archive": (0,),
    "shutil.unpack_archive": (1,), "sqlite3.connect": (0,),
})
# Events whose file-descriptor form could change a file opened read-only (fchmod & co.).
_FD_DENIED = frozenset({"os.chmod", "os.chown", "os.utime", "os.setxattr", "os.removexattr", "os.chflags"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_REIMPORT_DENIED = frozenset({"_posixsubprocess", "posix", "_xxsubinterpreters", "_interpreters", "_xxinterpchannels"})
# Function attributes whose assignment would change the hook's helpers (not __defaults__: namedtuple sets it).
_FUNCTION_STATE = frozenset({"__code__"})


def _boot(payload_fd: str) -> None:
    """Read the payload, refuse to run as root, write the files, set the limits, disarm process creation,
    install the audit hook (the second layer), and run main.py as __main__."""
    with open(int(payload_fd), "rb") as f:
        payload = json.loads(f.read())
    if os.getuid() == 0 or os.geteuid() == 0:
        sys.stderr.write("sandbox: refusing to run as root\n")
        os._exit(_REFUSED_AS_ROOT)
    root = os.getcwd()
    for name, text in payload["files"].items():
        file = Path(root, name)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text, encoding="utf-8")
    for name, soft, hard in payload["limits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    path = os.path.join(root, _MAIN)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if payload["hook"]:
        _disarm()
        sys.addaudithook(_make_hook(root))
    _run_main(path, source)


def _denied(*_args, **_kwargs):
    raise PermissionError("sandbox: creating processes and device nodes is blocked")


def _disarm() -> None:
    """Replace process/device creation that raises no audit event of its own."""
    import _posixsubprocess
    import posix

    _posixsubprocess.fork_exec = _denied
    if "subprocess" in sys.modules:  # imported already: its own reference to fork_exec
        setattr(sys.modules["subprocess"], "_fork_exec", _denied)  # private: not in its type stubs
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
        af_unix=socket.AF_UNIX, function_state=_FUNCTION_STATE,
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
        elif event == "object.__setattr__":
            if args[1] in function_state and callable(args[0]):
                raise PermissionError(f"sandbox: changing a function's {args[1]} is blocked")
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
