// Drives <audit-log-viewer> in headless Chromium against a running audit-service.
//
//   node tests/console/viewer.test.mjs --base http://127.0.0.1:8080 [--token CRED]
//     [--chromium /usr/bin/chromium] [--screenshots DIR] [--page URL]
//     [--embed-port N | --embed-base http://127.0.0.1:N] [--script URL]
//
// --base        the server; the test seeds events at {base}/graphql and opens {base}/console.
// --token       a credential with audit:read and audit:write: the test signs in with it
//               through the form (and seeds with it).
// --page        the page to open instead of {base}/console (a host page of your own).
// --embed-port  also serves, on this port, a page of another origin that embeds the viewer
//               from --script (default {base}/console/audit-log-viewer.js); the server must
//               allow that origin (--cors-origins http://127.0.0.1:N). --embed-base gives
//               the whole origin instead.
// --screenshots where the PNGs of each state go (default target/console-screenshots).
//
// Prints one line per step with what it measured, then "N passed, N failed"; exits 1 on the
// first failed step (later steps build on earlier ones), after 120 s at the latest.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    base: { type: 'string' },
    token: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    screenshots: { type: 'string', default: 'target/console-screenshots' },
    page: { type: 'string' },
    'embed-base': { type: 'string' },
    'embed-port': { type: 'string' },
    script: { type: 'string' },
  },
});
if (!args.base) {
  console.error('usage: node viewer.test.mjs --base http://127.0.0.1:8080 [--token CRED] [--page URL] [--embed-port N] [--screenshots DIR]');
  process.exit(2);
}
const base = args.base.replace(/\/$/, '');
const pageUrl = args.page ?? `${base}/console`;
const scriptUrl = args.script ?? `${base}/console/audit-log-viewer.js`;
const embedOrigin = args['embed-base'] ?? (args['embed-port'] ? `http://127.0.0.1:${args['embed-port']}` : null);
const shots = resolve(args.screenshots);
mkdirSync(shots, { recursive: true });
const TIMEOUT_MS = 120_000;
const WAIT_MS = 5_000;

// ---- The server, directly -----------------------------------------------------------------

