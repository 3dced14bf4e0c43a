"""`python -m midline.training` = `midline-train`."""

from midline.training.cli import main

raise SystemExit(main())
