// End to end in code-server (harness.mjs): midline's keys and its status bar menu.
//
// - Alt+\ asks for suggestions explicitly: the server answers several (`candidates`), and Alt+] shows the next.
// - Ctrl+Alt+Right accepts the next line of a multi-line suggestion: only its first line lands.
// - Alt+] on a suggestion shown while typing asks for the others; Tab accepts one, and its item's command
//   (midline.accepted) reaches the server: the opt-in outcome record has it as accepted, with its index.
// - The status bar menu snoozes completions (a countdown, no ghost text while snoozed) and turns them off and on
//   for the editor's language (`midline.enable` in the user's settings, no ghost text while off); Alt+Shift+\
//   opens the snooze list.
//
// The model has random weights: which suggestion is multi-line is not known in advance, so the test cycles
// through the explicit answer's suggestions until one is.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { env, eventually, goToLineEnd, openFromExplorer, pickFromStatusMenu, session, settledGhost } from "./harness.mjs";

// Line 7 is a blank line inside a docstring, where any text, on any number of lines, is valid Python.
const CODE = `import math


def area(radius):
    """Area of a circle.

    
    """
    # multiply the square of the radius
    return math.pi * radius ** 2


print(area(2.0))
`;
const DOCSTRING_LINE = 6; // 0-based
const COMMENT_LINE = 8;
const TIMEOUT_MS = 150_000;

/** Waits until the ghost text is no longer `before`, and returns it settled. */
async function nextGhost(page, editor, before) {
  for (const until = Date.now() + 15_000; Date.now() < until; ) {
    const now = await settledGhost(page, editor, 15_000);
    if (now !== before) {
      return now;
    }
    await page.waitForTimeout(200);
  }
  return before;
}

