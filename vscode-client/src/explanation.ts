/** The HTML page of the explanation webview: rendered Markdown under a strict content policy. */

export function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

/**
 * `body` is HTML rendered from Markdown by VS Code's own renderer (`markdown.api.render`), or, when
 * that is missing, undefined, and the Markdown is shown as escaped preformatted text. Scripts never run.
 */
export function explanationHtml(markdown: string, body: string | undefined, cspSource: string, title = "midline: explanation"): string {
  const content = body ?? `<pre>${escapeHtml(markdown)}</pre>`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src ${cspSource} https: data:; style-src ${cspSource} 'unsafe-inline';">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>${escapeHtml(title)}</title>
<style>
  body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); line-height: 1.5; padding: 0 1.5em; }
  pre, code { font-family: var(--vscode-editor-font-family); font-size: var(--vscode-editor-font-size); }
  pre { background: var(--vscode-textCodeBlock-background); padding: 0.75em; overflow-x: auto; white-space: pre-wrap; }
</style>
</head>
<body class="midline-explanation">
${content}
</body>
</html>`;
}
