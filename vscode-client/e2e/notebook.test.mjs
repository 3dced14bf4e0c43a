// End to end in code-server (harness.mjs): a Jupyter notebook's Python cell gets midline's ghost text. The
// .ipynb opens in VS Code's built-in notebook editor (no Jupyter extension or kernel needed); the test types at
// the end of a comment in the second cell, accepts the ghost text with Tab, saves, and checks the cell's source
// in the file on disk, and that the notebook reached the server as a notebook (LSP 3.17 notebookDocument/didOpen,
// in the trace). A Python file is opened first: once midline's status bar says the model is loaded, the
// workbench knows the notebook type too (the .ipynb would open as JSON before its extensions are read).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { eventually, openFromExplorer, session, settledGhost } from "./harness.mjs";

const CELLS = [
  "import math",
  'def area(radius):\n    """Area of a circle."""\n    # multiply the square of the radius\n    return math.pi * radius ** 2',
];
const TYPED = " by ";

/** An nbformat 4 notebook of Python code cells. */
function notebook(cells) {
  return {
    cells: cells.map((source, i) => ({
      cell_type: "code",
      execution_count: null,
      id: `cell-${i}`,
      metadata: {},
      outputs: [],
      source: source.split(/(?<=\n)/),
    })),
    metadata: { kernelspec: { display_name: "Python 3", language: "python", name: "python3" }, language_info: { name: "python" } },
    nbformat: 4,
    nbformat_minor: 5,
  };
}

const TIMEOUT_MS = 120_000;

test("VS Code (code-server): ghost text in a notebook's Python cell", { timeout: TIMEOUT_MS + 60_000 }, async (t) => {
  const files = { "circle.ipynb": JSON.stringify(notebook(CELLS), null, 1), "start.py": "import math\n" };
  // The LSP trace (in midline's output channel) shows how the cells reach the server.
  const settings = { "workbench.editorAssociations": { "*.ipynb": "jupyter-notebook" }, "midline.trace.server": "messages" };
  const s = await session(t, { name: "notebook", timeoutMs: TIMEOUT_MS, files, settings });
  const { page, log, artifacts } = s;
  const file = path.join(s.workspace, "circle.ipynb");
  await s.run(async () => {
    await openFromExplorer(s, "start.py", "import math");
    await s.statusItem.filter({ hasText: /midline: .* · cpu · / }).waitFor({ timeout: s.left() });
    // The client writes the trace at the channel's Trace level: Developer: Set Log Level..., midline, Trace.
    const pick = async (text) => {
      const row = page.locator(".quick-input-list .monaco-list-row", { hasText: text }).first();
      await row.waitFor({ timeout: 10_000 });
      await row.click();
    };
    await page.keyboard.press("F1");
    await page.keyboard.type("Developer: Set Log Level");
    await pick("Set Log Level");
    await page.keyboard.type("midline");
    await pick("midline");
    await pick("Trace");
    log("midline's output channel at the Trace level");
    await page.getByRole("treeitem", { name: "circle.ipynb" }).click({ timeout: s.left() });
    const line = page.locator(".notebook-editor .cell-editor-container .view-line", { hasText: "multiply the square" });
    await line.waitFor({ timeout: s.left() });
    log("circle.ipynb open in the notebook editor");

    // The end of the comment line in the second cell, then type.
    await line.click();
    await page.keyboard.press("End");
    await page.keyboard.type(TYPED, { delay: 80 });
    const editor = page.locator(".notebook-editor .cell-editor-container .monaco-editor", { has: page.locator(".view-line", { hasText: "multiply the square" }) });
    const shown = await settledGhost(page, editor, s.left());
    log(`ghost text in the cell: ${JSON.stringify(shown)}`);
    assert.ok(shown.trim().length > 0 && !shown.includes("\n"), "no one-line ghost text in the cell");
    await page.screenshot({ path: path.join(artifacts, "notebook.png") });
    // The server declares notebookDocumentSync: the client sends it the notebook, not each cell on its own.
    const synced = await eventually(() => s.midlineLog().includes("notebookDocument/didOpen"), true);
    assert.ok(synced, "no notebookDocument/didOpen in the LSP trace");
    log("the notebook reached the server as notebookDocument/didOpen");

    await page.keyboard.press("Tab");
    await editor.locator(".ghost-text-decoration").first().waitFor({ state: "detached", timeout: 10_000 });
    await page.keyboard.press("Control+S");
    const cells = CELLS.slice();
    cells[1] = cells[1].replace("of the radius", `of the radius${TYPED}${shown}`);
    const source = () => {
      try {
        return JSON.parse(readFileSync(file, "utf8")).cells.map((cell) => [].concat(cell.source).join(""));
      } catch {
        return null; // being written
      }
    };
    const saved = await eventually(() => JSON.stringify(source()), JSON.stringify(cells));
    log(`accepted with Tab and saved: ${saved}`);
    assert.equal(saved, JSON.stringify(cells), "the cell is not the text before + what was typed + the ghost text");
  });
});
