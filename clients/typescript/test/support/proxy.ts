// A TCP proxy in front of the test's Chronicle that plays the network's part: passing,
// refusing connections (offline), losing answers after the server acted on the request,
// or answering one 502 itself as a failing load balancer would.

import { createServer, connect, type Server, type Socket } from 'node:net';

export class FlakyProxy {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  /** Connections refused while true. */
  offline = false;
  /** This many next connections reach the server but get no answer. */
  loseAnswers = 0;
  /** This many next connections get a 502 from the proxy (the server never sees them). */
  badGateway = 0;
  port = 0;

  constructor(private readonly upstreamPort: number) {}

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((ok) => this.server?.listen(0, '127.0.0.1', ok));
    const address = this.server.address();
    this.port = address && typeof address === 'object' ? address.port : 0;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((ok) => (this.server ? this.server.close(() => ok()) : ok()));
  }

  /** From now on connections are refused (open ones are cut). */
  goOffline(): void {
    this.offline = true;
    this.cut();
  }

  goOnline(): void {
    this.offline = false;
  }

  /** The next `n` connections reach the server but lose its answer (open ones are cut, so
   * the client's next request opens one). */
  lose(n: number): void {
    this.loseAnswers = n;
    this.cut();
  }

  /** The next `n` connections get a 502 from the proxy (open ones are cut). */
  fail502(n: number): void {
    this.badGateway = n;
    this.cut();
  }

  /** Ends every open connection (a network change). */
  cut(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
  }

  private accept(client: Socket): void {
    this.track(client);
    if (this.offline) {
      client.destroy();
      return;
    }
    if (this.badGateway > 0) {
      this.badGateway -= 1;
      client.once('data', () => {
        client.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      });
      return;
    }
    const lose = this.loseAnswers > 0;
    if (lose) this.loseAnswers -= 1;
    const upstream = connect(this.upstreamPort, '127.0.0.1');
    this.track(upstream);
    client.pipe(upstream);
    if (lose) {
      // The server has acted and is answering: the answer never arrives.
      upstream.once('data', () => {
        upstream.destroy();
        client.destroy();
      });
    } else {
      upstream.pipe(client);
    }
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
  }
}
