"""Marks shared by test files: tests that run code in the sandbox need bubblewrap, and skip with the reason where it
is missing."""

from __future__ import annotations

import pytest

from midline.server.sandbox import sandbox_state

SANDBOX = sandbox_state()
needs_sandbox = pytest.mark.skipif(not SANDBOX.available, reason=f"no sandbox here: {SANDBOX.detail}")


def require_sandbox() -> None:
    """Skip the calling test or fixture where generated code cannot be run."""
    if not SANDBOX.available:
        pytest.skip(f"no sandbox here: {SANDBOX.detail}")
