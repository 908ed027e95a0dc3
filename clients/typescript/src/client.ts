// The typed client: openapi-fetch over the generated `paths`, through the resilient fetch.

import createClient, { type Client } from 'openapi-fetch';
import type { paths, components } from './generated/schema.js';
import { Session, type SessionOptions } from './session.js';
import { resilientFetch, type RetryPolicy } from './transport.js';

export type Schemas = components['schemas'];
export type ApiClient = Client<paths>;

export interface ChronicleOptions extends Omit<SessionOptions, 'baseUrl'> {
  baseUrl: string;
  retry?: RetryPolicy;
}

export interface Chronicle {
  api: ApiClient;
  session: Session;
  baseUrl: string;
  /** The fetch `api` uses, for requests the generated types do not cover. */
  fetch: (input: Request) => Promise<Response>;
}

export function createChronicle(options: ChronicleOptions): Chronicle {
  const session = new Session(options);
  const transport = resilientFetch({ session, retry: options.retry, fetch: options.fetch });
  const api = createClient<paths>({ baseUrl: options.baseUrl, fetch: transport });
  return { api, session, baseUrl: options.baseUrl, fetch: transport };
}
