"""The README's configuration table documents exactly the server's settings, with their defaults."""

import json
import re
from pathlib import Path

from midline.server.config import Config

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `([\w.]+)` \| `(.*?)` \|", re.M)


def settings(tree: dict, prefix: str = "") -> dict:
    """Dotted setting names -> default values; `enable` maps (per language id) are one setting."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "enable":
            out.update(settings(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_configuration_table_lists_every_setting_with_its_default():
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {name: json.loads(default) for name, default in ROW.findall(section)}
    assert documented == settings(Config().to_json())
