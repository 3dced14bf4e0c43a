"""`python -m midline.server` runs the language server on stdio, like `midline serve`."""

import sys

from .cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
