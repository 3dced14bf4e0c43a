import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { pathToFileURL } from "node:url";

// What the Marketplace and Open VSX need in the manifest, and keybindings that name real commands.
const ROOT = path.join(__dirname, "..", "..");
const manifest = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8"));
const source = readFileSync(path.join(ROOT, "src", "extension.ts"), "utf8");

/** VS Code's inline-suggestion commands the keybindings use (code-server 4.139's workbench has each). */
const VSCODE_COMMANDS = [
  "editor.action.inlineSuggest.trigger",
  "editor.action.inlineSuggest.showNext",
  "editor.action.inlineSuggest.showPrevious",
  "editor.action.inlineSuggest.acceptNextLine",
];

describe("manifest", () => {
  test("publishing fields: icon, repository, bugs, homepage, licence, banner", () => {
    assert.equal(manifest.license, "Apache-2.0");
    assert.match(manifest.repository.url, /^https:\/\/github\.com\/.+\.git$/);
    assert.match(manifest.bugs.url, /^https:\/\//);
    assert.match(manifest.homepage, /^https:\/\//);
    assert.ok(manifest.galleryBanner.color && manifest.galleryBanner.theme);
    const icon = readFileSync(path.join(ROOT, manifest.icon));
    assert.equal(icon.subarray(1, 4).toString("latin1"), "PNG", "the Marketplace takes no SVG icon");
    assert.deepEqual([icon.readUInt32BE(16), icon.readUInt32BE(20)], [128, 128]);
  });

  test("the icon is what media/make-icon.mjs draws", async () => {
    const { drawIcon, encodePng } = await import(pathToFileURL(path.join(ROOT, "media", "make-icon.mjs")).href);
    assert.ok(encodePng(drawIcon()).equals(readFileSync(path.join(ROOT, manifest.icon))), "run `node media/make-icon.mjs`");
  });

  test("the packaged files: the bundle, manifest, README, CHANGELOG, LICENSE, icon", () => {
    const ignore = readFileSync(path.join(ROOT, ".vscodeignore"), "utf8").split("\n");
    for (const file of ["dist/extension.js", "package.json", "README.md", "CHANGELOG.md", "LICENSE", manifest.icon]) {
      assert.ok(ignore.includes(`!${file}`), file);
      assert.ok(file.startsWith("dist/") || existsSync(path.join(ROOT, file)), file);
    }
  });

  const repositoryLicense = path.join(ROOT, "..", "LICENSE");
  test("LICENSE is the repository's", { skip: existsSync(repositoryLicense) ? false : "no LICENSE at the repository root" }, () => {
    assert.equal(readFileSync(path.join(ROOT, "LICENSE"), "utf8"), readFileSync(repositoryLicense, "utf8"));
  });

  test("every keybinding runs a declared midline command or one of VS Code's inline-suggestion commands", () => {
    const declared: string[] = manifest.contributes.commands.map((command: { command: string }) => command.command);
    const keys: { command: string; key: string }[] = manifest.contributes.keybindings;
    assert.ok(keys.length >= 5);
    for (const { command } of keys) {
      assert.ok(declared.includes(command) || VSCODE_COMMANDS.includes(command), command);
    }
    assert.equal(new Set(keys.map((binding) => binding.key)).size, keys.length, "a key bound twice");
  });

  test("every declared command is registered by the extension", () => {
    for (const { command } of manifest.contributes.commands as { command: string }[]) {
      const literal = source.includes(`registerCommand("${command}"`);
      const fromActions = command.startsWith("midline.") && /ACTIONS\.map\(\(spec\) => vscode\.commands\.registerCommand\(spec\.command/.test(source);
      assert.ok(literal || fromActions, command);
    }
  });
});
