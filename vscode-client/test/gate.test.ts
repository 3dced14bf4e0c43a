import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { describeSuspension, formatRemaining, languageSetting, menuEntries, suspension, withLanguage, type GateState } from "../src/gate";

const NOW = 1_700_000_000_000;
const ON: GateState = { paused: false, snoozedUntil: 0, enable: { "*": true, markdown: false, plaintext: false } };

describe("gate: pause, snooze, per language", () => {
  test("requests go through unless paused, snoozed or the language is off", () => {
    assert.equal(suspension(ON, "python", NOW), undefined);
    assert.deepEqual(suspension({ ...ON, paused: true }, "python", NOW), { kind: "paused" });
    assert.deepEqual(suspension({ ...ON, snoozedUntil: NOW + 1 }, "python", NOW), { kind: "snoozed", until: NOW + 1 });
    assert.deepEqual(suspension(ON, "markdown", NOW), { kind: "language", language: "markdown" });
    assert.equal(suspension(ON, undefined, NOW), undefined);
  });

  test("a snooze ends by itself", () => {
    assert.equal(suspension({ ...ON, snoozedUntil: NOW }, "python", NOW), undefined);
    assert.equal(suspension({ ...ON, snoozedUntil: NOW - 60_000 }, "python", NOW), undefined);
  });

  test("pause outranks snooze, which outranks the language", () => {
    assert.equal(suspension({ paused: true, snoozedUntil: NOW + 1, enable: ON.enable }, "markdown", NOW)?.kind, "paused");
    assert.equal(suspension({ ...ON, snoozedUntil: NOW + 1 }, "markdown", NOW)?.kind, "snoozed");
  });

  test("only a language's own false stops it in the client: the server decides the rest", () => {
    assert.equal(languageSetting({ "*": false }, "python"), undefined);
    assert.equal(suspension({ ...ON, enable: { "*": false } }, "python", NOW), undefined);
    assert.equal(languageSetting({ python: true }, "python"), true);
    assert.equal(languageSetting({ python: "false" }, "python"), undefined);
    assert.equal(languageSetting(undefined, "python"), undefined);
    assert.equal(languageSetting(["python"], "python"), undefined);
  });

  test("turning a language on or off keeps the other entries", () => {
    assert.deepEqual(withLanguage(ON.enable, "python", false), { "*": true, markdown: false, plaintext: false, python: false });
    assert.deepEqual(withLanguage({ "*": true, markdown: false }, "markdown", true), { "*": true, markdown: true });
    assert.deepEqual(withLanguage(undefined, "go", false), { go: false });
    assert.deepEqual(withLanguage({ go: "no", rust: true }, "go", true), { rust: true, go: true });
  });

  test("time left", () => {
    assert.equal(formatRemaining(1), "1 min");
    assert.equal(formatRemaining(5 * 60_000), "5 min");
    assert.equal(formatRemaining(14 * 60_000 + 1), "15 min");
    assert.equal(formatRemaining(60 * 60_000), "1 h");
    assert.equal(formatRemaining(65 * 60_000), "1 h 5 min");
    assert.equal(describeSuspension({ kind: "snoozed", until: NOW + 4 * 60_000 }, NOW), "snoozed 4 min");
    assert.equal(describeSuspension({ kind: "language", language: "go" }, NOW), "off for go");
  });
});

describe("status bar menu", () => {
  const labels = (state: GateState, language?: string) => menuEntries(state, language, NOW).map((entry) => entry.label.replace(/^\$\([^)]*\) /, ""));

  test("running: pause, the snoozes, the language's switch, status, log, restart", () => {
    assert.deepEqual(labels(ON, "python"), [
      "Pause completions",
      "Snooze for 5 min",
      "Snooze for 15 min",
      "Snooze for 1 h",
      "Disable for python",
      "Show status",
      "Show server log",
      "Restart server",
    ]);
    const snooze = menuEntries(ON, "python", NOW).find((entry) => entry.label.endsWith("Snooze for 15 min"));
    assert.deepEqual(snooze?.action, { kind: "snooze", minutes: 15 });
  });

  test("paused, snoozed, language off; no editor: no language switch", () => {
    assert.equal(labels({ ...ON, paused: true })[0], "Resume completions");
    const snoozed = menuEntries({ ...ON, snoozedUntil: NOW + 10 * 60_000 }, undefined, NOW);
    assert.equal(snoozed[1].label, "$(bell) Resume now");
    assert.equal(snoozed[1].description, "snoozed, 10 min left");
    assert.deepEqual(
      menuEntries(ON, "markdown", NOW).find((entry) => entry.action.kind === "language")?.action,
      { kind: "language", language: "markdown", on: true },
    );
    assert.ok(!labels(ON).some((label) => /able for/.test(label)));
  });
});
