import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { escapeMarkdown, formatLatency, formatStatus, modelName, type ServerStatus } from "../src/status";

const READY: ServerStatus = {
  ready: true,
  model: "/home/me/models/qwen2.5-coder-1.5b/",
  device: "cuda:0",
  fimFormat: "qwen",
  generating: false,
  requests: 12,
  modelCalls: 7,
  cacheHits: 3,
  typedThrough: 2,
  cancelled: 1,
  timeouts: 0,
  lastLatencyMs: 183.6,
};

describe("status bar", () => {
  test("model name is the directory's last component", () => {
    assert.equal(modelName("/home/me/models/qwen2.5-coder-1.5b/"), "qwen2.5-coder-1.5b");
    assert.equal(modelName("C:\\models\\starcoder2"), "starcoder2");
    assert.equal(modelName("/work/main/model/default"), "default");
    assert.equal(modelName(undefined), "default model");
  });

  test("latency", () => {
    assert.equal(formatLatency(undefined), "–");
    assert.equal(formatLatency(0), "–");
    assert.equal(formatLatency(183.6), "184 ms");
    assert.equal(formatLatency(1234), "1.2 s");
  });

  test("ready: model, device and last latency", () => {
    const view = formatStatus("running", READY, undefined);
    assert.equal(view.text, "$(sparkle) midline: qwen2.5-coder-1.5b · cuda:0 · 184 ms");
    assert.equal(view.severity, "none");
    assert.match(view.tooltip, /completions on/);
    assert.match(view.tooltip, /\| device \| cuda:0 \|/);
    assert.match(view.tooltip, /requests \| 12 \(model 7, cache 3, typed through 2\)/);
    assert.match(view.tooltip, /Click for the menu/);
  });

  test("paused, snoozed (with the time left) or off for the language", () => {
    const paused = formatStatus("running", READY, { kind: "paused" });
    assert.equal(paused.text, "$(debug-pause) midline: paused");
    assert.equal(paused.severity, "warning");
    assert.match(paused.tooltip, /completions \*\*paused\*\*/);
    assert.match(paused.tooltip, /\| device \| cuda:0 \|/);
    const now = 1_000_000;
    const snoozed = formatStatus("running", READY, { kind: "snoozed", until: now + 14 * 60_000 + 5_000 }, undefined, now);
    assert.equal(snoozed.text, "$(clock) midline: snoozed 15 min");
    assert.equal(snoozed.severity, "warning");
    assert.match(snoozed.tooltip, /\*\*snoozed\*\*, 15 min left/);
    const off = formatStatus("running", READY, { kind: "language", language: "markdown" });
    assert.equal(off.text, "$(circle-slash) midline: off for markdown");
    assert.equal(off.severity, "none", "a language turned off is a setting, not a warning");
    assert.match(off.tooltip, /\*\*off\*\* for markdown/);
    assert.equal(formatStatus("running", { ready: false, model: "/m/tiny" }, { kind: "paused" }).text, "$(debug-pause) midline: paused");
  });

  test("generating spins", () => {
    assert.ok(formatStatus("running", { ...READY, generating: true }, undefined).text.startsWith("$(sync~spin) "));
  });

  test("starting, loading, stopped, failed", () => {
    assert.equal(formatStatus("starting", undefined, undefined).text, "$(loading~spin) midline");
    assert.equal(formatStatus("running", undefined, undefined).text, "$(loading~spin) midline");
    assert.equal(formatStatus("running", { ready: false, model: "/m/tiny" }, undefined).text, "$(loading~spin) midline: tiny");
    assert.equal(formatStatus("stopped", READY, undefined).severity, "warning");
    const failed = formatStatus("failed", undefined, undefined, "the `midline` command is not on PATH");
    assert.equal(failed.text, "$(error) midline");
    assert.equal(failed.severity, "error");
    assert.match(failed.tooltip, /the \\`midline\\` command is not on PATH/);
  });

  test("a model that failed to load is an error, with the server's reason", () => {
    const view = formatStatus("running", { ready: false, state: "failed", model: "/m/tiny", error: "cannot load the model at /m/tiny" }, undefined);
    assert.equal(view.text, "$(error) midline: tiny");
    assert.equal(view.severity, "error");
    assert.match(view.tooltip, /cannot load the model at \/m\/tiny/);
    assert.equal(formatStatus("running", { ready: false, state: "loading", model: "/m/tiny" }, undefined).text, "$(loading~spin) midline: tiny");
  });

  test("markdown in paths is escaped", () => {
    assert.equal(escapeMarkdown("/a_b/*c*"), "/a\\_b/\\*c\\*");
  });
});
