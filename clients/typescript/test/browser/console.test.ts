// The web console in Debian's Chromium (playwright-core) against a real Chronicle: sign in,
// a task appears live when created through the API, a waiting approval step is approved,
// plots render with data, the other pages load; keyboard, labels and contrast are checked;
// any console error or failed page script fails the test. Screenshots go to artifacts/.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startChronicle, ROOT, type RunningServer } from '../support/server.js';
import { PASSWORD, uniqueEmail } from '../support/wait.js';

const ARTIFACTS = resolve(ROOT, 'clients/typescript/artifacts');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** How long the page may take to show something the server did (generous on a busy 2-core box). */
const SHOWS_WITHIN = 20_000;

let server: RunningServer;
/** Where the page is loaded from: the server itself. */
let origin: string;
let browser: Browser;
let page: Page;
let token: string;
const email = uniqueEmail();
const problems: string[] = [];

async function call(method: string, path: string, body?: unknown): Promise<any> {
  const response = await fetch(`${server.baseUrl}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startChronicle();
  origin = server.baseUrl;
  const registered = await fetch(`${server.baseUrl}/api/auth/register`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email, password: PASSWORD }),
  });
  assert.equal(registered.status, 201);
  token = (await registered.json()).access_token;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(SHOWS_WITHIN);
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
});

after(async () => {
  await browser?.close();
  await server?.stop();
  assert.deepEqual(problems, [], 'no console errors');
});

/** Every visible text whose contrast with its background is under 4.5:1 (WCAG AA), run in the page. */
function lowContrast(): string[] {
  const channel = (c: number) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  const parse = (colour: string) => (colour.match(/[\d.]+/g) ?? []).map(Number);
  const luminance = ([r = 0, g = 0, b = 0]: number[]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const background = (element: Element | null): number[] => {
    for (let e = element; e; e = e.parentElement) {
      const [r, g, b, a = 1] = parse(getComputedStyle(e).backgroundColor);
      if (a > 0.5) return [r!, g!, b!];
    }
    return [255, 255, 255];
  };
  const found: string[] = [];
  for (const element of document.querySelectorAll('body *')) {
    const own = [...element.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent?.trim());
    if (!own || !(element as HTMLElement).offsetParent) continue;
    const fg = luminance(parse(getComputedStyle(element).color));
    const bg = luminance(background(element));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    if (ratio < 4.5) found.push(`${element.tagName}.${element.className} "${element.textContent?.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
  }
  return found;
}

