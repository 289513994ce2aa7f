#!/usr/bin/env node
// Entry point. The code is TypeScript compiled to dist/ by `npm install` (prepare) or `npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('georm: not built yet; run `npm install` (or `npm run build`) in the georm directory\n');
  process.exit(1);
}
const { run } = await import(main.href);
process.exitCode = await run(process.argv);
