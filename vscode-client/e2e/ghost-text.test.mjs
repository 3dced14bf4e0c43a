// End to end in a real VS Code: code-server with midline's .vsix installed, driven by Playwright in
// headless Chromium. It opens a Python file, types at the end of a comment, waits for midline's ghost
// text, accepts it with Tab, saves, and checks the file on disk is the text before + what was typed +
// the ghost text that was shown. Then it pauses completions from the status bar (no ghost text), resumes,
// runs the Explain code action from the command palette, checks midline.showExplanation renders Markdown,
// and points midline.pythonPath at a Python without midline (an error that says how to fix it).
// Screenshots go to the artifacts folder.
//
// Run by e2e/run.sh, which installs the parts and sets the environment:
//   CODE_SERVER  the code-server launcher       CHROMIUM  the browser (Debian's chromium)
//   PLAYWRIGHT   the playwright-core folder     VSIX      the packaged extension
//   MIDLINE_PYTHON  a Python with midline       MIDLINE_MODEL  a model directory (the tiny test model)
//   E2E_WORK     a fresh folder for this run    E2E_ARTIFACTS  where screenshots and logs go
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { createRequire } from "node:module";
import * as path from "node:path";
import { test } from "node:test";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `environment variable ${name} is not set (run e2e/run.sh)`);
  return value;
};

// The same document and settings as tests/test_server.py and tests/test_neovim.py: the model has random
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
const SETTINGS = {
  "midline.debounceMs": 0,
  "midline.maxNewTokens": 24,
  "midline.timeoutMs": 20000,
  "midline.maxLines": 1, // one line of ghost text, so what is shown is all there is to accept
  "midline.device": "cpu",
  "midline.logLevel": "INFO",
  // A clean, quiet workbench: no welcome page, trust prompt, recommendations or minimap in the screenshot.
  "workbench.startupEditor": "none",
  "workbench.tips.enabled": false,
  "security.workspace.trust.enabled": false,
  "extensions.ignoreRecommendations": true,
  "telemetry.telemetryLevel": "off",
  "update.mode": "none",
  "editor.minimap.enabled": false,
  "chat.disableAIFeatures": true,
  "workbench.secondarySideBar.defaultVisibility": "hidden",
};

const TIMEOUT_MS = 120_000;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForHttp(url, deadline, isAlive) {
  while (Date.now() < deadline) {
    if (!isAlive()) {
      throw new Error("code-server exited before it answered");
    }
    try {
      const response = await fetch(url);
      if (response.ok) {
        return;
      }
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`no answer from ${url}`);
}

/** Every file under `dir` whose name matches `pattern`. */
function findFiles(dir, pattern, out = []) {
  if (!existsSync(dir)) {
    return out;
  }
  for (const name of readdirSync(dir)) {
    const file = path.join(dir, name);
    if (statSync(file).isDirectory()) {
      findFiles(file, pattern, out);
    } else if (pattern.test(name)) {
      out.push(file);
    }
  }
  return out;
}

/** Processes whose command line or working directory is in `folder` (this run's): what this run started. */
function processesIn(folder) {
  const pids = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) {
      continue;
    }
    try {
      const cwd = readlinkSync(`/proc/${name}/cwd`);
      if (readFileSync(`/proc/${name}/cmdline`, "utf8").includes(folder) || cwd === folder || cwd.startsWith(folder + path.sep)) {
        pids.push(Number(name));
      }
    } catch {
      // gone, or not ours to read
    }
  }
  return pids;
}

