#!/usr/bin/env node
// The kvmprop CLI: a plain-JavaScript entry (what `npx kvmprop` runs) that loads the TypeScript
// sources through tsx, so no separate build step stands between `npm ci` and a run.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
