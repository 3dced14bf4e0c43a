/**
 * midline for VS Code: starts `midline serve` with vscode-languageclient's node client, so the
 * server's LSP 3.18 inline completions become ghost text; maps `midline.*` settings onto the server's
 * configuration; shows model, device and last latency in the status bar, whose menu pauses, snoozes
 * (timed) or turns completions off for a language, answering those requests itself (gate.ts); serves Python
 * (and the other languages') cells of notebooks too; sends the server's log to the "midline" output
 * channel; and adds commands for midline's code actions.
 */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as readline from "node:readline";

import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  RevealOutputChannelOn,
  State,
  type LanguageClientOptions,
  type ServerOptions,
  type StaticFeature,
} from "vscode-languageclient/node";

import { ACTIONS, pickAction, type ActionSpec } from "./codeActions";
import { explanationHtml } from "./explanation";
import { menuEntries, SNOOZE_MINUTES, suspension, withLanguage, formatRemaining, type GateState, type MenuEntry, type Suspension } from "./gate";
import { PYTHON_PROBE, missingModuleMessage, resolveServerCommand, type ServerCommand } from "./serverCommand";
import { affectsServer, needsRestart, serverSettingSpecs, serverSettings, type SettingSpec } from "./settings";
import { lineLeveller } from "./serverLog";
import { formatStatus, type ClientState, type ServerStatus } from "./status";

/** The languages the server has grammars for (the `vscode_ids` of model/languages.py; tests/model/test_languages.py checks this list and package.json against it). */
export const LANGUAGES = ["python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust", "java", "c", "cpp"];

const PAUSED_KEY = "midline.paused";
const SNOOZED_UNTIL_KEY = "midline.snoozedUntil";
/** How often the status bar's snooze countdown is redrawn. */
const SNOOZE_TICK_MS = 30_000;
const POLL_LOADING_MS = 1000;
const POLL_READY_MS = 60_000;

let midline: Midline | undefined;

export interface MidlineApi {
  /** The last `midline.status` result. */
  status(): ServerStatus | undefined;
  paused(): boolean;
  /** Why requests for `language` (default: the active editor's) are stopped now, if they are. */
  suspended(language?: string): Suspension | undefined;
  state(): ClientState;
}

export async function activate(context: vscode.ExtensionContext): Promise<MidlineApi> {
  midline = new Midline(context);
  await midline.start();
  return {
    status: () => midline?.lastStatus,
    paused: () => midline?.paused ?? false,
    suspended: (language) => midline?.suspended(language ?? activeLanguage()),
    state: () => midline?.state ?? "stopped",
  };
}

export async function deactivate(): Promise<void> {
  await midline?.dispose();
  midline = undefined;
}

class Midline {
  readonly output: vscode.LogOutputChannel;
  readonly statusItem: vscode.StatusBarItem;
  client: LanguageClient | undefined;
  state: ClientState = "starting";
  lastStatus: ServerStatus | undefined;
  paused: boolean;
  /** When the snooze ends (ms since the epoch); 0: not snoozed. */
  private snoozedUntil: number;
  private snoozeTimer: NodeJS.Timeout | undefined;
  private error: string | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private refreshSoon: NodeJS.Timeout | undefined;
  private explanation: vscode.WebviewPanel | undefined;
  private starting: Promise<void> | undefined;
  /** The server's settings, as package.json declares them. */
  private readonly specs: SettingSpec[];

