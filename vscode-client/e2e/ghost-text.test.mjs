// End to end in a real VS Code: code-server with midline's .vsix installed, driven by Playwright in
// headless Chromium (harness.mjs). It opens a Python file, types at the end of a comment, waits for midline's
// ghost text, accepts it with Tab, saves, and checks the file on disk is the text before + what was typed +
// the ghost text that was shown. Then it pauses completions from the status bar menu (no ghost text), resumes,
// runs the Explain code action from the command palette, checks midline.showExplanation renders Markdown,
// and points midline.pythonPath at a Python without midline (an error that says how to fix it).
// Screenshots go to the artifacts folder. Run by e2e/run.sh.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { env, eventually, goToLineEnd, openFromExplorer, pickFromStatusMenu, session, settledGhost } from "./harness.mjs";

// The same document and settings as tests/e2e/test_server.py and tests/e2e/test_neovim.py: the model has random
// weights, so the cursor sits at the end of a comment, where any one line is valid Python.
const CODE = `import math


def area(radius):
    """Area of a circle."""
    # multiply the square of the radius
    return math.pi * radius ** 2


print(area(2.0))
`;
const COMMENT_LINE = 5; // 0-based
const TYPED = " by "; // typed at the end of the comment: the line becomes test_server.py's comment line

const TIMEOUT_MS = 120_000;