test("VS Code (code-server): ghost text accepted with Tab, pause, Explain, showExplanation, missing server", { timeout: TIMEOUT_MS + 60_000 }, async (t) => {
  const codeServer = env("CODE_SERVER");
  const work = env("E2E_WORK");
  const artifacts = env("E2E_ARTIFACTS");
  const { chromium } = createRequire(path.join(env("PLAYWRIGHT"), "package.json"))("playwright-core");
  const started = Date.now();
  const deadline = started + TIMEOUT_MS;
  const events = [];
  const log = (what) => {
    const line = `${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s  ${what}`;
    events.push(line);
    console.log(line);
  };

  // A fresh profile each run: typing before the extension has activated gives no ghost text, and old
  // state (a paused toggle, an open editor) would change what happens.
  const userData = path.join(work, "user-data");
  const extensions = path.join(work, "extensions");
  const workspace = path.join(work, "workspace");
  for (const dir of [userData, extensions, workspace, artifacts, path.join(userData, "User")]) {
    mkdirSync(dir, { recursive: true });
  }
  const file = path.join(workspace, "circle.py");
  writeFileSync(file, CODE);
  const keybinding = { key: "ctrl+alt+shift+e", command: "midline.showExplanation", args: "# Rendered by midline\n\nSome **Markdown**." };
  writeFileSync(path.join(userData, "User", "keybindings.json"), JSON.stringify([keybinding], null, 2));
  writeFileSync(
    path.join(userData, "User", "settings.json"),
    JSON.stringify({ ...SETTINGS, "midline.pythonPath": env("MIDLINE_PYTHON"), "midline.model": env("MIDLINE_MODEL") }, null, 2),
  );
  const isolated = {
    ...process.env,
    XDG_CONFIG_HOME: path.join(work, "xdg", "config"),
    XDG_DATA_HOME: path.join(work, "xdg", "data"),
    XDG_CACHE_HOME: path.join(work, "xdg", "cache"),
    XDG_STATE_HOME: path.join(work, "xdg", "state"),
  };
  const common = ["--auth", "none", "--config", "/dev/null", "--user-data-dir", userData, "--extensions-dir", extensions];

  const install = spawnSync(codeServer, [...common, "--install-extension", env("VSIX")], { env: isolated, encoding: "utf8", timeout: 120_000 });
  log(`install-extension: exit ${install.status}: ${(install.stdout + install.stderr).trim().split("\n").slice(-2).join(" | ")}`);
  assert.equal(install.status, 0, install.stdout + install.stderr);
  assert.ok(readdirSync(extensions).some((name) => name.startsWith("midline.midline-")), `midline is not in ${extensions}`);

  const port = await freePort();
  const serverLog = [];
  const server = spawn(
    codeServer,
    [...common, "--bind-addr", `127.0.0.1:${port}`, "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override", workspace],
    { env: isolated, detached: true, stdio: ["ignore", "pipe", "pipe"] },
  );
  let exited = false;
  server.on("exit", () => (exited = true));
  for (const stream of [server.stdout, server.stderr]) {
    stream.on("data", (data) => serverLog.push(String(data)));
  }
  let browser;
  let page;
  t.after(async () => {
    await browser?.close().catch(() => {});
    if (!exited) {
      try {
        process.kill(-server.pid, "SIGTERM");
      } catch {
        // already gone
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    for (const pid of processesIn(work)) {
      try {
        process.kill(pid, "SIGKILL"); // only what this run started: it runs in or names this run's folder
      } catch {
        // already gone
      }
    }
    writeFileSync(path.join(artifacts, "code-server.log"), serverLog.join(""));
    writeFileSync(path.join(artifacts, "events.log"), events.join("\n") + "\n");
  });

  try {
    await waitForHttp(`http://127.0.0.1:${port}/healthz`, deadline, () => !exited);
    log(`code-server listening on ${port}`);

    browser = await chromium.launch({ executablePath: env("CHROMIUM"), headless: true, env: isolated }); // its crash reports too
    page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`);
    await page.locator(".monaco-workbench").waitFor({ timeout: deadline - Date.now() });
    log("workbench loaded");

    // Open circle.py from the explorer, as a user would; its language (python) activates midline.
    await page.getByRole("treeitem", { name: "circle.py" }).click({ timeout: deadline - Date.now() });
    const editor = page.locator(".editor-instance .monaco-editor").first();
    await editor.locator(".view-lines", { hasText: "multiply the square" }).waitFor({ timeout: deadline - Date.now() });
    log("circle.py open");

    // The status bar item says model · device · latency once the server has loaded its model.
    const item = page.locator(".statusbar-item", { hasText: "midline" }); // in any state
    const status = page.locator(".statusbar-item", { hasText: /midline: .* · cpu · / });
    await status.waitFor({ timeout: deadline - Date.now() });
    log(`status bar: ${(await status.innerText()).trim()}`);

    // End of the comment line (Ctrl+G goes to its start), then type.
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+G");
    await page.keyboard.type(String(COMMENT_LINE + 1));
    await page.keyboard.press("Enter");
    await page.keyboard.press("End");
    await page.keyboard.type(TYPED, { delay: 80 });
    log(`typed ${JSON.stringify(TYPED)}`);

    const ghost = editor.locator(".ghost-text-decoration").first();
    await ghost.waitFor({ state: "visible", timeout: deadline - Date.now() });
    // The text shown, once it has stopped changing (a late answer for an earlier keystroke could replace it).
    const ghostText = async () => (await editor.locator(".ghost-text-decoration").allTextContents()).join("").replace(/\u00a0/g, " ");
    let shown = await ghostText();
    for (let previous = ""; shown !== previous; ) {
      previous = shown;
      await page.waitForTimeout(500);
      shown = await ghostText();
    }
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
    const savedBy = Date.now() + 10_000;
    while (readFileSync(file, "utf8") !== expected && Date.now() < savedBy) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const saved = readFileSync(file, "utf8");
    log(`accepted with Tab and saved: line ${COMMENT_LINE + 1} is ${JSON.stringify(saved.split("\n")[COMMENT_LINE])}`);
    await page.screenshot({ path: path.join(artifacts, "accepted.png") });
    assert.equal(saved, expected, "the document is not the text before + what was typed + the ghost text");

    // A click on the status bar item pauses completions: typing shows no ghost text; another resumes.
    await status.click();
    await item.locator(".codicon-debug-pause").waitFor({ timeout: 10_000 });
    log(`paused: ${(await status.innerText()).trim()}`);
    await editor.locator(".view-lines").click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("# the area of a circle of radius 3 is ", { delay: 20 });
    await page.waitForTimeout(3000);
    assert.equal(await editor.locator(".ghost-text-decoration").count(), 0, "ghost text while paused");
    await status.click();
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
    assert.match(message, /-m pip install midline/);
    await item.locator(".codicon-error").waitFor({ timeout: 10_000 });
    await page.screenshot({ path: path.join(artifacts, "no-server.png") });
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (error) {
    if (page !== undefined) {
      await page.screenshot({ path: path.join(artifacts, "failure.png") }).catch(() => {});
    }
    const logs = findFiles(path.join(userData, "logs"), /midline|exthost|remoteagent/i)
      .map((name) => `--- ${name}\n${readFileSync(name, "utf8").slice(-4000)}`)
      .join("\n");
    throw new Error(`${error.message}\n\nsteps:\n${events.join("\n")}\n\ncode-server:\n${serverLog.join("").slice(-3000)}\n\nlogs:\n${logs}`, { cause: error });
  }
});
