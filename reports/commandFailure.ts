/**
 * How the reports commands (`kvmprop export`, `merge`, `import`) end on a failure they expect — bad
 * arguments, a missing, unreadable or corrupt input — one clean line on stderr and exit status 2.
 * Anything else is a bug of ours and is thrown on.
 */
import { cleanLine } from './ktap.js';

type ErrorClass = abstract new (...args: never[]) => Error;

export function commandFailure(e: unknown, expected: readonly ErrorClass[]): number {
  const badArguments = (e as { code?: string } | null)?.code?.startsWith('ERR_PARSE_ARGS') === true;
  if (!badArguments && !expected.some((k) => e instanceof k)) throw e;
  process.stderr.write(`kvmprop: ${cleanLine((e as Error).message)}\n`);
  return 2;
}
