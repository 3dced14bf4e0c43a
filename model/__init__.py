"""The model side of midline: FIM prompt formats, loading a local model, and the decode loop.

- `fim`: midline's FIM special tokens and every supported family's prompt layout.
- `loader`: `load_model` reads a local Hugging Face model directory (safetensors only, never the hub).
- `engine`: `Engine` encodes FIM prompts and generates completions with a plain KV-cached decode loop.
"""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
