import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";

// A cloned repository's `.vscode/settings.json` is workspace settings. VS Code ignores workspace and folder
// values of `machine` (and `application`) settings, but lets them override `machine-overridable` ones, so any
// setting that runs a program, loads a model, or says where code and keys are sent must be `machine`.
const manifest = JSON.parse(readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
const properties: Record<string, { scope?: string }> = manifest.contributes.configuration.properties;

/** Settings a workspace must not set: what runs, what model loads (and may run its own code), where code and keys go. */
const MACHINE_ONLY = [
  "midline.serverCommand", // a program to run
  "midline.pythonPath", // a program to run
  "midline.model", // a model directory to load
  "midline.trustRemoteCode", // runs a model directory's own Python code
  "midline.actions.model", // a model directory to load, also under trustRemoteCode
  "midline.backend.url", // where every prompt (the user's code) is sent
  "midline.backend.apiKey", // a secret
  "midline.backend.apiKeyEnv", // which environment variable is sent as a key (could name any secret)
  "midline.backend.tokenizer", // a local directory to load
];

/** Scopes whose values VS Code does not take from workspace or folder settings. */
const NOT_FROM_WORKSPACE = ["machine", "application"];

describe("setting scopes", () => {
  test("settings that run code, load a model or send code elsewhere can't be set by a workspace", () => {
    for (const name of MACHINE_ONLY) {
      assert.ok(name in properties, name);
      assert.equal(properties[name].scope, "machine", name);
    }
  });

  test("no setting is machine-overridable", () => {
    const overridable = Object.keys(properties).filter((name) => properties[name].scope === "machine-overridable");
    assert.deepEqual(overridable, []);
  });

  test("every setting named like a command, path, model, URL, key or trust is machine-only", () => {
    const risky = /command|path|model|url|key|tokenizer|trust/i;
    const harmless = new Set(["midline.backend.model"]); // only a name the serving engine is asked for
    for (const name of Object.keys(properties)) {
      if (risky.test(name.slice("midline.".length)) && !harmless.has(name)) {
        assert.ok(NOT_FROM_WORKSPACE.includes(properties[name].scope ?? "window"), `${name} is ${properties[name].scope ?? "window"}`);
      }
    }
  });
});
