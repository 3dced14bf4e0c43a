/**
 * The server logs to stderr with Python's logging (`%(asctime)s %(name)s %(levelname)s %(message)s`);
 * each line goes to the output channel at its own level, without the time and level the channel
 * shows itself. Lines without that prefix (a traceback's) keep the level of the line before. Pure.
 */

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";

const LEVELS: Record<string, LogLevel> = {
  DEBUG: "debug",
  INFO: "info",
  WARNING: "warn",
  WARN: "warn",
  ERROR: "error",
  CRITICAL: "error",
};

const PATTERN = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\S+) (DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL) (.*)$/s;

/** A stateful classifier: call it once per stderr line, in order; it says the level and the text to log. */
export function lineLeveller(initial: LogLevel = "info"): (line: string) => { level: LogLevel; text: string } {
  let last = initial;
  return (line) => {
    const match = PATTERN.exec(line);
    if (match !== null) {
      last = LEVELS[match[2]];
      return { level: last, text: `[${match[1]}] ${match[3]}` };
    }
    if (/^Traceback \(most recent call last\)/.test(line)) {
      last = "error";
    }
    return { level: last, text: line };
  };
}
