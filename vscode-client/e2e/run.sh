#!/usr/bin/env bash
# The VS Code extension's CI stage: build, type-check, lint, unit-test and package the extension, then
# run it end to end in a real VS Code (code-server) driven by Playwright in Debian's headless Chromium.
#
#   bash vscode-client/e2e/run.sh [--update-docs]
#
# It installs its own parts, where they are missing: Node 24 (npm's `node@24` package, into
# vscode-client/.tools/node24: code-server needs it), Debian's chromium and libkrb5-dev (apt-get; one of
# code-server's native modules builds against Kerberos), code-server and playwright-core (npm, into
# vscode-client/.tools/e2e). Everything it installs stays in the repository's ignored folders, or in the
# standard npm and apt caches. The Python side is the repository's .venv (or MIDLINE_PYTHON): a Python
# with midline installed, as .ci/run sets it up. A tiny random-weight model is made for the run.
#
# The tests (one code-server each, one after another): ghost-text.test.mjs (type, accept, pause, code actions, a
# missing server), keys.test.mjs (cycling, accept line, the outcome record, snooze and per-language from the
# status bar menu), notebook.test.mjs (a Jupyter notebook's Python cell).
#
# Artifacts (screenshots, logs) go to vscode-client/e2e/.work/artifacts/; --update-docs also copies the
# ghost-text and cycling screenshots to docs/vscode-ghost-text.png and docs/vscode-cycling.png for the README.
# Exits non-zero on any failure.
set -euo pipefail

CODE_SERVER_VERSION=4.139.1
PLAYWRIGHT_VERSION=1.65.1
NODE_PACKAGE=node@24

HERE="$(cd "$(dirname "$0")" && pwd)"
CLIENT="$(dirname "$HERE")"
REPO="$(dirname "$CLIENT")"
TOOLS="$CLIENT/.tools"
WORK_ROOT="$HERE/.work"
ARTIFACTS="${E2E_ARTIFACTS:-$WORK_ROOT/artifacts}"
UPDATE_DOCS=0
for arg in "$@"; do
  case "$arg" in
    --update-docs) UPDATE_DOCS=1 ;;
    *) echo "usage: $0 [--update-docs]" >&2; exit 2 ;;
  esac
done

# code-server and Chromium keep config, logs and crash reports under the XDG folders: this run's, never
# the user's. (npm's and apt's caches stay where they are.)
export XDG_CONFIG_HOME="$WORK_ROOT/xdg/config" XDG_DATA_HOME="$WORK_ROOT/xdg/data" XDG_CACHE_HOME="$WORK_ROOT/xdg/cache" XDG_STATE_HOME="$WORK_ROOT/xdg/state"

stage_start=$SECONDS
step() { echo "== [$((SECONDS - stage_start)) s] $*"; }

# -- Node 24 ------------------------------------------------------------------------------------------
NODE_HOME="$TOOLS/node24/node_modules/node"
if ! "$NODE_HOME/bin/node" -e 'process.exit(process.versions.node.split(".")[0] === "24" ? 0 : 1)' 2>/dev/null; then
  step "installing $NODE_PACKAGE from npm into $TOOLS/node24"
  rm -rf "$TOOLS/node24"
  npm install --prefix "$TOOLS/node24" --no-save --no-package-lock --no-audit --no-fund "$NODE_PACKAGE"
fi
export PATH="$NODE_HOME/bin:$PATH"
# Native modules (code-server's) build against Node 24's headers, shipped in its platform package.
NODE_DIST="$(dirname "$(ls -d "$NODE_HOME"/node_modules/node-*/include | head -n 1)")"
export npm_config_nodedir="$NODE_DIST"
step "node $(node --version), npm $(npm --version), headers from $NODE_DIST"

# -- Debian packages ------------------------------------------------------------------------------------
CHROMIUM="$(command -v chromium || true)"
if [ -z "$CHROMIUM" ] || ! dpkg -s libkrb5-dev >/dev/null 2>&1; then
  step "installing chromium and libkrb5-dev with apt-get"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium libkrb5-dev
  CHROMIUM="$(command -v chromium)"
