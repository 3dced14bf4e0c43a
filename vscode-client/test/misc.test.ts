import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { escapeHtml, explanationHtml } from "../src/explanation";
import { lineLeveller } from "../src/serverLog";

describe("explanation page", () => {
  test("rendered Markdown goes in as is, under a policy without scripts", () => {
    const html = explanationHtml("# Hi", "<h1>Hi</h1>", "vscode-resource:");
    assert.ok(html.includes("<h1>Hi</h1>"));
    assert.match(html, /default-src 'none'/);
    assert.doesNotMatch(html, /script-src/);
  });

  test("without a renderer the Markdown is escaped", () => {
    const html = explanationHtml("<script>alert(1)</script> `x`", undefined, "vscode-resource:");
    assert.ok(html.includes("<pre>&lt;script&gt;alert(1)&lt;/script&gt; `x`</pre>"));
    assert.equal(escapeHtml(`a&"'`), "a&amp;&quot;&#39;");
  });
});

describe("server log levels", () => {
  test("Python logging lines keep their level, less the time; a traceback is an error", () => {
    const classify = lineLeveller();
    assert.deepEqual(classify("2026-11-23 08:00:00,123 midline.server.server INFO model loaded"), { level: "info", text: "[midline.server.server] model loaded" });
    assert.deepEqual(classify("2026-11-23 08:00:00,124 pygls.protocol WARNING slow"), { level: "warn", text: "[pygls.protocol] slow" });
    assert.deepEqual(classify("  continuation of the warning"), { level: "warn", text: "  continuation of the warning" });
    assert.equal(classify("Traceback (most recent call last):").level, "error");
    assert.equal(classify('  File "x.py", line 1').level, "error");
    assert.equal(classify("2026-11-23 08:00:01,000 midline.server.server DEBUG detail").level, "debug");
    assert.equal(classify("2026-11-23 08:00:01,000 midline.server.server ERROR bad").level, "error");
  });
});
