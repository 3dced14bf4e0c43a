import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";

import { ACTIONS, pickAction } from "../src/codeActions";

const spec = (name: string) => ACTIONS.find((action) => action.name === name)!;

describe("code actions", () => {
  const actions = [
    { title: "Organize imports", kind: "source.organizeImports" },
    { title: "Fix: add missing import", kind: { value: "quickfix" } },
    { title: "midline: Explain `area`", kind: "refactor.midline.explain" },
    { title: "midline: Fix `area`", kind: "quickfix.midline.fix" },
    { title: "midline: Generate tests for `area`", kind: "refactor.midline.tests" },
    { title: "midline: Write the code this comment describes", kind: { value: "refactor.midline.fromComment" } },
  ];

  test("each command finds midline's action", () => {
    assert.equal(pickAction(actions, spec("explain")), 2);
    assert.equal(pickAction(actions, spec("fix")), 3);
    assert.equal(pickAction(actions, spec("generateTests")), 4);
    assert.equal(pickAction(actions, spec("codeFromComment")), 5);
  });

  test("the exact kind wins over a title match", () => {
    const fromOthers = [{ title: "midline: Explain everything", kind: "refactor" }, { title: "Explanation", kind: "refactor.midline.explain" }];
    assert.equal(pickAction(fromOthers, spec("explain")), 1);
  });

  test("matched by title when the kind says nothing", () => {
    assert.equal(pickAction([{ title: "Explain" }], spec("explain")), 0);
    assert.equal(pickAction([{ title: "Generate unit tests", kind: "refactor" }], spec("generateTests")), 0);
  });

  test("another extension's match only when midline has none; none at all is -1", () => {
    assert.equal(pickAction(actions.slice(0, 2), spec("fix")), 1);
    assert.equal(pickAction(actions.slice(0, 1), spec("explain")), -1);
  });

  test("every command is declared in package.json", () => {
    const manifest = JSON.parse(readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
    const declared = manifest.contributes.commands.map((command: { command: string }) => command.command);
    for (const action of ACTIONS) {
      assert.ok(declared.includes(action.command), action.command);
    }
  });
});