  constructor(private readonly context: vscode.ExtensionContext) {
    this.output = vscode.window.createOutputChannel("midline", { log: true });
    this.statusItem = vscode.window.createStatusBarItem("midline.status", vscode.StatusBarAlignment.Right, 100);
    this.statusItem.name = "midline";
    this.statusItem.command = "midline.menu";
    this.specs = serverSettingSpecs(context.extension.packageJSON.contributes.configuration.properties);
    this.paused = context.globalState.get<boolean>(PAUSED_KEY, false);
    void vscode.commands.executeCommand("setContext", PAUSED_KEY, this.paused);
    this.snoozedUntil = context.globalState.get<number>(SNOOZED_UNTIL_KEY, 0);
    context.subscriptions.push(
      this.output,
      this.statusItem,
      vscode.commands.registerCommand("midline.toggle", () => this.setPaused(!this.paused)),
      vscode.commands.registerCommand("midline.menu", () => this.showMenu()),
      vscode.commands.registerCommand("midline.snooze", (minutes?: unknown) => this.snoozeCommand(minutes)),
      vscode.commands.registerCommand("midline.toggleLanguage", () => this.toggleActiveLanguage()),
      vscode.commands.registerCommand("midline.restart", () => this.restart()),
      vscode.commands.registerCommand("midline.showLog", () => this.output.show(true)),
      vscode.commands.registerCommand("midline.showStatus", () => this.showStatus()),
      vscode.commands.registerCommand("midline.showExplanation", (markdown: unknown, title?: unknown) =>
        this.showExplanation(markdown, typeof title === "string" ? title : undefined),
      ),
      ...ACTIONS.map((spec) => vscode.commands.registerCommand(spec.command, () => this.runAction(spec))),
      vscode.workspace.onDidChangeConfiguration((event) => this.onConfigurationChanged(event)),
      vscode.window.onDidChangeActiveTextEditor(() => this.render()),
      { dispose: () => clearTimeout(this.snoozeTimer) },
    );
    this.scheduleSnoozeTick();
    this.render();
    this.statusItem.show();
  }

  start(): Promise<void> {
    this.starting ??= this.startClient().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async startClient(): Promise<void> {
    this.setState("starting");
    const config = vscode.workspace.getConfiguration("midline");
    const resolved = resolveServerCommand(
      {
        serverCommand: config.get<string[]>("serverCommand", []),
        pythonPath: config.get<string>("pythonPath", ""),
        logLevel: config.get<string>("logLevel", "INFO"),
      },
      { pathEnv: process.env.PATH, isExecutable, platform: process.platform },
    );
    if ("error" in resolved) {
      return this.fail(resolved.error);
    }
    if (resolved.source === "midline.pythonPath" && !(await this.probePython(resolved.command))) {
      return;
    }
    this.output.info(`starting ${[resolved.command, ...resolved.args].join(" ")} (from ${resolved.source})`);
    const client = new LanguageClient("midline", "midline", this.serverOptions(resolved), this.clientOptions());
    // Inline completion (LSP 3.18) is built into vscode-languageclient 11; this adds any 3.18 features it
    // still ships as proposed, so the server's ghost text works with older and newer clients alike.
    client.registerProposedFeatures();
    client.registerFeature(midlineCapabilities);
    client.onDidChangeState((event) => {
      if (event.newState === State.Running) {
        this.setState("running");
      } else if (event.newState === State.Stopped && this.state !== "failed") {
        this.setState("stopped");
      }
    });
    this.client = client;
    try {
      await client.start();
    } catch (error) {
      this.client = undefined;
      return this.fail(`midline: could not start the server (${[resolved.command, ...resolved.args].join(" ")}): ${messageOf(error)}`);
    }
    this.setState("running");
    this.schedulePoll(0);
  }

  private serverOptions(resolved: ServerCommand): ServerOptions {
    const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.scheme === "file" ? vscode.workspace.workspaceFolders[0].uri.fsPath : undefined;
    // No `transport`: with TransportKind.stdio the client would append `--stdio`, which `midline serve` refuses.
    return { command: resolved.command, args: resolved.args, options: { cwd } };
  }

  private clientOptions(): LanguageClientOptions {
    return {
      documentSelector: LANGUAGES.flatMap((language) => [
        { scheme: "file", language },
        { scheme: "untitled", language },
        // A notebook's cells of the language (Jupyter's Python cells): synced as notebookDocument/* where
        // the server declares notebookDocumentSync, else each cell as a text document of its own.
        { notebook: "*", language },
      ]),
      initializationOptions: () => ({ midline: serverSettings(this.specs, reader()) }),
      outputChannel: this.output,
      traceOutputChannel: this.output,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      stdioOptions: {
        stdout: (input, channel) => {
          readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on("line", (line) => channel.info(line));
        },
        stderr: (input, channel) => {
          const classify = lineLeveller();
          readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on("line", (line) => {
            const { level, text } = classify(line);
            channel[level](text);
          });
        },
      },
      middleware: {
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          if (this.suspended(document.languageId) !== undefined) {
            return null; // paused, snoozed or off for the language: the server is not asked
          }
          try {
            return await next(document, position, context, token);
          } finally {
            this.refreshStatusSoon();
          }
        },
        provideCompletionItem: (document, position, context, token, next) =>
          this.suspended(document.languageId) !== undefined ? null : next(document, position, context, token),
        workspace: {
          // The server pulls its section when a change notification carries none: answer with its keys only.
          configuration: async (params, token, next) => {
            const values = await next(params, token);
            if (!Array.isArray(values)) {
              return values;
            }
            return values.map((value: unknown, i: number) => {
              const item = params.items[i];
              if (item?.section !== "midline") {
                return value;
              }
              const scope = item.scopeUri ? vscode.Uri.parse(item.scopeUri) : undefined;
              return serverSettings(this.specs, reader(scope));
            });
          },
        },
      },
    };
  }

