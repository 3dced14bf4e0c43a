/**
 * Which command starts `midline serve`, from the settings; and the message, with the fix, when there
 * is none. Pure: the file system and PATH are passed in.
 */
import * as path from "node:path";

export interface ServerCommandSettings {
  serverCommand: readonly string[];
  pythonPath: string;
  logLevel: string;
}

export interface ServerCommand {
  command: string;
  args: string[];
  /** Which setting it came from, for messages. */
  source: "midline.serverCommand" | "midline.pythonPath" | "PATH";
}

export interface Lookup {
  /** The PATH value (`process.env.PATH`). */
  pathEnv: string | undefined;
  /** Whether `file` is an executable file. */
  isExecutable: (file: string) => boolean;
  platform: NodeJS.Platform;
}

export const INSTALL_HINT =
  "Install the server from a midline checkout (`pip install -e /path/to/midline`, or the wheel built from it), then set " +
  "`midline.pythonPath` to that environment's Python, or `midline.serverCommand` to the full command " +
  '(e.g. `["/path/to/.venv/bin/midline", "serve"]`).';

/** The server command, or a message that says what is missing and how to fix it. */
export function resolveServerCommand(settings: ServerCommandSettings, lookup: Lookup): ServerCommand | { error: string } {
  const logArgs = ["--log-level", settings.logLevel || "INFO"];
  const custom = settings.serverCommand.filter((part) => part.trim() !== "");
  if (custom.length > 0) {
    const [command, ...args] = custom;
    const found = findExecutable(command, lookup);
    if (found === undefined) {
      return { error: `midline: \`midline.serverCommand\` starts with \`${command}\`, which is not an executable file or on PATH. ${INSTALL_HINT}` };
    }
    return { command: found, args, source: "midline.serverCommand" };
  }
  const python = settings.pythonPath.trim();
  if (python !== "") {
    const found = findExecutable(python, lookup);
    if (found === undefined) {
      return { error: `midline: \`midline.pythonPath\` is \`${python}\`, which is not an executable file. ${INSTALL_HINT}` };
    }
    return { command: found, args: ["-m", "midline.server", ...logArgs], source: "midline.pythonPath" };
  }
  const midline = findExecutable(lookup.platform === "win32" ? "midline.exe" : "midline", lookup);
  if (midline === undefined) {
    return { error: `midline: the \`midline\` command is not on PATH. ${INSTALL_HINT}` };
  }
  return { command: midline, args: ["serve", ...logArgs], source: "PATH" };
}

/** An absolute or relative path that is executable, or a bare name found on PATH. */
export function findExecutable(name: string, lookup: Lookup): string | undefined {
  const expanded = name.startsWith("~/") && process.env.HOME ? path.join(process.env.HOME, name.slice(2)) : name;
  if (expanded.includes("/") || (lookup.platform === "win32" && expanded.includes("\\"))) {
    return lookup.isExecutable(expanded) ? expanded : undefined;
  }
  const separator = lookup.platform === "win32" ? ";" : ":";
  for (const dir of (lookup.pathEnv ?? "").split(separator)) {
    if (dir === "") {
      continue;
    }
    const candidate = path.join(dir, expanded);
    if (lookup.isExecutable(candidate)) {
      return candidate;
    }
  }
  return undefined;
}

/** The Python one-liner that checks an interpreter has midline's server (exit 3 when it has not). */
export const PYTHON_PROBE = [
  "import importlib.util, sys",
  "try:",
  "    found = importlib.util.find_spec('midline.server') is not None",
  "except ImportError:  # no `midline` package at all",
  "    found = False",
  "sys.exit(0 if found else 3)",
].join("\n");

/** The message for a `pythonPath` whose interpreter lacks midline. */
export function missingModuleMessage(python: string): string {
  return `midline: the Python at \`${python}\` has no midline server. Run \`${python} -m pip install -e /path/to/midline\` (a midline checkout; or install the wheel built from it with that Python), or point \`midline.pythonPath\` at the environment that has it.`;
}
