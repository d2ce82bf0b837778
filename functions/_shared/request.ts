// What a request has done so far, for the figures that judge it: how many database statements
// it ran (query() counts them). A read answered with none is a cache hit, by definition.
import { AsyncLocalStorage } from "node:async_hooks";

interface Scope {
  statements: number;
}

const scope = new AsyncLocalStorage<Scope>();

/** Runs a request's handler in its own scope (serveJson does). */
export function inRequest<T>(fn: () => Promise<T>): Promise<T> {
  return scope.run({ statements: 0 }, fn);
}

/** Outside any request: work started by a request that is not its own (a reconciliation). */
export function outsideRequest<T>(fn: () => T): T {
  return scope.exit(fn);
}

export function countStatement(): void {
  const s = scope.getStore();
  if (s) s.statements++;
}

/** Statements this request has run (0 outside a request). */
export function statementsSoFar(): number {
  return scope.getStore()?.statements ?? 0;
}