  private async probePython(python: string): Promise<boolean> {
    const result = await new Promise<{ code: number | string | null; stderr: string }>((resolve) => {
      execFile(python, ["-c", PYTHON_PROBE], { timeout: 60_000 }, (error, _stdout, stderr) => {
        const code = error === null ? 0 : ((error as NodeJS.ErrnoException & { code?: number | string }).code ?? null);
        resolve({ code, stderr: String(stderr) });
      });
    });
    if (result.code === 0) {
      return true;
    }
    if (result.code === 3) {
      this.fail(missingModuleMessage(python));
    } else {
      this.fail(`midline: could not run \`${python}\` (midline.pythonPath): ${result.code ?? "killed"} ${result.stderr.trim()}`);
    }
    return false;
  }

  private fail(message: string): void {
    this.error = message;
    this.output.error(message);
    this.setState("failed");
    void vscode.window.showErrorMessage(message, "Open Settings", "Show Log").then((choice) => {
      if (choice === "Open Settings") {
        void vscode.commands.executeCommand("workbench.action.openSettings", "midline.");
      } else if (choice === "Show Log") {
        this.output.show(true);
      }
    });
  }

  private setState(state: ClientState): void {
    this.state = state;
    if (state !== "failed") {
      this.error = undefined;
    }
    if (state !== "running") {
      this.lastStatus = undefined;
    }
    this.render();
  }

  private gateState(): GateState {
    return { paused: this.paused, snoozedUntil: this.snoozedUntil, enable: vscode.workspace.getConfiguration("midline").get("enable") };
  }

  /** Why requests for a document of `language` are stopped now, if they are. */
  suspended(language: string | undefined): Suspension | undefined {
    return suspension(this.gateState(), language, Date.now());
  }

  private render(): void {
    const view = formatStatus(this.state, this.lastStatus, this.suspended(activeLanguage()), this.error);
    this.statusItem.text = view.text;
    const tooltip = new vscode.MarkdownString(view.tooltip);
    tooltip.supportThemeIcons = true;
    this.statusItem.tooltip = tooltip;
    this.statusItem.backgroundColor =
      view.severity === "none" ? undefined : new vscode.ThemeColor(view.severity === "error" ? "statusBarItem.errorBackground" : "statusBarItem.warningBackground");
  }

  private schedulePoll(delay: number): void {
    clearTimeout(this.pollTimer);
    this.pollTimer = setTimeout(() => void this.poll(), delay);
  }

  /** Polls `midline.status` while the model loads; after that the status changes only with requests,
   * which refresh it themselves, and a slow poll catches the rest (a reload after a settings change). */
  private async poll(): Promise<void> {
    await this.refreshStatus();
    if (this.client !== undefined && this.state === "running") {
      this.schedulePoll(this.lastStatus?.ready || this.lastStatus?.state === "failed" ? POLL_READY_MS : POLL_LOADING_MS);
    }
  }

  private refreshStatusSoon(): void {
    clearTimeout(this.refreshSoon);
    this.refreshSoon = setTimeout(() => void this.refreshStatus(), 100);
  }

