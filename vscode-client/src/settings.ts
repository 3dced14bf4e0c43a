/**
 * VS Code's `midline.*` settings -> the server's configuration (the `midline` section of
 * initializationOptions and workspace/didChangeConfiguration). Pure: no `vscode` import, so it is
 * unit-tested under plain Node.
 *
 * package.json's `contributes.configuration` is the one list of settings: each `midline.*` property
 * that is not the client's own (CLIENT_KEYS) is the server's key of the same name, a dotted name being
 * a sub-section (`midline.context.budget` -> `{context: {budget}}`). The server (server/config.py)
 * refuses unknown keys, so the client's own settings are never sent. Every server key is sent with its
 * effective value, defaults included: the server lays new settings over its current ones, so a key
 * left out would keep a value the user has since reset.
 */

/** Settings of the extension itself, not sent to the server. */
export const CLIENT_KEYS = ["serverCommand", "pythonPath", "logLevel", "trace.server"] as const;

/** Client settings whose change needs a new server process (its command line changes). */
export const RESTART_KEYS = ["serverCommand", "pythonPath", "logLevel"] as const;

/** One server setting: its key below `midline`, and whether an empty string means null (unset). */
export interface SettingSpec {
  key: string;
  nullable: boolean;
}

interface PropertySchema {
  type?: string | string[];
}

/** The server's settings, from package.json's `contributes.configuration.properties`. */
export function serverSettingSpecs(properties: Record<string, PropertySchema>): SettingSpec[] {
  const clientKeys: readonly string[] = CLIENT_KEYS;
  return Object.entries(properties)
    .filter(([name]) => name.startsWith("midline."))
    .map(([name, schema]) => ({
      key: name.slice("midline.".length),
      nullable: Array.isArray(schema.type) ? schema.type.includes("null") : schema.type === "null",
    }))
    .filter((spec) => !clientKeys.includes(spec.key));
}

/** Reads one `midline.*` setting by its key below `midline` (`"maxNewTokens"`, `"context.budget"`). */
export type SettingsReader = (key: string) => unknown;

export type ServerSettings = { [key: string]: unknown };

/** The server's `midline` section from VS Code's settings; settings that have no value are left out. */
export function serverSettings(specs: readonly SettingSpec[], read: SettingsReader): ServerSettings {
  const out: ServerSettings = {};
  for (const spec of specs) {
    let value = read(spec.key);
    if (value === undefined) {
      continue;
    }
    if (spec.nullable && typeof value === "string" && value.trim() === "") {
      value = null;
    } else if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      value = { ...(value as Record<string, unknown>) }; // a plain copy of VS Code's read-only proxy
    }
    const path = spec.key.split(".");
    let section = out;
    for (const part of path.slice(0, -1)) {
      const next = section[part];
      section = (section[part] = next !== null && typeof next === "object" ? next : {}) as ServerSettings;
    }
    section[path[path.length - 1]] = value;
  }
  return out;
}

/** Whether a configuration change (tested with VS Code's `affectsConfiguration`) needs a restart. */
export function needsRestart(affects: (section: string) => boolean): boolean {
  return RESTART_KEYS.some((key) => affects(`midline.${key}`));
}

/** Whether it changes what the server is sent. */
export function affectsServer(specs: readonly SettingSpec[], affects: (section: string) => boolean): boolean {
  return specs.some((spec) => affects(`midline.${spec.key}`));
}