test("VS Code (code-server): cycling, accept line, the accept recorded, snooze and per-language from the status bar", { timeout: TIMEOUT_MS + 60_000 }, async (t) => {
  const outcomes = path.join(env("E2E_WORK"), "keys", "outcomes.jsonl");
  const settings = {
    "midline.maxLines": 6,
    "midline.outcomes.record": true,
    "midline.outcomes.file": outcomes,
    "editor.inlineSuggest.showToolbar": "always", // "‹ 2/3 ›" above the ghost text, in the screenshot
  };
  const s = await session(t, { name: "keys", timeoutMs: TIMEOUT_MS, files: { "circle.py": CODE }, settings });
  const userSettings = path.join(s.work, "user-data", "User", "settings.json");
  const { page, log, artifacts } = s;
  const file = path.join(s.workspace, "circle.py");
  const item = s.statusItem;
  await s.run(async () => {
    const editor = await openFromExplorer(s, "circle.py", "multiply the square");
    const status = page.locator(".statusbar-item", { hasText: /midline: .* · cpu · / });
    await status.waitFor({ timeout: s.left() });
    log(`status bar: ${(await status.innerText()).trim()}`);

    // Alt+\ in the docstring's blank line: an explicit request, answered with several suggestions.
    await editor.locator(".view-lines").click();
    await goToLineEnd(page, DOCSTRING_LINE + 1);
    await page.keyboard.press("Alt+Backslash");
    const first = await settledGhost(page, editor, s.left());
    log(`Alt+\\: ${JSON.stringify(first)}`);
    await page.keyboard.press("Alt+BracketRight");
    const second = await nextGhost(page, editor, first);
    // The toolbar above the ghost text counts them: "2/3".
    const counter = async () => (await page.locator(".inlineSuggestionsHints").first().innerText({ timeout: 2000 }).catch(() => "")).match(/\b(\d+)\/(\d+)\b/)?.[0] ?? "";
    const shownOf = await eventually(counter, (text) => /^2\/\d+$/.test(text), 5000);
    log(`Alt+]: ${JSON.stringify(second)}, the toolbar says ${JSON.stringify(shownOf)}`);
    assert.notEqual(second, first, "Alt+] showed no other suggestion");
    assert.match(shownOf, /^2\/[2-9]$/, "the toolbar does not say the second of several is shown");
    await page.screenshot({ path: path.join(artifacts, "cycling.png") });
    await page.keyboard.press("Alt+BracketLeft");
    assert.equal(await nextGhost(page, editor, second), first, "Alt+[ did not go back to the first suggestion");
    log("Alt+[: back to the first");

    // Cycle to a multi-line suggestion, then Ctrl+Alt+Right: its first line (and the line break) lands.
    let shown = first;
    const seen = [first];
    while (!shown.includes("\n") && seen.length <= 4) {
      await page.keyboard.press("Alt+BracketRight");
      shown = await nextGhost(page, editor, shown);
      seen.push(shown);
    }
    log(`suggestions seen: ${JSON.stringify(seen)}`);
    assert.ok(shown.includes("\n"), "no multi-line suggestion among the explicit answer's");
    await page.screenshot({ path: path.join(artifacts, "multi-line.png") });
    const firstLine = shown.split("\n")[0];
    await page.keyboard.press("Control+Alt+ArrowRight");
    await page.waitForTimeout(500);
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+S");
    const lines = CODE.split("\n");
    lines.splice(DOCSTRING_LINE, 1, lines[DOCSTRING_LINE] + firstLine, "");
    const expected = lines.join("\n");
    const saved = await eventually(() => readFileSync(file, "utf8"), expected);
    log(`accept line: line ${DOCSTRING_LINE + 1} is ${JSON.stringify(saved.split("\n")[DOCSTRING_LINE])}, line ${DOCSTRING_LINE + 2} ${JSON.stringify(saved.split("\n")[DOCSTRING_LINE + 1])}`);
    assert.equal(saved, expected, "accept line did not insert exactly the suggestion's first line and its line break");

    // Typing shows one suggestion; Alt+] asks for the others and shows the next; Tab accepts it, and the
    // outcome record (opted in) says which one was taken.
    const comment = COMMENT_LINE + 2; // 1-based, below the line accept line added
    await goToLineEnd(page, comment);
    await page.keyboard.type(" by ", { delay: 80 });
    const typed = await settledGhost(page, editor, s.left());
    await page.keyboard.press("Alt+BracketRight");
    const other = await nextGhost(page, editor, typed);
    log(`typed " by ": ${JSON.stringify(typed)}; Alt+]: ${JSON.stringify(other)}`);
    assert.notEqual(other, typed, "Alt+] showed no other suggestion after typing");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Control+S");
    const accepted = lines.slice();
    accepted[comment - 1] += " by " + other;
    assert.equal(await eventually(() => readFileSync(file, "utf8"), accepted.join("\n")), accepted.join("\n"), "Tab did not accept the shown suggestion");
    const acceptedRecord = () =>
      existsSync(outcomes) ? (readFileSync(outcomes, "utf8").trim().split("\n").map((line) => JSON.parse(line)).find((entry) => entry.outcome === "accepted") ?? null) : null;
    const record = await eventually(acceptedRecord, (found) => found !== null);
    log(`outcome record: ${JSON.stringify(record && { outcome: record.outcome, accepted: record.accepted, suggestions: record.suggestions })}`);
    assert.ok(record, `no accepted outcome in ${outcomes}`);
    assert.equal(record.suggestions[record.accepted], other, "the record's accepted suggestion is not the one accepted");
    assert.ok(record.accepted > 0, "the accepted suggestion is not the first: its index is recorded");

    // Snooze for 5 minutes from the status bar menu: a countdown, and typing shows nothing.
    await pickFromStatusMenu(s, "Snooze for 5 min");
    await item.filter({ hasText: "snoozed 5 min" }).waitFor({ timeout: 10_000 });
    log(`snoozed: ${(await item.innerText()).trim()}`);
    await page.screenshot({ path: path.join(artifacts, "snoozed.png") });
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("# the area of a circle of radius 3 is ", { delay: 20 });
    await page.waitForTimeout(3000);
    assert.equal(await editor.locator(".ghost-text-decoration").count(), 0, "ghost text while snoozed");
    await pickFromStatusMenu(s, "Resume now");
    await item.locator(".codicon-sparkle").waitFor({ timeout: 10_000 });
    log("no ghost text while snoozed; resumed");

    // Alt+Shift+\ opens the snooze list.
    await page.keyboard.press("Alt+Shift+Backslash");
    await page.locator(".quick-input-list .monaco-list-row", { hasText: "Snooze for 15 min" }).waitFor({ timeout: 10_000 });
    await page.keyboard.press("Escape");
    log("Alt+Shift+\\ opened the snooze list");

    // Off for python from the menu: the user's midline.enable says so, and typing shows nothing; then on again.
    await pickFromStatusMenu(s, "Disable for python");
    await item.filter({ hasText: "off for python" }).waitFor({ timeout: 10_000 });
    const enable = () => JSON.stringify(JSON.parse(readFileSync(userSettings, "utf8"))["midline.enable"]?.python);
    assert.equal(await eventually(enable, "false"), "false", "midline.enable.python is not false in the user's settings");
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("x", { delay: 20 });
    await page.waitForTimeout(3000);
    assert.equal(await editor.locator(".ghost-text-decoration").count(), 0, "ghost text while off for python");
    await pickFromStatusMenu(s, "Enable for python");
    await item.locator(".codicon-sparkle").waitFor({ timeout: 10_000 });
    assert.equal(await eventually(enable, "true"), "true", "midline.enable.python is not true again");
    log("no ghost text while off for python; on again");
  });
});
