// The live subscription socket (`/api/ws`): topics, resume after the last position, and
// reconnection with back-off. One socket per page; pages add and drop listeners.

import { api } from './api.js';

export class Live {
  constructor() {
    this.socket = null;
    this.topics = new Set();
    this.after = null;
    this.listeners = new Set();
    this.subscribedListeners = new Set();
    this.confirmed = new Set();
    this.backoff = 500;
    this.closed = true;
    this.timer = null;
  }

  /** `listener(event, topic)` for each event; returns the function that removes it. */
  listen(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** `listener()` each time the server confirms a subscription (after a reconnect too):
   * what happened before it may have been missed, so a page reads its list again. */
  onSubscribed(listener) {
    this.subscribedListeners.add(listener);
    return () => this.subscribedListeners.delete(listener);
  }

  /** Has the server confirmed `topic` on the open socket? */
  isSubscribed(topic) {
    return this.confirmed.has(topic);
  }

  subscribe(...topics) {
    const fresh = topics.filter((topic) => !this.topics.has(topic));
    for (const topic of fresh) this.topics.add(topic);
    if (this.socket && this.socket.readyState === WebSocket.OPEN && fresh.length) {
      this.socket.send(JSON.stringify({ type: 'subscribe', topics: fresh }));
    }
    this.open();
  }

  unsubscribe(...topics) {
    for (const topic of topics) this.topics.delete(topic);
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: 'unsubscribe', topics }));
    }
  }

  open() {
    if (!this.closed || !api.signedIn) return;
    this.closed = false;
    this.connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.topics.clear();
    this.confirmed.clear();
    this.after = null;
    if (this.socket) this.socket.close(1000);
    this.socket = null;
  }

  connect() {
    const url = new URL('/api/ws', location.origin);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.searchParams.set('access_token', api.accessToken || '');
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.addEventListener('open', () => {
      this.backoff = 500;
      if (this.topics.size) {
        const message = { type: 'subscribe', topics: [...this.topics] };
        if (this.after !== null) message.after = this.after;
        socket.send(JSON.stringify(message));
      }
    });
    socket.addEventListener('message', (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      if (data.type === 'subscribed') {
        if (this.after === null && data.after > 0) this.after = data.after;
        this.confirmed = new Set(data.topics || []);
        for (const listener of this.subscribedListeners) listener();
      }
      if (data.type !== 'event') return;
      this.after = data.event.position;
      for (const listener of this.listeners) listener(data.event, data.topic);
    });
    socket.addEventListener('close', (close) => {
      if (this.socket !== socket || this.closed) return;
      this.socket = null;
      this.confirmed.clear();
      // 4401: the access token ended; refresh before the next try.
      const ready = close.code === 4401 ? api.refresh().catch(() => {}) : Promise.resolve();
      const wait = this.backoff;
      this.backoff = Math.min(this.backoff * 2, 15000);
      this.timer = setTimeout(() => ready.then(() => { if (!this.closed && api.signedIn) this.connect(); }), wait);
    });
  }
}

export const live = new Live();
