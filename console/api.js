// The console's client of the API: the same routes and credentials as any other client.
//
// Where the tokens live: the access token (15 min) only in memory, so no script of another
// page and nothing on disk ever holds it; the refresh token in sessionStorage, so a reload
// of this tab stays signed in while closing the tab ends the session and other tabs never
// share (and so never race to rotate) it. Every write carries an Idempotency-Key.

const REFRESH_KEY = 'chronicle.refresh_token';

/** An answer that was not 2xx: its status and problem document. */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export class Api {
  constructor() {
    this.accessToken = null;
    this.user = null;
    this.refreshing = null;
    this.refreshTimer = null;
    this.listeners = new Set();
  }

  /** `listener(user|null)` on every sign-in and sign-out. */
  onSession(listener) {
    this.listeners.add(listener);
  }

  get signedIn() {
    return this.accessToken !== null;
  }

  isAdmin() {
    return Boolean(this.user && (this.user.roles || []).includes('admin'));
  }

  /** Resumes the session of this tab, if it has a refresh token. */
  async resume() {
    if (!sessionStorage.getItem(REFRESH_KEY)) return false;
    try {
      await this.refresh();
      this.user = await this.get('/api/users/me');
      this.announce();
      return true;
    } catch {
      this.forget();
      return false;
    }
  }

  async signIn(email, password) {
    await this.start('/api/auth/login', { email, password });
  }

  async register(email, password) {
    await this.start('/api/auth/register', { email, password });
  }

  async start(path, body) {
    const answer = await this.send('POST', path, { body, auth: false });
    this.keep(answer);
    this.user = answer.user;
    this.announce();
  }

  async signOut() {
    const refreshToken = sessionStorage.getItem(REFRESH_KEY);
    if (refreshToken) {
      try {
        await this.send('POST', '/api/auth/logout', { body: { refresh_token: refreshToken }, auth: false });
      } catch {
        // Signed out here either way.
      }
    }
    this.forget();
    this.announce();
  }

  /** Rotates the refresh token; concurrent callers share one request. */
  refresh() {
    if (!this.refreshing) {
      this.refreshing = (async () => {
        const refreshToken = sessionStorage.getItem(REFRESH_KEY);
        if (!refreshToken) throw new ApiError(401, { title: 'Unauthorized', detail: 'signed out' });
        try {
          this.keep(await this.send('POST', '/api/auth/refresh', { body: { refresh_token: refreshToken }, auth: false }));
        } catch (error) {
          // A dead or reused refresh token: the session is over (a reuse revoked it).
          if (error instanceof ApiError && error.status === 401) {
            this.forget();
            this.announce();
          }
          throw error;
        }
      })().finally(() => { this.refreshing = null; });
    }
    return this.refreshing;
  }

  keep(pair) {
    this.accessToken = pair.access_token;
    sessionStorage.setItem(REFRESH_KEY, pair.refresh_token);
    clearTimeout(this.refreshTimer);
    const inMs = Math.max(10, (pair.expires_in || 900) - 60) * 1000;
    this.refreshTimer = setTimeout(() => { this.refresh().catch(() => {}); }, inMs);
  }

  forget() {
    this.accessToken = null;
    this.user = null;
    clearTimeout(this.refreshTimer);
    sessionStorage.removeItem(REFRESH_KEY);
  }

  announce() {
    for (const listener of this.listeners) listener(this.user);
  }

  get(path, query) {
    return this.send('GET', path, { query });
  }

  post(path, body) {
    return this.send('POST', path, { body });
  }

  delete(path) {
    return this.send('DELETE', path, {});
  }

  /** One request; a 401 with credentials refreshes once and tries again. */
  async send(method, path, { body, query, auth = true } = {}) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, String(value));
    }
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (method !== 'GET') headers['Idempotency-Key'] = crypto.randomUUID();
    const attempt = () => {
      if (auth && this.accessToken) headers.Authorization = `Bearer ${this.accessToken}`;
      return fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    };
    let response = await attempt();
    if (response.status === 401 && auth && sessionStorage.getItem(REFRESH_KEY)) {
      await this.refresh();
      response = await attempt();
    }
    if (response.status === 204) return null;
    const type = response.headers.get('content-type') || '';
    const data = type.includes('json') ? await response.json() : await response.text();
    if (!response.ok) throw new ApiError(response.status, typeof data === 'object' ? data : { title: data });
    return data;
  }
}

export const api = new Api();