describe('the web console', () => {
  it('is served with a strict CSP and signs in with a labelled form', async () => {
    const response = await page.goto(origin);
    assert.ok(response);
    const csp = response.headers()['content-security-policy'] ?? '';
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe/);
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill(PASSWORD);
    await shot('01-sign-in');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Tasks' }).waitFor();
    await page.getByText(email).waitFor();
  });

  it('shows a task live when it is created through the API', async () => {
    // Subscribed: from here on every new task is pushed to the page.
    await page.locator('#task-list[data-live="on"] table').waitFor({ timeout: SHOWS_WITHIN });
    const task = await call('POST', '/api/tasks', { capability: 'browser.open', input: { url: 'https://example.com' }, tags: ['live'] });
    const row = page.locator(`tr[data-task-id="${task.id}"]`);
    await row.waitFor({ timeout: SHOWS_WITHIN });
    assert.match(await row.innerText(), /browser\.open/);
    assert.match(await row.innerText(), /queued/);
    await shot('02-task-live');
    // Its detail: the history, its hash chain, and cancel.
    await row.getByRole('link').click();
    await page.getByText('Hash chain intact').waitFor();
    await page.getByText(/The server recomputed \d+ hashes from the store: all match/).waitFor();
    assert.ok(await page.locator('table').filter({ hasText: 'Event history' }).locator('tbody tr').count() >= 1);
    await page.getByRole('button', { name: 'Cancel' }).click();
    await page.locator('.badge', { hasText: 'cancelled' }).first().waitFor({ timeout: SHOWS_WITHIN });
    await page.getByRole('button', { name: 'Retry' }).waitFor();
    await shot('03-task-detail');
  });

  it('approves a waiting approval step and draws the DAG', async () => {
    const workflow = await call('POST', '/api/workflows', {
      name: 'release',
      steps: [
        { id: 'ask', approval: { prompt: 'Ship it?' } },
        { id: 'confirm', approval: { prompt: 'Really?' }, depends_on: ['ask'] },
      ],
    });
    const run = await call('POST', `/api/workflows/${workflow.id}/execute`, { params: {} });
    await page.goto(`${origin}/#/runs/${run.id}`);
    const ask = page.locator('svg.dag g[data-step="ask"]');
    await page.locator('svg.dag g[data-step="ask"][data-status="waiting_approval"]').waitFor({ timeout: SHOWS_WITHIN });
    await shot('04-run-waiting');
    await page.getByRole('button', { name: 'Approve ask' }).click();
    await page.locator('svg.dag g[data-step="ask"][data-status="succeeded"]').waitFor({ timeout: SHOWS_WITHIN });
    await page.locator('svg.dag g[data-step="confirm"][data-status="waiting_approval"]').waitFor({ timeout: SHOWS_WITHIN });
    assert.equal(await ask.getAttribute('data-status'), 'succeeded');
    const state = await call('GET', `/api/workflow-runs/${run.id}`);
    assert.equal(state.steps.ask.status, 'succeeded');
    await page.getByRole('button', { name: 'Reject confirm' }).click();
    await page.locator('svg.dag g[data-step="confirm"][data-status="failed"]').waitFor({ timeout: SHOWS_WITHIN });
    await shot('05-run-decided');
    // The workflow's page lists the run.
    await page.goto(`${origin}/#/workflows/${workflow.id}`);
    await page.locator(`a[href="#/runs/${run.id}"]`).waitFor();
  });

  it('plots tasks and tokens per day and p95 per capability', async () => {
    // One task that ran: an agent leases it over HTTP and reports it done.
    const agent = await call('POST', '/api/agents/register', { name: 'reader', kind: 'remote', capabilities: ['browser.read'] });
    const task = await call('POST', '/api/tasks', { capability: 'browser.read', input: {} });
    const { tasks } = await call('POST', `/api/agents/${agent.id}/lease`, { max_tasks: 1, wait_secs: 5 });
    assert.equal(tasks[0]?.id, task.id);
    await call('PATCH', `/api/tasks/${task.id}`, { status: 'succeeded', lease_id: tasks[0].lease_id, output: { ok: true } });
    // The usage read model catches up in its own time.
    for (let tries = 0; ; tries += 1) {
      const { rows } = await call('GET', '/api/analytics/usage?group_by=capability');
      const read = rows.find((row: { bucket: string }) => row.bucket === 'browser.read');
      if (read?.succeeded >= 1 && read.p95_duration_ms !== null) break;
      assert.ok(tries < 200, 'the usage view shows the finished task');
      await new Promise((ok) => setTimeout(ok, 50));
    }
    await page.goto(`${origin}/#/usage`);
    const plot = page.locator('figure[data-plot="Tasks per day"]');
    await plot.locator('canvas').waitFor({ timeout: SHOWS_WITHIN });
    assert.ok(Number(await plot.getAttribute('data-points')) >= 1, 'a day with data');
    await page.locator('figure[data-plot="Tokens per day"] canvas').waitFor();
    await page.locator('figure[data-plot^="p95 duration"] canvas').waitFor();
    // Something was drawn: the canvas has pixels that are not blank.
    const inked = await plot.locator('canvas').evaluate((canvas: HTMLCanvasElement) => {
      const context = canvas.getContext('2d');
      if (!context) return 0;
      const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
      let count = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i]! > 0) count += 1;
      return count;
    });
    assert.ok(inked > 100, `the plot drew ${inked} pixels`);
    const p95 = page.locator('table', { hasText: 'Per capability' }).locator('tr', { hasText: 'browser.read' });
    assert.doesNotMatch(await p95.innerText(), /—/, 'a p95 duration for the capability that ran');
    await shot('06-usage');
  });

  it('shows agents, search (unavailable), and the projections with a rebuild button', async () => {
    await call('POST', '/api/agents/register', { name: 'scraper', kind: 'remote', capabilities: ['browser.open'] });
    await page.goto(`${origin}/#/agents`);
    await page.getByRole('cell', { name: 'scraper' }).waitFor();
    await page.goto(`${origin}/#/search`);
    const { paths } = await call('GET', '/api/openapi.json');
    if (paths['/api/search']) {
      await page.getByLabel('Search for').fill('example');
      await page.getByRole('button', { name: 'Search' }).click();
      await page.locator('main').getByText(/Nothing found|Results/).first().waitFor();
    } else {
      await page.getByText('Search is not available on this server.').waitFor();
    }
    await page.goto(`${origin}/#/admin`);
    await page.getByRole('heading', { name: 'Projections' }).waitFor();
    const rebuild = page.getByRole('button', { name: /^Rebuild / }).first();
    await rebuild.waitFor();
    await shot('07-admin');
  });

  it('can be used from the keyboard, labels every field and keeps text contrast at 4.5:1', async () => {
    // A fresh load (the session resumes from this tab's refresh token): Tab starts at the top.
    await page.goto(`${origin}/#/tasks`);
    await page.reload();
    await page.getByRole('heading', { name: 'Tasks' }).waitFor();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Skip to content');
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'main', 'the skip link moves focus to the content');
    assert.match(page.url(), /#\/tasks$/);
    await page.locator('a.skip').focus();
    const reached = new Set<string>();
    for (let i = 0; i < 12; i += 1) {
      await page.keyboard.press('Tab');
      reached.add(await page.evaluate(() => document.activeElement?.textContent?.trim() ?? ''));
    }
    for (const name of ['Tasks', 'Agents', 'Workflows', 'Search', 'Usage', 'Admin', 'Sign out']) {
      assert.ok(reached.has(name), `Tab reaches ${name}: ${[...reached].join(', ')}`);
    }
    // Enter on a focused link navigates.
    await page.locator('#nav a[href="#/agents"]').focus();
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Agents' }).waitFor();
    for (const route of ['#/tasks', '#/agents', '#/usage']) {
      await page.goto(`${origin}/${route}`);
      await page.locator('main h1').waitFor();
      const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
        .filter((field) => !(field as HTMLInputElement).labels?.length && !field.getAttribute('aria-label'))
        .map((field) => field.outerHTML));
      assert.deepEqual(unlabelled, [], `every field on ${route} has a label`);
    }
    for (const route of ['#/tasks', '#/usage', '#/admin', '#/workflows']) {
      await page.goto(`${origin}/${route}`);
      await page.locator('main h1').waitFor();
      await page.locator('main table, main figure').first().waitFor();
      assert.deepEqual(await page.evaluate(lowContrast), [], `text contrast on ${route}`);
    }
  });
});
