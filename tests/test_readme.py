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


def test_ci_installs_as_the_quickstart_says():
    """CI runs the quickstart's own install lines, PyTorch's CPU build first: no CUDA wheels without a GPU."""
    quickstart = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quickstart, re.S).group(1)
    readme = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("pip install")]
    ci_run = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    # CI's lines may add pip's environment (PIP_RETRIES=0) and -q; they install the same things in the same order.
    ci = [re.sub(r"^(\w+=\S+ )*", "", line).replace(" -q", "") for line in ci_run.splitlines() if "pip install" in line]
    assert ci == readme
    assert readme[0] == "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