test("VS Code (code-server): ghost text accepted with Tab, pause, Explain, showExplanation, missing server", { timeout: TIMEOUT_MS + 60_000 }, async (t) => {
  const keybinding = { key: "ctrl+alt+shift+e", command: "midline.showExplanation", args: "# Rendered by midline\n\nSome **Markdown**." };
  const s = await session(t, { name: "ghost-text", timeoutMs: TIMEOUT_MS, files: { "circle.py": CODE }, keybindings: [keybinding] });
  const { page, log, artifacts, work } = s;
  const file = path.join(s.workspace, "circle.py");
  const item = s.statusItem;
  await s.run(async () => {
    // Open circle.py from the explorer, as a user would; its language (python) activates midline.
    const editor = await openFromExplorer(s, "circle.py", "multiply the square");

    // The status bar item says model · device · latency once the server has loaded its model.
    const status = page.locator(".statusbar-item", { hasText: /midline: .* · cpu · / });
    await status.waitFor({ timeout: s.left() });
    log(`status bar: ${(await status.innerText()).trim()}`);

    // End of the comment line (Ctrl+G goes to its start), then type.
    await editor.locator(".view-lines").click();
    await goToLineEnd(page, COMMENT_LINE + 1);
    await page.keyboard.type(TYPED, { delay: 80 });
    log(`typed ${JSON.stringify(TYPED)}`);

    const ghost = editor.locator(".ghost-text-decoration").first();
    const shown = await settledGhost(page, editor, s.left());
    log(`ghost text: ${JSON.stringify(shown)}`);
    assert.ok(shown.trim().length > 0, "the ghost text is empty");
    assert.equal(await editor.locator(".ghost-text").count(), 0, "ghost text spans more than one line (maxLines is 1)");
    await page.screenshot({ path: path.join(artifacts, "ghost-text.png") });
    log(`screenshot ${path.join(artifacts, "ghost-text.png")} (with the status bar: ${(await status.innerText()).trim()})`);

    await page.keyboard.press("Tab");
    await ghost.waitFor({ state: "detached", timeout: 10_000 });
    await page.keyboard.press("Control+S");
    const lines = CODE.split("\n");
    lines[COMMENT_LINE] += TYPED + shown;
    const expected = lines.join("\n");
    const saved = await eventually(() => readFileSync(file, "utf8"), expected);
    log(`accepted with Tab and saved: line ${COMMENT_LINE + 1} is ${JSON.stringify(saved.split("\n")[COMMENT_LINE])}`);
    await page.screenshot({ path: path.join(artifacts, "accepted.png") });
    assert.equal(saved, expected, "the document is not the text before + what was typed + the ghost text");

    // Pause from the status bar item's menu: typing shows no ghost text; Resume from the same menu.
    await pickFromStatusMenu(s, "Pause completions");
    await item.locator(".codicon-debug-pause").waitFor({ timeout: 10_000 });
    log(`paused: ${(await item.innerText()).trim()}`);
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("# the area of a circle of radius 3 is ", { delay: 20 });
    await page.waitForTimeout(3000);
    assert.equal(await editor.locator(".ghost-text-decoration").count(), 0, "ghost text while paused");
    await pickFromStatusMenu(s, "Resume completions");
    await item.locator(".codicon-sparkle").waitFor({ timeout: 10_000 });
    log("no ghost text while paused; resumed");

    // A code action from the command palette: Explain, shown beside the editor by midline.showExplanation.
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+G");
    await page.keyboard.type("4");
    await page.keyboard.press("Enter");
    await page.keyboard.press("F1");
    await page.keyboard.type("midline: Explain This Code");
    await page.locator(".quick-input-list .monaco-list-row", { hasText: "Explain This Code" }).first().waitFor({ timeout: 10_000 });
    await page.keyboard.press("Enter");
    const explanationTab = page.locator(".tab", { hasText: "midline: explanation" });
    const infoToast = page.locator(".notification-toast", { hasText: "midline:" });
    // The random-weight model's explanation is noise, and the server may say it has none: either is an answer.
    await explanationTab.or(infoToast).first().waitFor({ timeout: 60_000 });
    log(`explain: ${(await explanationTab.count()) > 0 ? "explanation tab open" : `message: ${(await infoToast.first().innerText()).replace(/\s+/g, " ")}`}`);
    await page.screenshot({ path: path.join(artifacts, "explain.png") });

    // midline.showExplanation renders Markdown (from a keybinding with a fixed argument: no model involved).
    await page.keyboard.press("Control+Alt+Shift+E");
    const rendered = async () => {
      for (const frame of page.frames()) {
        const heading = await frame.locator("body.midline-explanation h1").textContent({ timeout: 200 }).catch(() => null);
        if (heading !== null) {
          return { heading, strong: await frame.locator("body.midline-explanation strong").textContent() };
        }
      }
      return null;
    };
    let found = null;
    for (const until = Date.now() + 20_000; found === null && Date.now() < until; ) {
      found = await rendered();
    }
    assert.deepEqual(found, { heading: "Rendered by midline", strong: "Markdown" }, "midline.showExplanation did not render the Markdown");
    log("midline.showExplanation rendered Markdown in a webview");

    // A Python without midline: the server is restarted, and the error says how to fix it.
    const noMidline = path.join(work, "python-without-midline");
    writeFileSync(noMidline, `#!/bin/sh\nexec ${JSON.stringify(env("MIDLINE_PYTHON"))} -I -S "$@"\n`, { mode: 0o755 });
    await page.keyboard.press("Control+Comma"); // the Settings editor, its search box focused
    const settings = page.locator(".settings-editor");
    await settings.waitFor({ timeout: 20_000 });
    // midline.pythonPath is machine-scoped: in code-server (a remote window) it is set on the Remote tab.
    await settings.getByText(/^Remote \[/).click();
    await settings.locator(".settings-header .suggest-input-container").click();
    await page.keyboard.type("midline.pythonPath");
    const input = settings.locator(".setting-item", { hasText: "Python Path" }).locator("input").first();
    await input.waitFor({ timeout: 20_000 });
    await input.fill(noMidline);
    await input.press("Enter");
    log(`set midline.pythonPath to ${noMidline} in the Settings editor`);
    const toast = page.locator(".notification-toast", { hasText: "has no midline server" });
    await toast.waitFor({ timeout: 30_000 });
    const message = (await toast.innerText()).replace(/\s+/g, " ");
    log(`error: ${message}`);
    assert.match(message, /-m pip install -e \/path\/to\/midline/);
    await item.locator(".codicon-error").waitFor({ timeout: 10_000 });
    await page.screenshot({ path: path.join(artifacts, "no-server.png") });
  });
});
