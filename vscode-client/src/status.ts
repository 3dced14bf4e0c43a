/**
 * The status bar item's text and tooltip, from the server's `midline.status` command and whether requests
 * are stopped (gate.ts). Pure: the extension only copies these strings onto a `StatusBarItem`.
 */
import { describeSuspension, formatRemaining, type Suspension } from "./gate";

/** What `midline.status` returns (server/server.py `status`); every field may be missing. */
export interface ServerStatus {
  ready?: boolean;
  /** `loading` (the server answers before its model is loaded), `ready`, or `failed` (`error` says why). */
  state?: "loading" | "ready" | "failed";
  error?: string;
  model?: string;
  device?: string;
  fimFormat?: string;
  generating?: boolean;
  requests?: number;
  modelCalls?: number;
  cacheHits?: number;
  typedThrough?: number;
  cancelled?: number;
  timeouts?: number;
  lastLatencyMs?: number;
  last?: { shown?: string | null; finishReason?: string };
}

export type ClientState = "starting" | "running" | "stopped" | "failed";

export interface StatusView {
  text: string;
  /** Markdown. */
  tooltip: string;
  /** An error or warning background is wanted. */
  severity: "none" | "warning" | "error";
}

/** The last path component of a model directory (`/models/qwen-1.5b/` -> `qwen-1.5b`). */
export function modelName(path: string | undefined): string {
  if (!path) {
    return "default model";
  }
  const parts = path.split(/[\\/]+/).filter((part) => part.length > 0);
  return parts.length > 0 ? parts[parts.length - 1] : path;
}

/** `840 ms`, `1.2 s`; `–` before the first model call. */
export function formatLatency(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms) || ms <= 0) {
    return "–";
  }
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

const SUSPENDED_ICONS: Record<Suspension["kind"], string> = { paused: "$(debug-pause)", snoozed: "$(clock)", language: "$(circle-slash)" };

/** The tooltip's line on whether completions are on. */
function completionsLine(suspended: Suspension | undefined, now: number): string {
  switch (suspended?.kind) {
    case undefined:
      return "completions on";
    case "paused":
      return "completions **paused**";
    case "snoozed":
      return `completions **snoozed**, ${formatRemaining(suspended.until - now)} left`;
    case "language":
      return `completions **off** for ${escapeMarkdown(suspended.language)} (\`midline.enable\`)`;
  }
}

/** The item's view: `suspended` says why requests are stopped (none go to the server then), `now` is for
 * a snooze's time left. */
export function formatStatus(state: ClientState, status: ServerStatus | undefined, suspended: Suspension | undefined, error?: string, now = Date.now()): StatusView {
  const click = "Click for the menu: pause, snooze, per-language, log, restart.";
  if (state === "failed") {
    return {
      text: "$(error) midline",
      tooltip: `**midline**: the server is not running.\n\n${escapeMarkdown(error ?? "See the midline output channel.")}\n\n${click}`,
      severity: "error",
    };
  }
  if (state === "stopped") {
    return { text: "$(circle-slash) midline", tooltip: `**midline**: the server has stopped.\n\n${click}`, severity: "warning" };
  }
  if (state === "starting" || status === undefined) {
    return { text: "$(loading~spin) midline", tooltip: "**midline**: starting the server…", severity: "none" };
  }
  const model = modelName(status.model);
  if (status.state === "failed") {
    const why = escapeMarkdown(status.error ?? "See the midline output channel.");
    return { text: `$(error) midline: ${model}`, tooltip: `**midline**: no model.\n\n${why}\n\n${click}`, severity: "error" };
  }
  const severity = suspended === undefined || suspended.kind === "language" ? "none" : "warning";
  const suspendedText = suspended && `${SUSPENDED_ICONS[suspended.kind]} midline: ${describeSuspension(suspended, now)}`;
  if (!status.ready) {
    const text = suspendedText ?? `$(loading~spin) midline: ${model}`;
    return { text, tooltip: `**midline**: loading ${escapeMarkdown(status.model ?? model)}…\n\n${completionsLine(suspended, now)}\n\n${click}`, severity };
  }
  const device = status.device ?? "?";
  const latency = formatLatency(status.lastLatencyMs);
  const text = suspendedText ?? `${status.generating ? "$(sync~spin)" : "$(sparkle)"} midline: ${model} · ${device} · ${latency}`;
  const rows = [
    `**midline** — ${completionsLine(suspended, now)}`,
    "",
    "| | |",
    "| --- | --- |",
    `| model | ${escapeMarkdown(status.model ?? model)} |`,
    `| device | ${escapeMarkdown(device)} |`,
    `| FIM format | ${escapeMarkdown(status.fimFormat ?? "?")} |`,
    `| last latency | ${latency} |`,
    `| requests | ${status.requests ?? 0} (model ${status.modelCalls ?? 0}, cache ${status.cacheHits ?? 0}, typed through ${status.typedThrough ?? 0}) |`,
    `| cancelled / timeouts | ${status.cancelled ?? 0} / ${status.timeouts ?? 0} |`,
    "",
    click,
  ];
  return { text, tooltip: rows.join("\n"), severity };
}

/** Markdown-escapes text shown in a tooltip (paths hold `_` and `*`). */
export function escapeMarkdown(text: string): string {
  return text.replace(/[\\`*_{}[\]()#+\-.!|<>]/g, "\\$&");
}
