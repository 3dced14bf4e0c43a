import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import * as path from "node:path";

import { PYTHON_PROBE, findExecutable, missingModuleMessage, resolveServerCommand, type Lookup } from "../src/serverCommand";

function lookup(executables: string[], pathEnv = "/usr/local/bin:/usr/bin"): Lookup {
  return { pathEnv, isExecutable: (file) => executables.includes(file), platform: "linux" };
}

const NONE = { serverCommand: [], pythonPath: "", logLevel: "INFO" };

describe("server command", () => {
  test("default: `midline serve` from PATH", () => {
    assert.deepEqual(resolveServerCommand(NONE, lookup(["/usr/bin/midline"])), {
      command: "/usr/bin/midline",
      args: ["serve", "--log-level", "INFO"],
      source: "PATH",
    });
  });

  test("pythonPath: `python -m midline.server`", () => {
    const settings = { ...NONE, pythonPath: "/p/.venv/bin/python", logLevel: "DEBUG" };
    assert.deepEqual(resolveServerCommand(settings, lookup(["/p/.venv/bin/python", "/usr/bin/midline"])), {
      command: "/p/.venv/bin/python",
      args: ["-m", "midline.server", "--log-level", "DEBUG"],
      source: "midline.pythonPath",
    });
  });

  test("serverCommand wins and is used as given", () => {
    const settings = { ...NONE, serverCommand: ["midline", "serve", "--log-level", "WARNING"], pythonPath: "/x/python" };
    assert.deepEqual(resolveServerCommand(settings, lookup(["/usr/local/bin/midline"])), {
      command: "/usr/local/bin/midline",
      args: ["serve", "--log-level", "WARNING"],
      source: "midline.serverCommand",
    });
  });

  test("missing server: the message says how to fix it", () => {
    const result = resolveServerCommand(NONE, lookup([]));
    assert.ok("error" in result);
    assert.match(result.error, /`midline` command is not on PATH/);
    assert.match(result.error, /pip install -e \/path\/to\/midline/);
    assert.match(result.error, /midline\.pythonPath/);
    assert.match(result.error, /midline\.serverCommand/);
  });

  test("a pythonPath or serverCommand that is not executable is named", () => {
    const python = resolveServerCommand({ ...NONE, pythonPath: "/nope/python" }, lookup(["/usr/bin/midline"]));
    assert.ok("error" in python && python.error.includes("`/nope/python`") && python.error.includes("pip install -e /path/to/midline"));
    const command = resolveServerCommand({ ...NONE, serverCommand: ["nope", "serve"] }, lookup([]));
    assert.ok("error" in command && command.error.includes("`nope`"));
  });

  test("PATH lookup", () => {
    assert.equal(findExecutable("midline", lookup(["/usr/bin/midline"], "::/usr/bin")), "/usr/bin/midline");
    assert.equal(findExecutable("./bin/midline", lookup(["./bin/midline"])), "./bin/midline");
    assert.equal(findExecutable("midline", lookup([], "")), undefined);
  });

  test("missing module message", () => {
    assert.match(missingModuleMessage("/usr/bin/python3"), /`\/usr\/bin\/python3 -m pip install -e \/path\/to\/midline`/);
  });

  const python = process.env.MIDLINE_PYTHON ?? path.join(__dirname, "..", "..", "..", ".venv", "bin", "python");
  const skip = existsSync(python) ? false : `no Python with midline at ${python} (set MIDLINE_PYTHON)`;
  test("the probe: exit 0 with midline, 3 without (site-packages off)", { skip }, () => {
    assert.equal(spawnSync(python, ["-c", PYTHON_PROBE]).status, 0);
    const without = spawnSync(python, ["-I", "-S", "-c", PYTHON_PROBE], { encoding: "utf8" });
    assert.equal(without.status, 3, without.stderr);
  });
});
