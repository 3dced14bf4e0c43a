"""The model side of midline: languages and their syntax, prompt formats, and the models that generate.

- `languages`: the one table of language facts (ids, extensions, grammars, node types, test-file naming).
- `syntax`: tree-sitter parsers and helpers, and string index <-> UTF-8 byte offsets, shared by all.
- `fim`: midline's FIM special tokens and every supported family's prompt layout.
- `tasks`: the instruction tasks (explain, fix, tests, code from a comment) in the shapes a model is asked.
- `backend`: the `Backend` protocol the server is written against, with its prompts and generations.
- `loader`: `load_model` reads a local Hugging Face model directory (safetensors only, never the hub).
- `engine`: `Engine`, the local `Backend`: a KV-cached decode loop with prefix reuse (`static_decode`: the
  static cache and CUDA graphs); `remote`: `RemoteEngine`, the `Backend` over a serving engine's HTTP API.
- `instruct`: an optional chat model for code actions.
- `default/`: the model midline ships and serves when no other is configured (`DEFAULT_MODEL_DIR`).
"""

from importlib import metadata
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"


def _installed_version() -> str:
    """The `midline` distribution's version (pyproject.toml's, the one place it is written)."""
    try:
        return metadata.version("midline")
    except metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "0+unknown"


VERSION = _installed_version()
