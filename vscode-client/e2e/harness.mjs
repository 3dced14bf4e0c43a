// The end-to-end tests' shared part: a fresh code-server with midline's .vsix installed, a headless Chromium
// page on it (Playwright), and the editor steps the tests share. Each test gets its own profile, workspace and
// port under E2E_WORK/<name>; what it started is stopped when the test ends, and its logs and screenshots go to
// the artifacts folder.
//
// The environment comes from e2e/run.sh:
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

export const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `environment variable ${name} is not set (run e2e/run.sh)`);
  return value;
};

/** The settings every test starts from: the tiny model on the CPU, quick answers, one line of ghost text. */
export const SETTINGS = {
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

/** Processes whose command line or working directory is in `folder` (this test's): what this test started. */
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

/**
 * Starts code-server on a fresh profile and workspace (`files`: name -> text) with `settings` laid over
 * SETTINGS, and opens the workbench in Chromium. Returns the page and helpers; `run(steps)` runs the test's
 * steps and, when one fails, adds the steps so far, code-server's output and the extension host's log to the
 * error. Everything started is stopped by `t.after`.
 */
export async function session(t, { name, timeoutMs, settings = {}, files = {}, keybindings = [] }) {
  const codeServer = env("CODE_SERVER");
  const work = path.join(env("E2E_WORK"), name);
  const artifacts = env("E2E_ARTIFACTS");
  const { chromium } = createRequire(path.join(env("PLAYWRIGHT"), "package.json"))("playwright-core");
  const started = Date.now();
  const deadline = started + timeoutMs;
  const events = [];
  const log = (what) => {
    const line = `${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s  ${what}`;
    events.push(line);
    console.log(`[${name}] ${line}`);
  };

  // A fresh profile each test: typing before the extension has activated gives no ghost text, and old
  // state (a paused toggle, an open editor) would change what happens.
  const userData = path.join(work, "user-data");
  const extensions = path.join(work, "extensions");
  const workspace = path.join(work, "workspace");
  for (const dir of [userData, extensions, workspace, artifacts, path.join(userData, "User")]) {
    mkdirSync(dir, { recursive: true });
  }
  for (const [file, text] of Object.entries(files)) {
    writeFileSync(path.join(workspace, file), text);
  }
  writeFileSync(path.join(userData, "User", "keybindings.json"), JSON.stringify(keybindings, null, 2));
  const userSettings = { ...SETTINGS, "midline.pythonPath": env("MIDLINE_PYTHON"), "midline.model": env("MIDLINE_MODEL"), ...settings };
  writeFileSync(path.join(userData, "User", "settings.json"), JSON.stringify(userSettings, null, 2));
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
  assert.ok(readdirSync(extensions).some((entry) => entry.startsWith("midline.midline-")), `midline is not in ${extensions}`);

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
  const state = { browser: undefined, page: undefined };
  t.after(async () => {
    await state.browser?.close().catch(() => {});
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
        process.kill(pid, "SIGKILL"); // only what this test started: it runs in or names this test's folder
      } catch {
        // already gone
      }
    }
    writeFileSync(path.join(artifacts, `${name}-code-server.log`), serverLog.join(""));
    writeFileSync(path.join(artifacts, `${name}-events.log`), events.join("\n") + "\n");
  });

  const failWith = async (error) => {
    if (state.page !== undefined) {
      await state.page.screenshot({ path: path.join(artifacts, `${name}-failure.png`) }).catch(() => {});
    }
    const logs = findFiles(path.join(userData, "logs"), /midline|exthost|remoteagent/i)
      .map((file) => `--- ${file}\n${readFileSync(file, "utf8").slice(-4000)}`)
      .join("\n");
    return new Error(`${error.message}\n\nsteps:\n${events.join("\n")}\n\ncode-server:\n${serverLog.join("").slice(-3000)}\n\nlogs:\n${logs}`, { cause: error });
  };

  try {
    await waitForHttp(`http://127.0.0.1:${port}/healthz`, deadline, () => !exited);
    log(`code-server listening on ${port}`);
    state.browser = await chromium.launch({ executablePath: env("CHROMIUM"), headless: true, env: isolated }); // its crash reports too
    state.page = await state.browser.newPage({ viewport: { width: 1280, height: 720 } });
    await state.page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`);
    await state.page.locator(".monaco-workbench").waitFor({ timeout: deadline - Date.now() });
    log("workbench loaded");
  } catch (error) {
    throw await failWith(error);
  }
  const page = state.page;
  return {
    page,
    log,
    work,
    workspace,
    artifacts,
    deadline,
    left: () => Math.max(1000, deadline - Date.now()),
    screenshot: (file) => page.screenshot({ path: path.join(artifacts, file) }),
    /** The text of midline's output channel (the extension's and the server's log, and the LSP trace if on). */
    midlineLog: () =>
      findFiles(path.join(userData, "logs"), /^midline\.log$/)
        .map((file) => readFileSync(file, "utf8"))
        .join("\n"),
    /** midline's status bar item, in any state (its id ends with the item's, `midline.status`). */
    statusItem: page.locator('.statusbar-item[id$="midline.status"]'),
    async run(steps) {
      try {
        await steps();
        log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      } catch (error) {
        throw await failWith(error);
      }
    },
  };
}

/** Opens `file` from the explorer, as a user would, and waits for `text` in its editor; returns the editor. */
export async function openFromExplorer(s, file, text) {
  await s.page.getByRole("treeitem", { name: file }).click({ timeout: s.left() });
  const editor = s.page.locator(".editor-instance .monaco-editor").first();
  await editor.locator(".view-lines", { hasText: text }).waitFor({ timeout: s.left() });
  s.log(`${file} open`);
  return editor;
}

/** The cursor to the end of line `line` (1-based) of the focused editor (Ctrl+G, then End). */
export async function goToLineEnd(page, line) {
  await page.keyboard.press("Control+G");
  await page.keyboard.type(String(line));
  await page.keyboard.press("Enter");
  await page.keyboard.press("End");
}

/** Text as the editor shows it -> as it is: non-breaking spaces are spaces, and control characters, which the
 * editor shows as their Unicode pictures (U+2400-U+241F, U+2421 for DEL), are themselves. */
function unrendered(text) {
  return text.replace(/\u00a0/g, " ").replace(/[\u2400-\u241f\u2421]/g, (c) => (c === "\u2421" ? "\x7f" : String.fromCharCode(c.charCodeAt(0) - 0x2400)));
}

/** The ghost text shown in `editor` once it has stopped changing (a late answer could replace it): its
 * first line (inline, after the cursor) and the lines below it. */
export async function settledGhost(page, editor, timeout) {
  await editor.locator(".ghost-text-decoration").first().waitFor({ state: "visible", timeout });
  const read = async () => {
    const inline = (await editor.locator(".ghost-text-decoration").allTextContents()).join("");
    const below = (await editor.locator(".ghost-text").allInnerTexts()).flatMap((block) => block.split("\n"));
    return unrendered([inline, ...below].join("\n"));
  };
  let shown = await read();
  for (let previous = ""; shown !== previous; ) {
    previous = shown;
    await page.waitForTimeout(500);
    shown = await read();
  }
  return shown;
}

/** Polls `read` until its value is `expected` (or, given a function, satisfies it) or `ms` pass; returns its
 * last value. */
export async function eventually(read, expected, ms = 10_000) {
  const done = typeof expected === "function" ? expected : (value) => value === expected;
  let value = await read();
  for (const until = Date.now() + ms; !done(value) && Date.now() < until; ) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    value = await read();
  }
  return value;
}

/** Picks the entry of midline's status bar menu whose label contains `label`. */
export async function pickFromStatusMenu(s, label) {
  await s.statusItem.click();
  const row = s.page.locator(".quick-input-list .monaco-list-row", { hasText: label }).first();
  await row.waitFor({ timeout: 10_000 });
  await row.click();
}
