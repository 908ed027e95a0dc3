// Credentials: the access token, the refresh token and their rotation.
//
// A refresh token works once: `refresh()` trades it for a new pair, and concurrent callers
// share that one request (two requests with the same token would look like a reuse and
// revoke the whole session). A 401 from the refresh route (the token is dead, or was
// reused and the server revoked its family) signs the session out.

export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type?: string;
  expires_in: number;
}

/** Where a session keeps its refresh token between runs (memory unless given one). */
export interface TokenStore {
  load(): string | null;
  save(refreshToken: string | null): void;
}

export class MemoryTokenStore implements TokenStore {
  private token: string | null = null;
  load(): string | null {
    return this.token;
  }
  save(refreshToken: string | null): void {
    this.token = refreshToken;
  }
}

/** The refresh token is dead: the user has to sign in again. */
export class SignedOutError extends Error {
  constructor(readonly detail: string) {
    super(`signed out: ${detail}`);
    this.name = 'SignedOutError';
  }
}

export interface SessionOptions {
  baseUrl: string;
  store?: TokenStore;
  /** Called once when the session ends without `signOut()` (a dead or reused refresh token). */
  onSignedOut?: (reason: string) => void;
  fetch?: typeof fetch;
}

export class Session {
  private accessToken: string | null = null;
  private expiresAt = 0;
  private inFlight: Promise<string> | null = null;
  readonly store: TokenStore;
  /** How many refresh requests this session has sent (tests read it). */
  refreshes = 0;

  constructor(private readonly options: SessionOptions) {
    this.store = options.store ?? new MemoryTokenStore();
  }

  get signedIn(): boolean {
    return this.accessToken !== null || this.store.load() !== null;
  }

  /** The current access token, refreshed first when it has (almost) expired. */
  async token(): Promise<string | null> {
    if (this.accessToken && Date.now() < this.expiresAt - 30_000) return this.accessToken;
    if (this.store.load()) return this.refresh();
    return this.accessToken;
  }

  /** The access token as it is, without refreshing (for a socket URL built synchronously). */
  currentToken(): string | null {
    return this.accessToken;
  }

  /** Adopts a token pair from register, login or refresh. */
  adopt(pair: TokenPair): void {
    this.accessToken = pair.access_token;
    this.expiresAt = Date.now() + pair.expires_in * 1000;
    this.store.save(pair.refresh_token);
  }

  async login(email: string, password: string): Promise<unknown> {
    return this.start('/api/auth/login', { email, password });
  }

  async register(email: string, password: string, displayName?: string): Promise<unknown> {
    return this.start('/api/auth/register', { email, password, display_name: displayName });
  }

  private async start(path: string, body: object): Promise<unknown> {
    const response = await this.post(path, body);
    const answer = await response.json();
    if (!response.ok) throw new Error(`${path}: ${response.status} ${answer.detail ?? answer.title}`);
    this.adopt(answer as TokenPair);
    return answer.user;
  }

  /** Trades the refresh token for a new pair; one request at a time, shared by all callers. */
  refresh(): Promise<string> {
    if (!this.inFlight) {
      this.inFlight = this.rotate().finally(() => {
        this.inFlight = null;
      });
    }
    return this.inFlight;
  }

  private async rotate(): Promise<string> {
    const refreshToken = this.store.load();
    if (!refreshToken) throw new SignedOutError('no refresh token');
    this.refreshes += 1;
    const response = await this.post('/api/auth/refresh', { refresh_token: refreshToken });
    if (response.status === 401) {
      const problem = await response.json().catch(() => ({}));
      const reason = String(problem.detail ?? 'the refresh token is not valid');
      this.end();
      this.options.onSignedOut?.(reason);
      throw new SignedOutError(reason);
    }
    if (!response.ok) throw new Error(`refresh: HTTP ${response.status}`);
    const pair = (await response.json()) as TokenPair;
    this.adopt(pair);
    return pair.access_token;
  }

  async signOut(): Promise<void> {
    const refreshToken = this.store.load();
    this.end();
    if (refreshToken) await this.post('/api/auth/logout', { refresh_token: refreshToken }).catch(() => undefined);
  }

  private end(): void {
    this.accessToken = null;
    this.expiresAt = 0;
    this.store.save(null);
  }

  private post(path: string, body: object): Promise<Response> {
    const doFetch = this.options.fetch ?? fetch;
    return doFetch(new URL(path, this.options.baseUrl), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
    });
  }
}
