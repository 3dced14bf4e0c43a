/**
 * Whether the client asks the server for suggestions at all: completions can be paused (until resumed),
 * snoozed (until a time, then they resume by themselves) or turned off for a language (the `midline.enable`
 * map, which the server reads too). The client answers a stopped request itself, so nothing reaches the server.
 * Pure: no `vscode` import, so it is unit-tested under plain Node.
 */

/** Why requests are stopped now; undefined while they go to the server. */
export type Suspension = { kind: "paused" } | { kind: "snoozed"; until: number } | { kind: "language"; language: string };

/** The snooze lengths the status bar menu offers, in minutes. */
export const SNOOZE_MINUTES = [5, 15, 60] as const;

/** `midline.enable`: on or off per language id, `*` for the rest. */
export type EnableMap = Record<string, boolean>;

/** A language's own entry in `midline.enable`: true or false, or undefined (no entry: the server decides,
 * from `*` and the languages its model names). */
export function languageSetting(enable: unknown, language: string): boolean | undefined {
  if (enable === null || typeof enable !== "object" || Array.isArray(enable)) {
    return undefined;
  }
  const value = (enable as Record<string, unknown>)[language];
  return typeof value === "boolean" ? value : undefined;
}

/** `enable` with the language's entry set to `on`; the other entries are kept. */
export function withLanguage(enable: unknown, language: string, on: boolean): EnableMap {
  const kept: EnableMap = {};
  if (enable !== null && typeof enable === "object" && !Array.isArray(enable)) {
    for (const [key, value] of Object.entries(enable as Record<string, unknown>)) {
      if (typeof value === "boolean") {
        kept[key] = value;
      }
    }
  }
  return { ...kept, [language]: on };
}

export interface GateState {
  paused: boolean;
  /** When a snooze ends (ms since the epoch); 0 or past: none. */
  snoozedUntil: number;
  /** `midline.enable`. */
  enable: unknown;
}

/** Why a request for a document of `language` (undefined: no document) is stopped at `now`, if it is. */
export function suspension(state: GateState, language: string | undefined, now: number): Suspension | undefined {
  if (state.paused) {
    return { kind: "paused" };
  }
  if (state.snoozedUntil > now) {
    return { kind: "snoozed", until: state.snoozedUntil };
  }
  if (language !== undefined && languageSetting(state.enable, language) === false) {
    return { kind: "language", language };
  }
  return undefined;
}

/** Time left, rounded up to the minute: `1 min`, `15 min`, `1 h 5 min`. */
export function formatRemaining(ms: number): string {
  const minutes = Math.max(1, Math.ceil(ms / 60_000));
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest === 0 ? `${hours} h` : `${hours} h ${rest} min`;
}

/** The status bar text for a suspension: `paused`, `snoozed 14 min`, `off for markdown`. */
export function describeSuspension(suspended: Suspension, now: number): string {
  switch (suspended.kind) {
    case "paused":
      return "paused";
    case "snoozed":
      return `snoozed ${formatRemaining(suspended.until - now)}`;
    case "language":
      return `off for ${suspended.language}`;
  }
}

/** One entry of the status bar menu: `action` is what the extension does when it is picked. */
export interface MenuEntry {
  label: string;
  description?: string;
  action: { kind: "pause" | "resume" | "unsnooze" | "showStatus" | "showLog" | "restart" } | { kind: "snooze"; minutes: number } | { kind: "language"; language: string; on: boolean };
}

/** The status bar menu for the current state; `language` is the active editor's language id, if any. */
export function menuEntries(state: GateState, language: string | undefined, now: number): MenuEntry[] {
  const entries: MenuEntry[] = [];
  if (state.paused) {
    entries.push({ label: "$(debug-start) Resume completions", action: { kind: "resume" } });
  } else {
    entries.push({ label: "$(debug-pause) Pause completions", description: "until resumed", action: { kind: "pause" } });
  }
  if (state.snoozedUntil > now) {
    entries.push({ label: "$(bell) Resume now", description: `snoozed, ${formatRemaining(state.snoozedUntil - now)} left`, action: { kind: "unsnooze" } });
  }
  for (const minutes of SNOOZE_MINUTES) {
    entries.push({ label: `$(clock) Snooze for ${formatRemaining(minutes * 60_000)}`, description: "then resume by itself", action: { kind: "snooze", minutes } });
  }
  if (language !== undefined) {
    const off = languageSetting(state.enable, language) === false;
    entries.push(
      off
        ? { label: `$(check) Enable for ${language}`, description: "midline.enable", action: { kind: "language", language, on: true } }
        : { label: `$(circle-slash) Disable for ${language}`, description: "midline.enable", action: { kind: "language", language, on: false } },
    );
  }
  entries.push(
    { label: "$(info) Show status", action: { kind: "showStatus" } },
    { label: "$(output) Show server log", action: { kind: "showLog" } },
    { label: "$(debug-restart) Restart server", action: { kind: "restart" } },
  );
  return entries;
}