async function gql(query, variables) {
  const response = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(args.token && { authorization: `Bearer ${args.token}` }) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) throw new Error(`${query.slice(0, 60)}…: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/** Ids of the first `pages` pages the server returns for `filter`, newest first. */
async function serverIds(filter, pages = 1) {
  const ids = [];
  let after = null;
  for (let page = 0; page < pages; page++) {
    const { auditLogs } = await gql(
      'query($filter: AuditLogFilter, $after: String) { auditLogs(filter: $filter, first: 50, after: $after) { edges { node { id } } pageInfo { hasNextPage endCursor } } }',
      { filter, after },
    );
    ids.push(...auditLogs.edges.map((edge) => edge.node.id));
    if (!auditLogs.pageInfo.hasNextPage) break;
    after = auditLogs.pageInfo.endCursor;
  }
  return ids;
}

async function totalCount(filter) {
  return (await gql('query($filter: AuditLogFilter) { auditLogs(filter: $filter, first: 0) { totalCount } }', { filter })).auditLogs.totalCount;
}

const LOG = 'mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }';

// This run's events: two actors of their own, so every filtered assertion is exact even on
// a server that holds other events.
const run = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const actors = [`ann-${run}`, `billing-${run}`];
const ACTIONS = ['project.created', 'project.deleted', 'role.assigned', 'user.login'];
const OUTCOMES = ['SUCCESS', 'FAILURE', 'DENIED'];
const liveInput = () => ({
  actor: { type: 'USER', id: actors[0], name: 'Ann' }, action: 'project.created', outcome: 'DENIED',
  target: { type: 'project', id: 'p-live' }, metadata: { run, live: true },
});

async function seed(count) {
  const now = Date.now();
  const inputs = Array.from({ length: count }, (_, i) => ({
    actor: i % 2 ? { type: 'USER', id: actors[0], name: 'Ann' } : { type: 'SERVICE', id: actors[1] },
    action: ACTIONS[i % 4],
    target: { type: 'project', id: `p-${i % 5}`, name: `Project ${i % 5}` },
    outcome: OUTCOMES[i % 3],
    reason: i % 3 ? 'seeded refusal' : null,
    // One an hour back from now, so the chart has several days and [0] is the newest.
    occurredAt: new Date(now - i * 3_600_000 - 1000).toISOString(),
    metadata: { run, i, env: i % 2 ? 'prod' : 'dev' },
    context: { ipAddress: '203.0.113.7', userAgent: 'viewer.test', requestId: `${run}-${i}` },
  }));
  const { logAuditEvents } = await gql('mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }', { inputs });
  return logAuditEvents.map((event) => event.id);
}

// ---- The page ---------------------------------------------------------------------------

const VIEWER = 'audit-log-viewer';
const $ = (page, testid) => page.locator(`${VIEWER} [data-testid="${testid}"]`);

/** The table's rows as the element shows them. */
function tableRows(page) {
  return page.evaluate((selector) => [...document.querySelector(selector).shadowRoot.querySelectorAll('tr[data-testid=row]')].map((row) => ({
    id: row.dataset.id,
    action: row.querySelector('[data-testid=action]').textContent.trim(),
    outcome: row.querySelector('[data-testid=outcome]').textContent.trim(),
    occurredAt: row.querySelector('time').getAttribute('datetime'),
    fresh: row.classList.contains('fresh'),
  })), VIEWER);
}

/** Polls `probe` until it returns something truthy, or returns its last value after `ms`. */
async function until(probe, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value || Date.now() > deadline) return value;
    await new Promise((done) => setTimeout(done, 50));
  }
}

/** Waits for the table to show exactly `expected` (ids, in order), then asserts it. */
async function expectIds(page, expected, what) {
  const ids = async () => (await tableRows(page)).map((row) => row.id);
  await until(async () => JSON.stringify(await ids()) === JSON.stringify(expected));
  assert.deepEqual(await ids(), expected, `${what}: the table's ids differ from the server's`);
}

const activeRowId = (page) => page.evaluate((selector) => document.querySelector(selector).shadowRoot.activeElement?.dataset.id ?? null, VIEWER);

// ---- Steps ------------------------------------------------------------------------------

let passed = 0;
function ok(step, measured) {
  passed++;
  console.log(`ok ${passed} - ${step}: ${measured}`);
}

async function main(browser) {
  const seeded = await seed(120);
  const viewer = (await gql('{ auditViewer { subject tenantId scopes open } }')).auditViewer;
  ok('seed', `120 events by ${actors.join(', ')} in tenant ${viewer.tenantId}`);

  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  await page.addInitScript(() => addEventListener('audit-log-viewer:rendered', (event) => (window.rendered = event.detail)));
  await page.goto(pageUrl);

  if (args.token) {
    await $(page, 'signin').waitFor({ timeout: WAIT_MS });
    assert.equal(await $(page, 'row').count(), 0, 'rows are shown before signing in');
    await page.screenshot({ path: join(shots, '06-signin.png') });
    await $(page, 'signin-credential').fill(args.token);
    await $(page, 'signin-submit').click();
    await $(page, 'tenant').waitFor({ timeout: WAIT_MS });
    assert.equal(await $(page, 'tenant').textContent(), viewer.tenantId, 'the header shows another tenant');
    const stored = await page.evaluate((token) => ({ session: Object.values(sessionStorage).includes(token), local: localStorage.length }), args.token);
    assert.deepEqual(stored, { session: true, local: 0 }, 'the credential is kept in sessionStorage only');
    ok('sign-in', `form shown first, then tenant ${viewer.tenantId} (${viewer.subject}); credential in sessionStorage only`);
  } else {
    await $(page, 'tenant').waitFor({ timeout: WAIT_MS });
    assert.equal(await $(page, 'signin').count(), 0, 'a sign-in form in open mode');
    ok('open mode', `no sign-in form; tenant ${await $(page, 'tenant').textContent()}`);
  }

  // First page: the server's newest 50, in its order.
  await page.waitForFunction((selector) => document.querySelector(selector)?.dataset.firstRenderMs, VIEWER, { timeout: WAIT_MS });
  const firstRenderMs = Number(await page.locator(VIEWER).getAttribute('data-first-render-ms'));
  assert.deepEqual(await page.evaluate(() => window.rendered), { ms: firstRenderMs, rows: 50 }, 'no audit-log-viewer:rendered event with the first page');
  const firstPage = await serverIds({});
  assert.equal(firstPage.length, 50);
  await expectIds(page, firstPage, 'first page');
  const position = firstPage.indexOf(seeded[0]);
  await page.screenshot({ path: join(shots, '01-table.png') });
  ok('first page', `50 rows equal to auditLogs' first page; newest seeded event ${position < 0 ? 'not on it (newer events exist)' : `at row ${position + 1}`}; first render ${firstRenderMs} ms${args.token ? ' (including sign-in)' : ''}`);

  // Infinite scroll: the sentinel below the last row brings the next page.
  const twoPages = await serverIds({}, 2);
  await $(page, 'row').last().scrollIntoViewIfNeeded();
  await expectIds(page, twoPages, 'after scrolling');
  const scrolled = await tableRows(page);
  assert.equal(new Set(scrolled.map((row) => row.id)).size, scrolled.length, 'duplicate rows');
  for (let i = 1; i < scrolled.length; i++) assert.ok(scrolled[i - 1].occurredAt >= scrolled[i].occurredAt, `rows ${i} and ${i + 1} are not newest first`);
  ok('infinite scroll', `${scrolled.length} rows after scrolling, unique, newest first, equal to the server's two pages`);

  // Field errors: invalid JSON never leaves the browser; the server's input errors land at their field.
  const urlBefore = page.url();
  await $(page, 'filter-metadata').fill('{"env": ');
  await $(page, 'apply').click();
  const metadataError = await $(page, 'error-metadata').textContent();
  assert.match(metadataError, /JSON/, 'no error at the metadata field');
  assert.equal(page.url(), urlBefore, 'invalid metadata changed the URL');
  await $(page, 'filter-metadata').fill('');
  await $(page, 'filter-actions').fill('Project');
  await $(page, 'apply').click();
  const actionsError = await until(async () => (await $(page, 'error-actions').textContent()).trim());
  assert.ok(actionsError, "the server's BAD_USER_INPUT is not shown at the actions field");
  ok('field errors', `metadata: "${metadataError}"; actions (from the server): "${actionsError}"`);

  // Action prefix, then outcome.
  const prefix = { actorIds: actors, actions: ['project.*'] };
  await $(page, 'filter-actorIds').fill(actors.join(', '));
  await $(page, 'filter-actions').fill('project.*');
  await $(page, 'filter-actions').press('Enter');
  await expectIds(page, await serverIds(prefix), 'actions=project.*');
  const prefixRows = await tableRows(page);
  assert.ok(prefixRows.every((row) => row.action.startsWith('project.')), 'a row outside project.*');
  const search = new URL(page.url()).search;
  assert.match(search, /actions=project\.\*/, 'the URL does not hold the actions');
  ok('filter actions', `${prefixRows.length} rows, all project.*; location.search ${search}`);

  const denied = { ...prefix, outcomes: ['DENIED'] };
  await $(page, 'filter-outcomes-DENIED').check();
  await $(page, 'apply').click();
  const deniedIds = await serverIds(denied);
  const deniedTotal = await totalCount(denied);
  await expectIds(page, deniedIds, 'outcomes=DENIED');
  const deniedRows = await tableRows(page);
  assert.ok(deniedRows.every((row) => row.outcome === 'DENIED'), 'a row that is not DENIED');
  assert.equal(deniedRows.length, deniedTotal, "rows differ from the server's totalCount");
  assert.equal(deniedTotal, 20, 'the seeded events hold 20 denied project.* events');
  assert.match(await $(page, 'count').textContent(), /^20 events shown$/);
  await page.screenshot({ path: join(shots, '02-filtered.png') });
  ok('filter outcome', `${deniedRows.length} rows, all DENIED, = totalCount ${deniedTotal}; URL ${new URL(page.url()).search}`);

  // Reload: the URL gives back the inputs and the rows.
  await page.reload();
  await expectIds(page, deniedIds, 'after reload');
  assert.equal(await $(page, 'filter-actions').inputValue(), 'project.*');
  assert.equal(await $(page, 'filter-actorIds').inputValue(), actors.join(', '));
  assert.equal(await $(page, 'filter-outcomes-DENIED').isChecked(), true);
  assert.equal(await $(page, 'filter-outcomes-SUCCESS').isChecked(), false);
  ok('reload', `inputs restored (actions "project.*", outcome DENIED) and the same ${deniedIds.length} rows`);

  // Detail and chain check.
  const firstId = deniedIds[0];
  const { auditLog } = await gql('query($id: ID!) { auditLog(id: $id) { hash tenantId } }', { id: firstId });
  await $(page, 'row').first().click();
  await $(page, 'detail').waitFor({ timeout: WAIT_MS });
  assert.equal(await $(page, 'detail-hash').textContent(), auditLog.hash, "the detail's hash differs from the server's");
  await $(page, 'verify').click();
  const verified = await until(async () => {
    const text = await $(page, 'verify-result').textContent();
    return /Chain (valid|invalid)|\(/.test(text) && text;
  });
  assert.match(verified, /Chain valid — [\d,]+ events checked/, 'the chain check did not report valid');
  await page.screenshot({ path: join(shots, '03-detail-verified.png') });
  await $(page, 'detail-close').click();
  await $(page, 'detail').waitFor({ state: 'detached', timeout: WAIT_MS });
  ok('detail', `hash ${auditLog.hash.slice(0, 12)}… equals the server's; "${verified.trim()}" for tenant ${auditLog.tenantId}`);

  // Keyboard.
  const focused = async (id) => (await until(async () => (await activeRowId(page)) === id)) && id;
  await $(page, 'row').first().focus();
  await page.keyboard.press('ArrowDown');
  assert.equal(await focused(deniedIds[1]), deniedIds[1], 'ArrowDown did not move to the second row');
  await page.keyboard.press('ArrowUp');
  assert.equal(await focused(deniedIds[0]), deniedIds[0], 'ArrowUp did not move back');
  await page.keyboard.press('ArrowDown');
  await focused(deniedIds[1]);
  await page.keyboard.press('Enter');
  await $(page, 'detail').waitFor({ timeout: WAIT_MS });
  assert.match(await $(page, 'detail').textContent(), new RegExp(deniedIds[1]), 'Enter opened another event');
  await page.keyboard.press('Escape');
  await $(page, 'detail').waitFor({ state: 'detached', timeout: WAIT_MS });
  assert.equal(await focused(deniedIds[1]), deniedIds[1], 'focus did not return to the row');
  ok('keyboard', 'ArrowDown/ArrowUp move focus, Enter opens the detail, Escape closes it and focus returns');

  // Live: a new event appears on top; after a pause, the missed one is replayed.
  await page.evaluate((selector) => {
    const body = document.querySelector(selector).shadowRoot.querySelector('tbody');
    window.liveSeen = [];
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) if (node.dataset?.id) window.liveSeen.push({ id: node.dataset.id, at: Date.now() });
      }
    }).observe(body, { childList: true });
  }, VIEWER);
  await $(page, 'live-toggle').check();
  assert.equal(await until(async () => (await $(page, 'live-status').textContent()).trim() === 'live'), true, 'live status never became "live"');
  assert.match(new URL(page.url()).search, /live=1/, 'the URL does not say live=1');
  const started = Date.now();
  const liveId = (await gql(LOG, { input: liveInput() })).logAuditEvent.id;
  const seen = await page.waitForFunction((id) => window.liveSeen.find((row) => row.id === id)?.at, liveId, { timeout: WAIT_MS }).then((handle) => handle.jsonValue());
  const latency = seen - started;
  const liveRows = await tableRows(page);
  assert.equal(liveRows[0].id, liveId, 'the live event is not the first row');
  assert.equal(liveRows[0].fresh, true, 'the live event is not highlighted');
  assert.ok(latency <= 1000, `the live event took ${latency} ms`);
  await page.screenshot({ path: join(shots, '04-live.png') });

  await $(page, 'live-toggle').uncheck();
  const missedId = (await gql(LOG, { input: liveInput() })).logAuditEvent.id;
  await $(page, 'live-toggle').check();
  await until(async () => (await tableRows(page))[0]?.id === missedId);
  const resumed = await tableRows(page);
  assert.deepEqual(resumed.slice(0, 2).map((row) => row.id), [missedId, liveId], 'the event logged while live was off was not replayed on top');
  assert.equal(new Set(resumed.map((row) => row.id)).size, resumed.length, 'duplicate rows after resubscribing');
  assert.equal(resumed.length, deniedTotal + 2);
  await $(page, 'live-toggle').uncheck();
  ok('live', `latency ${latency} ms from the mutation to the top row; the event logged while off was replayed on resubscribing, no duplicates`);

  // Chart: what auditLogStats says for the same filter, when the server has it.
  const DAY = 86_400_000;
  const chartFilter = { ...denied, occurredAfter: new Date(Math.floor(Date.now() / DAY) * DAY - 30 * DAY).toISOString() };
  const stats = await gql('query($filter: AuditLogFilter) { auditLogStats(filter: $filter, groupBy: [OUTCOME], interval: DAY, first: 1000) { start outcome count } }', { filter: chartFilter })
    .then((data) => data.auditLogStats, () => null);
  if (stats) {
    await $(page, 'chart').waitFor({ timeout: WAIT_MS });
    const bars = await $(page, 'bar').count();
    const expected = stats.reduce((sum, bucket) => sum + bucket.count, 0);
    const legend = (await $(page, 'chart').locator('.legend').innerText()).replace(/\s+/g, ' ').trim();
    assert.ok(bars > 0, 'the chart has no bars');
    assert.match(legend, new RegExp(`denied ${expected}\\b`), `the legend does not count ${expected} denied events`);
    ok('chart', `${bars} bars over ${stats.length} days; legend "${legend}" = auditLogStats`);
  } else {
    assert.equal(await $(page, 'chart').count(), 0, 'a chart without auditLogStats');
    ok('chart', 'hidden: the server has no auditLogStats for this filter');
  }

  // Downloads of the current filter.
  const exportStatus = (await fetch(`${base}/export?format=none`, { headers: args.token ? { authorization: `Bearer ${args.token}` } : {} })).status;
  if (exportStatus === 404) {
    assert.equal(await $(page, 'download-csv').isVisible(), false, 'download buttons without /export');
    ok('download', 'hidden: the server has no /export');
  } else {
    const rows = await totalCount(denied);
    const fetchDownload = async (format) => {
      const [download] = await Promise.all([page.waitForEvent('download', { timeout: WAIT_MS }), $(page, `download-${format}`).click()]);
      return readFileSync(await download.path(), 'utf8');
    };
    const csv = (await fetchDownload('csv')).trimEnd().split('\n');
    assert.match(csv[0], /^sequence,id,tenant_id,occurred_at,/, 'the CSV does not start with its header');
    assert.equal(csv.length, rows + 1, 'the CSV has the wrong number of lines');
    const ndjson = (await fetchDownload('ndjson')).trimEnd().split('\n').map((line) => JSON.parse(line));
    assert.equal(ndjson.length, rows, 'the NDJSON has the wrong number of lines');
    ok('download', `CSV ${csv.length} lines (header + ${rows}), NDJSON ${ndjson.length} lines, for the filtered view`);
  }

  // Narrow screen: the filters start folded, no horizontal overflow, the detail takes the whole width.
  await page.setViewportSize({ width: 400, height: 800 });
  await page.reload();
  await expectIds(page, [missedId, liveId, ...deniedIds], 'narrow');
  assert.equal(await $(page, 'filters-toggle').getAttribute('aria-expanded'), 'false', 'the filters are unfolded at 400 px');
  assert.equal(await $(page, 'filters').isVisible(), false);
  const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(scrollWidth <= 400, `the page is ${scrollWidth} px wide at 400`);
  await page.screenshot({ path: join(shots, '05-narrow.png') });
  await $(page, 'row').first().click();
  const detailWidth = (await $(page, 'detail').boundingBox()).width;
  assert.ok(detailWidth >= 390, `the detail is ${detailWidth} px wide at 400`);
  await page.keyboard.press('Escape');
  ok('narrow', `filters folded, scrollWidth ${scrollWidth} at 400×800; detail ${Math.round(detailWidth)} px wide`);

  // Text that would reorder itself on screen shows its controls instead.
  const trojan = `bidi-${run}`;
  await gql(LOG, { input: {
    actor: { type: 'USER', id: trojan, name: 'invoice\u202Etxt.exe' }, action: 'file.uploaded',
    target: { type: 'file', id: 'a\u2066b\u2069' }, metadata: { name: 'x\u202Ey' },
  } });
  if (!(await $(page, 'filters').isVisible())) await $(page, 'filters-toggle').click();
  await $(page, 'clear').click();
  await $(page, 'filter-actorIds').fill(trojan);
  await $(page, 'apply').click();
  await expectIds(page, await serverIds({ actorIds: [trojan] }), 'the bidi event');
  const firstRow = () => page.evaluate((selector) => {
    const row = document.querySelector(selector).shadowRoot.querySelector('tr[data-testid=row]');
    if (!row) return null; // between a query and its rows
    const withheld = row.querySelector('[data-testid=actor] .withheld');
    return { actor: row.querySelector('[data-testid=actor]').textContent, target: row.querySelector('[data-testid=target]').textContent, withheld: withheld?.dataset.testid ?? null };
  }, VIEWER);
  const shown = await firstRow();
  // The actor's name is personal: in clear only with audit:pii, else marked as redacted.
  const pii = viewer.scopes.includes('audit:pii');
  assert.deepEqual(shown, pii
    ? { actor: 'invoice⟨U+202E⟩txt.exe', target: 'file:a⟨U+2066⟩b⟨U+2069⟩', withheld: null }
    : { actor: 'redacted', target: 'file:a⟨U+2066⟩b⟨U+2069⟩', withheld: 'redacted' });
  await $(page, 'row').first().click();
  const metadataShown = await $(page, 'detail-metadata').textContent();
  assert.ok(metadataShown.includes('x⟨U+202E⟩y') && !/[\u202A-\u202E\u2066-\u2069]/.test(metadataShown), metadataShown);
  ok('bidi controls', `shown as ${shown.actor} and ${shown.target}, in metadata too`);

  // Erased values are marked apart from redacted ones (an admin erases the subject).
  if (viewer.scopes.includes('audit:admin')) {
    await gql('mutation($s: String!) { eraseAuditSubject(subjectId: $s, reason: "viewer test") { erasedEvents } }', { s: trojan });
    await page.keyboard.press('Escape');
    await $(page, 'apply').click();
    await until(async () => (await firstRow())?.withheld === 'erased');
    const erased = await firstRow();
    assert.equal(erased?.actor, 'erased', JSON.stringify(erased));
    ok('personal values', `the actor's name shown as ${shown.withheld ?? 'clear text'}, then as erased`);
  } else {
    ok('personal values', `the actor's name shown as ${shown.withheld}`);
  }

  // Admins see the tenant's log streams with their state, lag and last error.
  if (viewer.scopes.includes('audit:admin')) {
    const { createAuditStream: stream } = await gql(
      'mutation($input: AuditStreamInput!) { createAuditStream(input: $input) { id name } }',
      { input: { name: 'viewer-test <siem>', kind: 'WEBHOOK', url: 'http://127.0.0.1:9/nothing-listens' } },
    );
    const shownStream = () => page.evaluate(([selector, id]) => {
      const row = document.querySelector(selector).shadowRoot.querySelector(`tr[data-testid=stream][data-id="${id}"]`);
      return row && { state: row.querySelector('[data-testid=stream-state]').textContent, lag: row.querySelector('[data-testid=stream-lag]').textContent, error: row.querySelector('[data-testid=stream-error]').textContent, name: row.cells[0].textContent };
    }, [VIEWER, stream.id]);
    if (!(await $(page, 'streams').evaluate((details) => details.open))) await $(page, 'streams').locator('summary').click();
    await until(async () => {
      await $(page, 'streams-refresh').click();
      return (await shownStream())?.error.includes('could not connect');
    });
    const row = await shownStream();
    assert.equal(row.name, stream.name);
    assert.equal(row.state, 'active');
    assert.match(row.lag, /^[\d,]+ events?, [\d.]+ s behind$/);
    await page.screenshot({ path: join(shots, '08-streams.png') });
    ok('log streams', `${row.name}: ${row.state}, ${row.lag}, last error "${row.error}"`);
  } else {
    assert.equal(await $(page, 'streams').count(), 0, 'streams are shown to a reader');
    ok('log streams', 'not shown without audit:admin');
  }

  assert.deepEqual(pageErrors, [], 'errors in the page');
  await context.close();

  if (embedOrigin) await embedded(browser);
}

