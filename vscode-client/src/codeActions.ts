/**
 * midline's code-action commands (Explain, Fix, Generate tests, Code from comment): each asks VS Code
 * for the code actions at the selection and runs midline's matching one. Pure: matching only.
 */

export type ActionName = "explain" | "fix" | "generateTests" | "codeFromComment";

export interface ActionSpec {
  name: ActionName;
  command: string;
  label: string;
  /** The server's code action kind (server/actions.py ACTIONS); VS Code is asked for this kind only. */
  kind: string;
  /** Matches a code action's kind (any dot-separated segment) or its title. */
  pattern: RegExp;
}

export const ACTIONS: readonly ActionSpec[] = [
  { name: "explain", command: "midline.explain", label: "Explain", kind: "refactor.midline.explain", pattern: /explain/i },
  { name: "fix", command: "midline.fix", label: "Fix", kind: "quickfix.midline.fix", pattern: /^quickfix\b|\bfix\b/i },
  { name: "generateTests", command: "midline.generateTests", label: "Generate tests", kind: "refactor.midline.tests", pattern: /tests?\b/i },
  { name: "codeFromComment", command: "midline.codeFromComment", label: "Code from comment", kind: "refactor.midline.fromComment", pattern: /comment/i },
];

export interface ActionLike {
  title: string;
  kind?: { value: string } | string;
}

function kindOf(action: ActionLike): string {
  return typeof action.kind === "string" ? action.kind : (action.kind?.value ?? "");
}

/**
 * The index of the action that `spec` means among `actions` (from all providers), or -1: the one of
 * `spec.kind` first, then midline's own (a `midline` kind segment or title), then any that matches.
 */
export function pickAction(actions: readonly ActionLike[], spec: ActionSpec): number {
  const exact = actions.findIndex((action) => kindOf(action) === spec.kind);
  if (exact >= 0) {
    return exact;
  }
  let fallback = -1;
  for (let i = 0; i < actions.length; i++) {
    const kind = kindOf(actions[i]);
    const title = actions[i].title;
    const matches = kind.split(".").some((segment) => spec.pattern.test(segment)) || spec.pattern.test(kind) || spec.pattern.test(title);
    if (!matches) {
      continue;
    }
    if (/midline/i.test(kind) || /midline/i.test(title)) {
      return i;
    }
    if (fallback < 0) {
      fallback = i;
    }
  }
  return fallback;
}
