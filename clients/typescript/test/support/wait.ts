// Waiting for something the server does in its own time: bounded in tries, never a timed assertion.

export const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** Calls `probe` until it returns a value other than undefined; fails after `tries`. */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, tries = 300): Promise<T> {
  let last: unknown;
  for (let i = 0; i < tries; i += 1) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    await sleep(50);
  }
  throw new Error(`never happened: ${what}${last ? ` (last error: ${String(last)})` : ''}`);
}

export function uniqueEmail(): string {
  return `ts-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`;
}

export const PASSWORD = 'correct horse battery';