/** Another origin's page embeds the script and themes it. */
async function embedded(browser) {
  const origin = new URL(embedOrigin);
  const escape = (text) => text.replace(/[&"<>]/g, (c) => `&#${c.charCodeAt(0)};`);
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Embedded viewer</title>
<script type="module" src="${escape(scriptUrl)}"></script></head>
<body style="margin:0"><h1 style="font:16px sans-serif;margin:8px">Another app</h1>
<audit-log-viewer endpoint="${escape(`${base}/graphql`)}"${args.token ? ` token="${escape(args.token)}"` : ''} style="--alv-accent: rgb(255, 0, 0); height: 600px"></audit-log-viewer>
</body></html>`;
  const server = http.createServer((_, response) => response.writeHead(200, { 'content-type': 'text/html' }).end(html));
  await new Promise((done) => server.listen(Number(origin.port), origin.hostname, done));
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const problems = [];
    page.on('console', (message) => message.type() === 'error' && problems.push(message.text()));
    page.on('pageerror', (error) => problems.push(error.message));
    await page.goto(`${origin.origin}/`);
    await $(page, 'row').first().waitFor({ timeout: WAIT_MS }).catch((error) => {
      throw new Error(`embedded: no rows on ${origin.origin} (${error.message.split('\n')[0]}); the page said: ${problems.join(' | ') || 'nothing'}`);
    });
    const rows = await $(page, 'row').count();
    const accent = await $(page, 'apply').evaluate((button) => getComputedStyle(button).backgroundColor);
    assert.equal(accent, 'rgb(255, 0, 0)', '--alv-accent does not reach the Apply button');
    await page.screenshot({ path: join(shots, '07-embedded.png') });
    ok('embedded', `${rows} rows on ${origin.origin}; --alv-accent gives the Apply button ${accent}`);
  } finally {
    server.close();
  }
}

const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: ['--no-sandbox'] });
let timer;
let failed = 0;
try {
  const running = main(browser);
  running.catch(() => {}); // a step still running when the time is up fails as the browser closes
  await Promise.race([
    running,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${TIMEOUT_MS / 1000} s`)), TIMEOUT_MS);
    }),
  ]);
} catch (error) {
  failed = 1;
  console.log(`not ok ${passed + 1} - ${error.message}`);
  if (error.actual !== undefined || error.expected !== undefined) console.log(`  actual:   ${JSON.stringify(error.actual)}\n  expected: ${JSON.stringify(error.expected)}`);
} finally {
  clearTimeout(timer);
  await browser.close();
}
console.log(`screenshots in ${shots}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed);
