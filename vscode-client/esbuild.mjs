// Builds the extension (dist/extension.js) and, with --tests, the unit tests (out/test/*.test.js).
import { readdirSync } from "node:fs";
import * as esbuild from "esbuild";

const args = new Set(process.argv.slice(2));
const production = args.has("--production");

const common = { bundle: true, platform: "node", format: "cjs", target: "node20", logLevel: "warning" };

if (args.has("--tests")) {
  const tests = readdirSync("test").filter((name) => name.endsWith(".test.ts")).map((name) => `test/${name}`);
  await esbuild.build({ ...common, entryPoints: tests, outdir: "out/test", sourcemap: "inline", external: ["vscode"] });
} else {
  const options = {
    ...common,
    entryPoints: ["src/extension.ts"],
    outfile: "dist/extension.js",
    external: ["vscode"],
    minify: production,
    sourcemap: !production,
    sourcesContent: false,
  };
  if (args.has("--watch")) {
    const context = await esbuild.context(options);
    await context.watch();
  } else {
    await esbuild.build(options);
  }
}