  async refreshStatus(): Promise<ServerStatus | undefined> {
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      return undefined;
    }
    try {
      const status = (await client.sendRequest(ExecuteCommandRequest.type, { command: "midline.status", arguments: [] })) as ServerStatus | null;
      if (client === this.client && this.state === "running") {
        this.lastStatus = status ?? undefined;
        this.render();
      }
      return this.lastStatus;
    } catch (error) {
      this.output.info(`midline.status failed: ${messageOf(error)}`);
      return undefined;
    }
  }

  private async setPaused(paused: boolean): Promise<void> {
    this.paused = paused;
    await this.context.globalState.update(PAUSED_KEY, this.paused);
    await vscode.commands.executeCommand("setContext", PAUSED_KEY, this.paused);
    if (this.paused) {
      await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
    }
    this.render();
    vscode.window.setStatusBarMessage(this.paused ? "midline: completions paused" : "midline: completions resumed", 2000);
  }

  /** Snoozes for `minutes` (0: ends the snooze); completions resume by themselves when it ends. */
  private async snooze(minutes: number): Promise<void> {
    this.snoozedUntil = minutes > 0 ? Date.now() + minutes * 60_000 : 0;
    await this.context.globalState.update(SNOOZED_UNTIL_KEY, this.snoozedUntil);
    if (minutes > 0) {
      await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
    }
    this.scheduleSnoozeTick();
    this.render();
    vscode.window.setStatusBarMessage(minutes > 0 ? `midline: completions snoozed for ${formatRemaining(minutes * 60_000)}` : "midline: completions resumed", 2000);
  }

  /** Redraws the countdown while snoozed, and the status once the snooze is over. */
  private scheduleSnoozeTick(): void {
    clearTimeout(this.snoozeTimer);
    const left = this.snoozedUntil - Date.now();
    if (this.snoozedUntil === 0) {
      return;
    }
    if (left <= 0) {
      this.snoozedUntil = 0;
      void this.context.globalState.update(SNOOZED_UNTIL_KEY, 0);
      this.render();
      vscode.window.setStatusBarMessage("midline: snooze over, completions resumed", 4000);
      return;
    }
    this.snoozeTimer = setTimeout(() => {
      this.render();
      this.scheduleSnoozeTick();
    }, Math.min(left, SNOOZE_TICK_MS));
  }

  /** `midline.snooze`: for the minutes given (a keybinding's `args`), else as picked from a short list. */
  private async snoozeCommand(minutes: unknown): Promise<void> {
    if (typeof minutes === "number" && Number.isFinite(minutes) && minutes >= 0) {
      return this.snooze(minutes);
    }
    const entries = menuEntries(this.gateState(), undefined, Date.now()).filter((entry) => entry.action.kind === "snooze" || entry.action.kind === "unsnooze");
    const picked = await vscode.window.showQuickPick(entries, { title: "midline: snooze completions", placeHolder: `for ${SNOOZE_MINUTES.join(", ")} minutes` });
    if (picked !== undefined) {
      await this.run(picked);
    }
  }

  /** The status bar item's menu. */
  private async showMenu(): Promise<void> {
    const entries = menuEntries(this.gateState(), activeLanguage(), Date.now());
    const picked = await vscode.window.showQuickPick(entries, { title: "midline", placeHolder: this.statusItem.text.replace(/\$\([^)]*\)\s*/g, "") });
    if (picked !== undefined) {
      await this.run(picked);
    }
  }

  private async run(entry: MenuEntry): Promise<void> {
    const action = entry.action;
    switch (action.kind) {
      case "pause":
      case "resume":
        return this.setPaused(action.kind === "pause");
      case "snooze":
        return this.snooze(action.minutes);
      case "unsnooze":
        return this.snooze(0);
      case "language":
        return this.setLanguage(action.language, action.on);
      case "showStatus":
        return this.showStatus();
      case "showLog":
        return this.output.show(true);
      case "restart":
        return this.restart();
    }
  }

  private async toggleActiveLanguage(): Promise<void> {
    const language = activeLanguage();
    if (language === undefined) {
      void vscode.window.showInformationMessage("midline: open a file to turn completions on or off for its language.");
      return;
    }
    await this.setLanguage(language, this.suspended(language)?.kind === "language");
  }

  /** Turns completions on or off for a language in `midline.enable`, where that setting is set (the
   * workspace's, else the user's); the server gets the map with the other settings. */
  private async setLanguage(language: string, on: boolean): Promise<void> {
    const config = vscode.workspace.getConfiguration("midline");
    const inspected = config.inspect<Record<string, boolean>>("enable");
    const target = inspected?.workspaceValue !== undefined ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    const current = target === vscode.ConfigurationTarget.Workspace ? inspected?.workspaceValue : inspected?.globalValue;
    await config.update("enable", withLanguage(current ?? inspected?.defaultValue, language, on), target);
    if (!on) {
      await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
    }
    this.render();
    vscode.window.setStatusBarMessage(`midline: completions ${on ? "on" : "off"} for ${language}`, 2000);
  }

  async restart(): Promise<void> {
    await this.stopClient();
    await this.start();
  }

  private async stopClient(): Promise<void> {
    clearTimeout(this.pollTimer);
    const client = this.client;
    this.client = undefined;
    if (client !== undefined) {
      try {
        await client.stop(5000);
      } catch (error) {
        this.output.info(`stopping the server: ${messageOf(error)}`);
      }
    }
  }

  private onConfigurationChanged(event: vscode.ConfigurationChangeEvent): void {
    const affects = (section: string) => event.affectsConfiguration(section);
    if (affects("midline.enable")) {
      this.render();
    }
    if (needsRestart(affects)) {
      this.output.info("server command changed: restarting");
      void this.restart();
    } else if (affectsServer(this.specs, affects) && this.client?.isRunning()) {
      void this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: { midline: serverSettings(this.specs, reader()) } });
      this.schedulePoll(300);
    }
  }

  private async showStatus(): Promise<void> {
    const status = await this.refreshStatus();
    this.output.info(`status: ${JSON.stringify(status ?? { state: this.state, error: this.error }, null, 2)}`);
    this.output.show(true);
  }

  /** Runs the server's code action that `spec` names, at the selection (or the cursor's line). */
  private async runAction(spec: ActionSpec): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (editor === undefined) {
      void vscode.window.showInformationMessage(`midline: open a file to use "${spec.label}".`);
      return;
    }
    const selection = editor.selection;
    const range = selection.isEmpty ? editor.document.lineAt(selection.active.line).range : selection;
    const actions =
      (await vscode.commands.executeCommand<(vscode.CodeAction | vscode.Command)[]>("vscode.executeCodeActionProvider", editor.document.uri, range, spec.kind, 20)) ?? [];
    const index = pickAction(
      actions.map((action) => ({ title: action.title, kind: "kind" in action ? action.kind : undefined })),
      spec,
    );
    if (index < 0) {
      void vscode.window.showInformationMessage(`midline: no "${spec.label}" action here.`);
      return;
    }
    const action = actions[index];
    if ("edit" in action && action.edit !== undefined) {
      await vscode.workspace.applyEdit(action.edit);
    }
    const command = isCommand(action) ? action : (action as vscode.CodeAction).command;
    if (command !== undefined) {
      await vscode.commands.executeCommand(command.command, ...(command.arguments ?? []));
    }
  }

  /** Renders an explanation (Markdown) beside the editor; `midline.showExplanation` from a code action. */
  async showExplanation(markdown: unknown, title = "midline: explanation"): Promise<void> {
    const text = typeof markdown === "string" ? markdown : JSON.stringify(markdown, null, 2);
    let body: string | undefined;
    try {
      body = await vscode.commands.executeCommand<string>("markdown.api.render", text);
    } catch {
      body = undefined; // the built-in Markdown extension is disabled: show the source
    }
    if (this.explanation === undefined) {
      this.explanation = vscode.window.createWebviewPanel("midline.explanation", title, { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true }, { enableScripts: false });
      this.explanation.onDidDispose(() => (this.explanation = undefined));
    } else {
      this.explanation.title = title;
      this.explanation.reveal(vscode.ViewColumn.Beside, true);
    }
    this.explanation.webview.html = explanationHtml(text, typeof body === "string" ? body : undefined, this.explanation.webview.cspSource, title);
  }

  async dispose(): Promise<void> {
    clearTimeout(this.refreshSoon);
    this.explanation?.dispose();
    await this.stopClient();
  }
}

/** Tells the server this client renders explanations itself (`midline.showExplanation`); see server.py. */
const midlineCapabilities: StaticFeature = {
  fillClientCapabilities(capabilities) {
    const experimental = (capabilities.experimental ?? {}) as Record<string, unknown>;
    capabilities.experimental = { ...experimental, midline: { showExplanation: true } };
  },
  initialize() {},
  getState: () => ({ kind: "static" }),
  clear() {},
};

/** The active editor's language id (a notebook's cell too), if there is one. */
function activeLanguage(): string | undefined {
  return vscode.window.activeTextEditor?.document.languageId;
}

function reader(scope?: vscode.ConfigurationScope): (key: string) => unknown {
  const config = vscode.workspace.getConfiguration("midline", scope);
  return (key) => config.get(key);
}

function isCommand(action: vscode.CodeAction | vscode.Command): action is vscode.Command {
  return typeof (action as vscode.Command).command === "string";
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