fi
step "$("$CHROMIUM" --version 2>/dev/null || echo chromium) at $CHROMIUM"

# -- code-server and playwright-core ------------------------------------------------------------------
installed_version() { node -p "require('$TOOLS/e2e/node_modules/$1/package.json').version" 2>/dev/null || true; }
if [ "$(installed_version code-server)" != "$CODE_SERVER_VERSION" ] || [ "$(installed_version playwright-core)" != "$PLAYWRIGHT_VERSION" ] \
  || [ ! -e "$TOOLS/e2e/node_modules/code-server/lib/vscode/node_modules" ]; then
  step "installing code-server@$CODE_SERVER_VERSION and playwright-core@$PLAYWRIGHT_VERSION into $TOOLS/e2e (a few minutes)"
  rm -rf "$TOOLS/e2e"
  npm install --prefix "$TOOLS/e2e" --no-save --no-package-lock --no-audit --no-fund \
    "code-server@$CODE_SERVER_VERSION" "playwright-core@$PLAYWRIGHT_VERSION"
fi
CODE_SERVER="$TOOLS/e2e/node_modules/.bin/code-server"
step "code-server $("$CODE_SERVER" --config /dev/null --version 2>/dev/null | tail -n 1)"

# -- the extension: build, check, package ---------------------------------------------------------------
cd "$CLIENT"
step "npm ci"
npm ci --no-audit --no-fund
step "type-check (tsc --noEmit)"
npm run --silent typecheck
step "lint (eslint)"
npm run --silent lint
step "unit tests (node --test)"
npm test
step "package (vsce)"
npm run --silent package
VSIX="$CLIENT/midline.vsix"
ls -l "$VSIX"

# -- the server side: Python with midline, a tiny model -------------------------------------------------
PYTHON="${MIDLINE_PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
"$PYTHON" -c 'import midline.server' || { echo "no midline in $PYTHON: set up the repository's .venv (see .ci/run) or set MIDLINE_PYTHON" >&2; exit 1; }
rm -rf "$WORK_ROOT/run"
mkdir -p "$WORK_ROOT/run" "$ARTIFACTS"
rm -f "$ARTIFACTS"/*.png "$ARTIFACTS"/*.log
MODEL="$WORK_ROOT/run/tiny-model"
step "making the tiny test model (tests/conftest.py's) in $MODEL"
"$PYTHON" - "$MODEL" <<'PY'
import sys
from pathlib import Path
from midline.training.tiny_model import make_tiny_model, stdlib_corpus
make_tiny_model(Path(sys.argv[1]), corpus_files=stdlib_corpus(limit=40), vocab_size=1024, hidden_size=64, layers=2, heads=4)
PY

# -- end to end ----------------------------------------------------------------------------------------
step "end to end: code-server + Playwright + Chromium"
status=0
CODE_SERVER="$CODE_SERVER" CHROMIUM="$CHROMIUM" PLAYWRIGHT="$TOOLS/e2e/node_modules/playwright-core" VSIX="$VSIX" \
  MIDLINE_PYTHON="$PYTHON" MIDLINE_MODEL="$MODEL" E2E_WORK="$WORK_ROOT/run" E2E_ARTIFACTS="$ARTIFACTS" \
  node --test --test-concurrency=1 --test-reporter=spec "$HERE/ghost-text.test.mjs" "$HERE/keys.test.mjs" "$HERE/notebook.test.mjs" || status=$?
ls -l "$ARTIFACTS" || true
if [ "$status" = 0 ] && [ "$UPDATE_DOCS" = 1 ]; then
  mkdir -p "$REPO/docs"
  cp "$ARTIFACTS/ghost-text.png" "$REPO/docs/vscode-ghost-text.png"
  cp "$ARTIFACTS/cycling.png" "$REPO/docs/vscode-cycling.png"
  step "copied the screenshots to docs/vscode-ghost-text.png and docs/vscode-cycling.png"
fi
step "done (exit $status)"
exit "$status"
