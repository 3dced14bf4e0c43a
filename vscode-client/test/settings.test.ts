import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";

import { CLIENT_KEYS, affectsServer, needsRestart, serverSettingSpecs, serverSettings } from "../src/settings";

interface Property {
  type?: string | string[];
  default?: unknown;
}
const manifest = JSON.parse(readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
const properties: Record<string, Property> = manifest.contributes.configuration.properties;
const specs = serverSettingSpecs(properties);

/** A reader over package.json's defaults, with `overrides` laid on top (as VS Code would). */
function defaultsReader(overrides: Record<string, unknown> = {}): (key: string) => unknown {
  return (key) => (key in overrides ? overrides[key] : properties[`midline.${key}`]?.default);
}

describe("serverSettings", () => {
  test("every package.json setting is the client's own or the server's", () => {
    const keys = specs.map((spec) => spec.key);
    for (const key of CLIENT_KEYS) {
      assert.ok(`midline.${key}` in properties, key);
      assert.ok(!keys.includes(key), key);
    }
    assert.equal(keys.length + CLIENT_KEYS.length, Object.keys(properties).length);
    assert.ok(keys.includes("maxNewTokens") && keys.includes("context.budget"));
    assert.deepEqual(
      specs.filter((spec) => spec.nullable).map((spec) => spec.key).slice(0, 3),
      ["model", "adapter", "fimFormat"],
    );
  });

  test("defaults map onto the server's tree, client settings left out", () => {
    const settings = serverSettings(specs, defaultsReader());
    assert.equal(settings.model, null);
    assert.equal(settings.maxNewTokens, 64);
    assert.deepEqual(settings.enable, { "*": true, plaintext: false, markdown: false, scminput: false });
    assert.deepEqual(settings.context, { budget: 1536, prefixShare: 0.75, snippetBudget: 512, maxSnippets: 6, crossFile: true, retrieval: false });
    for (const key of CLIENT_KEYS) {
      assert.ok(!(key.split(".")[0] in settings), key);
    }
  });

  test("user values pass through; an empty string in a nullable setting means null", () => {
    const settings = serverSettings(
      specs,
      defaultsReader({ model: "  ", fimFormat: "", maxNewTokens: 24, "context.budget": 256, device: "cpu", enable: { python: false } }),
    );
    assert.equal(settings.model, null);
    assert.equal(settings.fimFormat, null);
    assert.equal(settings.maxNewTokens, 24);
    assert.equal(settings.device, "cpu");
    assert.deepEqual(settings.enable, { python: false });
    assert.equal((settings.context as Record<string, unknown>).budget, 256);
    assert.equal(serverSettings(specs, defaultsReader({ model: "/models/qwen" })).model, "/models/qwen");
    // A non-nullable string keeps its empty value (the server says what is wrong with it).
    assert.equal(serverSettings([{ key: "device", nullable: false }], () => "").device, "");
  });

  test("settings without a value are left out", () => {
    assert.deepEqual(serverSettings(specs, () => undefined), {});
    assert.deepEqual(serverSettings(specs, (key) => (key === "context.crossFile" ? false : undefined)), { context: { crossFile: false } });
    assert.deepEqual(
      serverSettings([{ key: "a.b.c", nullable: false }, { key: "a.d", nullable: false }], (key) => key),
      { a: { b: { c: "a.b.c" }, d: "a.d" } },
    );
  });

  test("which changes restart the server and which reconfigure it", () => {
    const only = (changed: string) => (section: string) => changed === section || changed.startsWith(`${section}.`);
    assert.equal(needsRestart(only("midline.pythonPath")), true);
    assert.equal(needsRestart(only("midline.serverCommand")), true);
    assert.equal(needsRestart(only("midline.logLevel")), true);
    assert.equal(needsRestart(only("midline.maxNewTokens")), false);
    assert.equal(affectsServer(specs, only("midline.maxNewTokens")), true);
    assert.equal(affectsServer(specs, only("midline.context.budget")), true);
    assert.equal(affectsServer(specs, only("midline.pythonPath")), false);
    assert.equal(affectsServer(specs, only("midline.trace.server")), false);
    assert.equal(affectsServer(specs, only("editor.fontSize")), false);
  });

  // The server's own settings and defaults (server/config.py), when a Python with midline is at hand:
  // package.json must declare the same keys with the same defaults, or a setting would be missing from
  // VS Code, refused by the server, or silently change its behaviour.
  const python = process.env.MIDLINE_PYTHON ?? path.join(__dirname, "..", "..", "..", ".venv", "bin", "python");
  const skip = existsSync(python) ? false : `no Python with midline at ${python} (set MIDLINE_PYTHON)`;
  test("package.json declares the server's Config, with its defaults", { skip }, () => {
    const run = spawnSync(python, ["-c", "import json; from midline.server.config import Config; print(json.dumps(Config().to_json()))"], {
      encoding: "utf8",
    });
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(serverSettings(specs, defaultsReader()), JSON.parse(run.stdout));
  });
});
