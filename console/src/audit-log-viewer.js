/**
 * <audit-log-viewer>: audit-service's admin console as one web component.
 *
 *   <audit-log-viewer endpoint="/graphql" sync-url live></audit-log-viewer>
 *
 * Attributes:
 *   endpoint  the GraphQL HTTP URL (required; relative URLs resolve against the page). The
 *             live tail uses the same path over ws:// or wss://, exports `export` beside it.
 *   token     a credential (API key or JWT) to use; without it the viewer asks for one when
 *             the server requires it, and keeps it in sessionStorage for the tab.
 *   sync-url  keeps the filter and live state in the page's query string (replaceState)
 *             and starts from it: ?actions=project.*&outcomes=DENIED,FAILURE&live=1
 *   live      starts in live mode.
 *
 * Theming, through CSS custom properties set on the element or above it:
 *   --alv-font       font family                 --alv-accent     buttons, focus, highlights
 *   --alv-bg         background                  --alv-border     lines and input borders
 *   --alv-fg         text                        --alv-row-hover  hovered and selected rows
 *   --alv-muted      secondary text
 *   --alv-success, --alv-failure, --alv-denied   outcome badges and chart bars
 *
 * After the first page of events has rendered, the element sets `data-first-render-ms`
 * (milliseconds since it was connected) and dispatches `audit-log-viewer:rendered`.
 */
import { LitElement, html, nothing } from 'lit';
import { repeat } from 'lit/directives/repeat.js';
import { createClient } from 'graphql-ws/client';
import {
  ApiError, apiError, authorization, graphql, hasExport, download,
  VIEWER_QUERY, PAGE_QUERY, LIVE_SUBSCRIPTION, STATS_QUERY, VERIFY_QUERY, STREAMS_QUERY,
} from './api.js';
import { ACTOR_TYPES, OUTCOMES, emptyDraft, draftToFilter, readSearch, writeSearch } from './filter.js';
import { chartFilter, renderChart } from './chart.js';
import { styles } from './styles.js';
import { visible } from './text.js';

/** Personal values this reader may not see, as the server writes them (docs/privacy.md). */
const WITHHELD = {
  '[redacted]': ['redacted', 'Personal data: reading it needs the audit:pii scope'],
  '[erased]': ['erased', "Erased at the data subject's request"],
};

/** A personal value: itself, or a mark saying it is redacted or erased. */
function personal(value) {
  const withheld = WITHHELD[value];
  if (!withheld) return visible(value);
  const [kind, why] = withheld;
  return html`<span class="withheld ${kind}" data-testid=${kind} title=${why}>${kind}</span>`;
}

const FRESH_MS = 2000;
const STREAMS_REFRESH_MS = 10_000;
const NARROW_PX = 480; // as the styles' container queries
const STATUS_TEXT = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…' };

class AuditLogViewer extends LitElement {
  static styles = styles;

  static properties = {
    endpoint: { type: String },
    token: { type: String },
    syncUrl: { type: Boolean, attribute: 'sync-url' },
    live: { type: Boolean },
    // 'starting', 'signin' (a credential is needed), 'ready', or 'failed' (see `error`).
    phase: { state: true },
    viewer: { state: true },
    rows: { state: true },
    hasNext: { state: true },
    loading: { state: true },
    error: { state: true },
    draft: { state: true },
    fieldErrors: { state: true },
    applied: { state: true },
    liveStatus: { state: true },
    selected: { state: true },
    verification: { state: true },
    stats: { state: true },
    // Admins' log streams (docs/streams.md): null until loaded, or for anyone else.
    streams: { state: true },
    exportable: { state: true },
    downloading: { state: true },
    activeId: { state: true },
    filtersOpen: { state: true },
    signinError: { state: true },
  };

  constructor() {
    super();
    this.live = false;
    this.phase = 'starting';
    this.rows = [];
    this.draft = emptyDraft();
    this.fieldErrors = {};
    this.applied = {};
    this.liveStatus = 'off';
    this.exportable = false;
    this.fresh = new Set();
    this.run = 0; // bumped by start(): answers to an earlier run are dropped
    this.view = 0; // bumped by reload(): answers for an earlier filter are dropped
    // The sentinel below the last row: in view (of the window and of every scrolling box
    // around it), it loads the next page.
    this.observer = new IntersectionObserver(([entry]) => entry.isIntersecting && this.loadPage());
    this.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && this.selected) this.closeDetail();
    });
  }

  connectedCallback() {
    super.connectedCallback();
    this.connectedAt = performance.now();
    if (this.syncUrl) {
      const { draft, live } = readSearch(location.search);
      const { filter, errors } = draftToFilter(draft);
      Object.assign(this, { draft, applied: filter, fieldErrors: errors });
      if (live) this.live = true;
    }
    // Moved in the DOM: `updated` does not run again, so start over here.
    if (this.hasUpdated) this.start();
  }

  disconnectedCallback() {
    super.disconnectedCallback();
    this.run++;
    this.view++;
    this.observer.disconnect();
    this.observed = null;
    this.stopLive();
    clearInterval(this.streamsTimer);
    this.client?.dispose();
    this.client = null;
    this.socketOpen = false;
  }

  updated(changed) {
    if (changed.has('endpoint') || changed.has('token')) this.start();
    else if (changed.has('live')) this.syncLive();
    const sentinel = this.renderRoot.querySelector('.sentinel');
    if (sentinel !== this.observed) {
      if (this.observed) this.observer.unobserve(this.observed);
      if (sentinel) this.observer.observe(sentinel);
      this.observed = sentinel;
    }
  }

  // ---- Session -------------------------------------------------------------------------

  get storageKey() {
    return `audit-log-viewer:${this.endpointUrl}`;
  }

  get credential() {
    return this.token || sessionStorage.getItem(this.storageKey) || '';
  }

  get isAdmin() {
    return Boolean(this.viewer?.scopes.includes('audit:admin'));
  }

  /** Who is signed in, then the first page: the whole view from scratch. */
  async start() {
    const run = ++this.run;
    this.stopLive();
    this.client?.dispose();
    this.client = null;
    this.socketOpen = false;
    clearInterval(this.streamsTimer);
    Object.assign(this, { phase: 'starting', viewer: null, error: null, rows: [], selected: null, stats: null, exportable: false, streams: null });
    try {
      if (!this.endpoint) throw new Error('the endpoint attribute is missing');
      this.endpointUrl = new URL(this.endpoint, document.baseURI);
    } catch (error) {
      Object.assign(this, { phase: 'failed', error: `Cannot start: ${error.message}` });
      return;
    }
    try {
      const { auditViewer } = await this.query(VIEWER_QUERY);
      if (run !== this.run) return;
      this.viewer = auditViewer;
    } catch (error) {
      if (run !== this.run) return;
      if (error.code === 'UNAUTHENTICATED' && !this.token) this.signedOut(this.credential ? `The server refused the credential: ${error.message}` : null);
      else Object.assign(this, { phase: 'failed', error: describe(error) });
      return;
    }
    // Only admins may name tenants; anyone else's filter is their own tenant.
    if (!this.isAdmin && this.applied.tenantIds) {
      const { tenantIds, ...rest } = this.applied;
      this.applied = rest;
      this.draft = { ...this.draft, tenantIds: '' };
    }
    // A narrow viewer starts with the filters folded away, leaving the room to the events.
    this.filtersOpen ??= this.offsetWidth === 0 || this.offsetWidth > NARROW_PX || Object.keys(this.fieldErrors).length > 0;
    this.phase = 'ready';
    this.exportUrl = new URL('export', this.endpointUrl);
    hasExport(this.exportUrl, this.credential).then((exportable) => {
      if (run === this.run) this.exportable = exportable;
    });
    if (this.isAdmin) {
      this.loadStreams();
      this.streamsTimer = setInterval(() => this.loadStreams(), STREAMS_REFRESH_MS);
    }
    this.reload();
  }

  /** The tenant's log streams with their state and lag, for admins. */
  async loadStreams() {
    const run = this.run;
    try {
      const { auditStreams } = await this.query(STREAMS_QUERY);
      if (run === this.run) this.streams = { list: auditStreams, error: null };
    } catch (error) {
      if (run === this.run) this.streams = { list: this.streams?.list ?? [], error: describe(error) };
    }
  }

  signedOut(message) {
    sessionStorage.removeItem(this.storageKey);
    this.stopLive();
    Object.assign(this, { phase: 'signin', viewer: null, rows: [], selected: null, error: null, signinError: message });
  }

  signIn(event) {
    event.preventDefault();
    const credential = new FormData(event.target).get('credential').trim();
    if (!credential) {
      this.signinError = 'Paste an API key or a JWT.';
      return;
    }
    sessionStorage.setItem(this.storageKey, credential);
    this.signinError = null;
    this.start();
  }

  signOut() {
    sessionStorage.removeItem(this.storageKey);
    this.start();
  }

  query(operation, variables) {
    return graphql(this.endpointUrl, this.credential, operation, variables);
  }

  /** Puts an error where it belongs: at its filter field, the sign-in form, or the banner. */
  fail(error) {
    const field = error.field?.match(/^filter\.(\w+)/)?.[1];
    if (error.code === 'BAD_USER_INPUT' && field in this.draft) {
      this.fieldErrors = { ...this.fieldErrors, [field]: error.message };
      this.filtersOpen = true;
    } else if (error.code === 'UNAUTHENTICATED' && !this.token) {
      this.signedOut(`Signed out: ${error.message}`);
    } else {
      this.error = describe(error);
    }
  }

  // ---- Pages ---------------------------------------------------------------------------

  /** Shows the first page for the applied filter (and its chart and live tail). */
  async reload() {
    const view = ++this.view;
    this.stopLive();
    Object.assign(this, { rows: [], hasNext: true, loading: false, error: null, selected: null, activeId: null });
    this.ids = new Set();
    this.endCursor = null;
    this.loadChart();
    if (await this.loadPage()) {
      this.shownView = view;
      this.recordFirstRender();
      this.syncLive();
    }
  }

  /** Loads the next page; true when it loaded and is still the current view. */
  async loadPage() {
    if (this.loading || !this.hasNext || this.phase !== 'ready') return false;
    const view = this.view;
    this.loading = true;
    try {
      const { auditLogs } = await this.query(PAGE_QUERY, { filter: this.applied, after: this.endCursor });
      if (view !== this.view) return false;
      const fresh = auditLogs.edges.map((edge) => edge.node).filter((node) => !this.ids.has(node.id));
      for (const node of fresh) this.ids.add(node.id);
      this.rows = [...this.rows, ...fresh];
      this.endCursor = auditLogs.pageInfo.endCursor;
      this.hasNext = auditLogs.pageInfo.hasNextPage;
    } catch (error) {
      if (view === this.view) this.fail(error);
      return false;
    } finally {
      if (view === this.view) this.loading = false;
    }
    await this.updateComplete;
    // A sentinel still in view reports no change; observing it anew reports where it is.
    if (this.observed) {
      this.observer.unobserve(this.observed);
      this.observer.observe(this.observed);
    }
    return view === this.view;
  }

  recordFirstRender() {
    if (this.dataset.firstRenderMs) return;
    const ms = Math.round(performance.now() - this.connectedAt);
    this.dataset.firstRenderMs = String(ms);
    this.dispatchEvent(new CustomEvent('audit-log-viewer:rendered', { bubbles: true, composed: true, detail: { ms, rows: this.rows.length } }));
  }

  async loadChart() {
    const view = this.view;
    const filter = chartFilter(this.applied);
    try {
      const { auditLogStats } = await this.query(STATS_QUERY, { filter });
      if (view === this.view) this.stats = { filter, buckets: auditLogStats };
    } catch {
      // No chart for this filter (or no auditLogStats on this server): the view goes on.
      if (view === this.view) this.stats = null;
    }
  }

  // ---- Filter --------------------------------------------------------------------------

  editDraft(event) {
    const { name, type, value, checked } = event.target;
    if (!(name in this.draft)) return;
    if (type === 'checkbox') {
      const values = this.draft[name].filter((item) => item !== value);
      this.draft = { ...this.draft, [name]: checked ? [...values, value] : values };
    } else {
      this.draft = { ...this.draft, [name]: value };
    }
    if (this.fieldErrors[name]) {
      const { [name]: _, ...rest } = this.fieldErrors;
      this.fieldErrors = rest;
    }
  }

  apply(event) {
    event?.preventDefault();
    const { filter, errors } = draftToFilter(this.draft);
    this.fieldErrors = errors;
    if (Object.keys(errors).length) return;
    this.applied = filter;
    this.syncLocation();
    this.reload();
  }

  clear() {
    Object.assign(this, { draft: emptyDraft(), fieldErrors: {}, applied: {} });
    this.syncLocation();
    this.reload();
  }

  syncLocation() {
    if (!this.syncUrl) return;
    history.replaceState(history.state, '', `${location.pathname}${writeSearch(location.search, this.applied, this.live)}${location.hash}`);
  }

  // ---- Live tail -----------------------------------------------------------------------

  toggleLive(event) {
    this.live = event.target.checked;
    this.syncLocation();
  }

  /** Subscribes or unsubscribes as `live` and the view ask: live needs a first page shown. */
  syncLive() {
    if (!this.live || this.phase !== 'ready' || this.shownView !== this.view) this.stopLive();
    else if (!this.subscription) this.subscribe();
  }

  stopLive() {
    const subscription = this.subscription;
    this.subscription = null;
    subscription?.dispose();
    this.liveStatus = 'off';
  }

  subscribe() {
    this.client ??= createClient({
      url: this.wsUrl(),
      lazy: true,
      lazyCloseTimeout: 5000, // a new filter's subscription reuses the socket
      connectionParams: () => authorization(this.credential),
      retryAttempts: Infinity,
      // Retry anything but a refused credential (4403: the server's answer to one).
      shouldRetry: (closeOrError) => closeOrError?.code !== 4403,
      retryWait: (retries) => new Promise((resolve) => setTimeout(resolve, Math.min(1000 * 2 ** retries, 15_000) + Math.random() * 500)),
      on: {
        connecting: (isRetry) => this.subscription && (this.liveStatus = isRetry ? 'reconnecting' : 'connecting'),
        connected: () => {
          this.socketOpen = true;
          if (this.subscription) this.liveStatus = 'live';
        },
        closed: () => {
          this.socketOpen = false;
          if (this.subscription) this.liveStatus = 'reconnecting';
        },
      },
    });
    const filter = this.applied;
    const viewer = this;
    const subscription = {};
    const payload = {
      query: LIVE_SUBSCRIPTION,
      // graphql-ws sends this same payload again when it reconnects: a getter makes each
      // (re)subscription resume after the newest event shown at that moment, so the server
      // replays exactly what was missed.
      get variables() {
        return { filter, after: viewer.rows[0]?.cursor ?? null };
      },
    };
    const failed = (failure) => {
      if (this.subscription !== subscription) return;
      if (failure.code === 'SUBSCRIBER_LAGGED') {
        // Fell behind: resume from the newest event shown, as the server asks. The new
        // subscription starts before the old one ends, so the socket stays open.
        this.subscription = null;
        this.subscribe();
        subscription.dispose();
      } else {
        this.liveFailed(failure);
      }
    };
    subscription.dispose = this.client.subscribe(payload, {
      next: ({ data, errors }) => {
        if (this.subscription !== subscription) return;
        if (data?.auditLogCreated) this.prepend(data.auditLogCreated);
        else failed(apiError(errors));
      },
      error: (error) => failed(Array.isArray(error)
        ? apiError(error)
        // graphql-ws gave up: a close code that is final, or the socket could not be built.
        : new ApiError(`the live connection closed${error?.code ? ` (${error.code}${error.reason ? ` ${error.reason}` : ''})` : ''}`, {
          code: error?.code === 4403 ? 'FORBIDDEN' : 'UNAVAILABLE',
        })),
      complete: () => {
        // The server ended the subscription (our own dispose() is filtered out): resume.
        if (this.subscription !== subscription) return;
        this.subscription = null;
        setTimeout(() => this.syncLive(), 1000);
      },
    });
    this.subscription = subscription;
    this.liveStatus = this.socketOpen ? 'live' : 'connecting';
  }

  wsUrl() {
    const url = new URL(this.endpointUrl);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
  }

  liveFailed(error) {
    this.stopLive();
    this.live = false;
    this.syncLocation();
    if (error.code === 'UNAUTHENTICATED') this.fail(error);
    else this.error = `Live updates stopped: ${describe(error)}`;
  }

  /** A live event on top of the table, highlighted for a moment. */
  prepend(event) {
    if (this.ids.has(event.id)) return;
    this.ids.add(event.id);
    this.rows = [event, ...this.rows];
    this.fresh.add(event.id);
    setTimeout(() => {
      this.fresh.delete(event.id);
      this.requestUpdate();
    }, FRESH_MS);
    if (this.stats) this.stats = { ...this.stats, buckets: [...this.stats.buckets, { start: event.occurredAt, outcome: event.outcome, count: 1 }] };
  }

  // ---- Rows and detail -----------------------------------------------------------------

  rowKeydown(event) {
    const row = event.target.closest('tr[data-id]');
    if (!row) return;
    const index = this.rows.findIndex((item) => item.id === row.dataset.id);
    const moves = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: this.rows.length - 1 };
    if (event.key === 'Enter') {
      event.preventDefault();
      this.openDetail(this.rows[index]);
    } else if (event.key in moves) {
      event.preventDefault();
      const next = this.rows[Math.max(0, Math.min(this.rows.length - 1, moves[event.key]))];
      this.focusRow(next.id);
    }
  }

  rowClick(event) {
    const row = event.target.closest('tr[data-id]');
    if (row) this.openDetail(this.rows.find((item) => item.id === row.dataset.id));
  }

  async focusRow(id) {
    this.activeId = id;
    await this.updateComplete;
    this.renderRoot.querySelector(`tr[data-id="${CSS.escape(id)}"]`)?.focus();
  }

  async openDetail(row) {
    Object.assign(this, { selected: row, activeId: row.id, verification: null });
    await this.updateComplete;
    this.renderRoot.querySelector('#detail-title')?.focus();
  }

  closeDetail() {
    const { id } = this.selected;
    this.selected = null;
    this.focusRow(id);
  }

  async verifyChain() {
    const event = this.selected;
    this.verification = { running: true };
    try {
      const { verifyAuditChain } = await this.query(VERIFY_QUERY, { tenantId: event.tenantId });
      if (this.selected === event) this.verification = verifyAuditChain;
    } catch (error) {
      if (this.selected === event) this.verification = { error: describe(error) };
    }
  }

  async download(format) {
    this.downloading = format;
    try {
      await download(this.exportUrl, this.credential, { format, filter: this.applied });
    } catch (error) {
      this.fail(error);
    } finally {
      this.downloading = null;
    }
  }

  // ---- Rendering -----------------------------------------------------------------------

  render() {
    return html`<div class="frame">
      <header>
        <h1>Audit log</h1>
        ${this.viewer ? this.renderIdentity() : nothing}
        ${this.phase === 'ready' ? this.renderTools() : nothing}
      </header>
      ${this.phase === 'signin' ? this.renderSignin() : nothing}
      ${this.phase === 'ready' ? this.renderFilters() : nothing}
      ${this.phase === 'ready' && this.stats ? renderChart(this.stats.buckets, this.stats.filter) : nothing}
      ${this.phase === 'ready' && this.streams ? this.renderStreams() : nothing}
      ${this.error ? html`<div class="banner" role="alert" data-testid="error">${this.error}</div>` : nothing}
      ${this.phase === 'ready' ? this.renderMain() : nothing}
      ${this.phase === 'starting' ? html`<p class="placeholder">Connecting…</p>` : nothing}
    </div>`;
  }

  renderIdentity() {
    const { subject, tenantId, open, expiresAt } = this.viewer;
    const title = expiresAt ? `signed in until ${new Date(expiresAt).toLocaleString()}` : nothing;
    return html`<span class="who" data-testid="viewer" title=${title}>
      tenant <b data-testid="tenant">${tenantId}</b> · ${open ? html`<span class="muted">open mode</span>` : subject}
    </span>`;
  }

  renderTools() {
    const downloads = ['csv', 'ndjson'].map((format) => html`<button type="button" data-testid="download-${format}"
      ?disabled=${this.downloading === format} @click=${() => this.download(format)}
      aria-label="Download the filtered events as ${format.toUpperCase()}">⤓ ${format.toUpperCase()}</button>`);
    const active = Object.keys(this.applied).length;
    return html`
      <button type="button" data-testid="filters-toggle" aria-controls="filters" aria-expanded=${String(this.filtersOpen)}
        @click=${() => (this.filtersOpen = !this.filtersOpen)}>Filters${active ? ` (${active})` : ''}</button>
      <label class="switch">
        <input type="checkbox" role="switch" data-testid="live-toggle" .checked=${this.live} @change=${this.toggleLive}>
        Live
      </label>
      <span class="status ${this.liveStatus}" data-testid="live-status" role="status" ?hidden=${this.liveStatus === 'off'}>${STATUS_TEXT[this.liveStatus] ?? ''}</span>
      <span class="downloads" ?hidden=${!this.exportable}>${downloads}</span>
      ${this.token || this.viewer.open || !sessionStorage.getItem(this.storageKey)
        ? nothing
        : html`<button type="button" data-testid="signout" @click=${this.signOut}>Sign out</button>`}
    `;
  }

  renderStreams() {
    const { list, error } = this.streams;
    const failing = list.filter((stream) => stream.state === 'FAILING').length;
    const lag = ({ lagEvents: n, lagSeconds }) => (n ? `${n.toLocaleString()} event${n === 1 ? '' : 's'}, ${lagSeconds.toFixed(1)} s behind` : 'caught up');
    return html`<details class="streams" data-testid="streams" ?open=${failing > 0}>
      <summary>Log streams (${list.length}${failing ? html`, <span class="invalid">${failing} failing</span>` : ''})</summary>
      ${error ? html`<p class="invalid" role="alert">${error}</p>` : nothing}
      ${list.length ? html`<table>
        <thead><tr><th scope="col">Name</th><th scope="col">Kind</th><th scope="col">State</th><th scope="col">Lag</th><th scope="col">Last error</th></tr></thead>
        <tbody>${list.map((stream) => html`<tr data-testid="stream" data-id=${stream.id}>
          <td>${visible(stream.name)}</td>
          <td>${stream.kind}</td>
          <td><span class="state ${stream.state}" data-testid="stream-state">${stream.state.toLowerCase()}</span></td>
          <td data-testid="stream-lag" title="delivered through sequence ${stream.deliveredSequence}">${lag(stream)}</td>
          <td data-testid="stream-error">${stream.lastError ? visible(stream.lastError) : html`<span class="muted">—</span>`}</td>
        </tr>`)}</tbody>
      </table>` : html`<p class="muted">No streams: createAuditStream sends this tenant's events to a webhook, NATS, Splunk, Datadog or syslog.</p>`}
      <button type="button" data-testid="streams-refresh" @click=${this.loadStreams}>Refresh</button>
    </details>`;
  }

  renderSignin() {
    return html`<form class="signin" data-testid="signin" @submit=${this.signIn}>
      <h2>Sign in</h2>
      <p class="muted">This server needs a credential. Paste an API key or a JWT; it stays in this browser tab only.</p>
      <label class="field"><span>API key or JWT</span>
        <input type="password" name="credential" autocomplete="off" required data-testid="signin-credential"
          aria-invalid=${this.signinError ? 'true' : 'false'} aria-describedby="signin-error">
      </label>
      <span class="field-error" id="signin-error" role="alert" data-testid="signin-error">${this.signinError ?? ''}</span>
      <div><button class="primary" type="submit" data-testid="signin-submit">Sign in</button></div>
    </form>`;
  }

  /** A labelled text input bound to draft[name], with its error. */
  textField(name, label, { placeholder = '', wide = false, type = 'text' } = {}) {
    const error = this.fieldErrors[name];
    return html`<label class="field ${wide ? 'wide' : ''}"><span>${label}</span>
      <input type=${type} name=${name} .value=${this.draft[name]} placeholder=${placeholder} step=${type === 'datetime-local' ? '1' : nothing}
        data-testid="filter-${name}" aria-invalid=${error ? 'true' : 'false'} aria-describedby="error-${name}">
      <span class="field-error" id="error-${name}" data-testid="error-${name}">${error ?? ''}</span>
    </label>`;
  }

  /** A group of checkboxes bound to the list draft[name]. */
  choiceField(name, label, values) {
    return html`<fieldset>
      <legend>${label}</legend>
      ${values.map((value) => html`<label>
        <input type="checkbox" name=${name} value=${value} .checked=${this.draft[name].includes(value)} data-testid="filter-${name}-${value}">
        ${value.toLowerCase()}
      </label>`)}
    </fieldset>`;
  }

  renderFilters() {
    const metadataError = this.fieldErrors.metadata;
    return html`<form class="filters" id="filters" data-testid="filters" aria-label="Filter" ?hidden=${!this.filtersOpen} @submit=${this.apply} @input=${this.editDraft}>
      ${this.isAdmin ? this.textField('tenantIds', 'Tenants', { placeholder: 'acme, globex' }) : nothing}
      ${this.textField('actorIds', 'Actors', { placeholder: 'u-1, billing' })}
      ${this.choiceField('actorTypes', 'Actor types', ACTOR_TYPES)}
      ${this.textField('actions', 'Actions', { placeholder: 'project.*, role.assigned', wide: true })}
      ${this.textField('targetType', 'Target type', { placeholder: 'project' })}
      ${this.textField('targetIds', 'Target ids', { placeholder: 'p-1, p-2' })}
      ${this.choiceField('outcomes', 'Outcomes', OUTCOMES)}
      ${this.textField('occurredAfter', 'From (local time)', { type: 'datetime-local' })}
      ${this.textField('occurredBefore', 'Until (local time)', { type: 'datetime-local' })}
      ${this.textField('requestId', 'Request id')}
      <label class="field wide"><span>Metadata contains (JSON)</span>
        <textarea name="metadata" .value=${this.draft.metadata} placeholder='{"env": "prod"}' rows="1" data-testid="filter-metadata"
          aria-invalid=${metadataError ? 'true' : 'false'} aria-describedby="error-metadata"
          @keydown=${(event) => event.key === 'Enter' && (event.ctrlKey || event.metaKey) && this.apply(event)}></textarea>
        <span class="field-error" id="error-metadata" data-testid="error-metadata">${metadataError ?? ''}</span>
      </label>
      <div class="buttons">
        <button class="primary" type="submit" data-testid="apply">Apply</button>
        <button type="button" data-testid="clear" @click=${this.clear}>Clear</button>
      </div>
    </form>`;
  }

  renderMain() {
    const { rows } = this;
    const activeId = rows.some((row) => row.id === this.activeId) ? this.activeId : rows[0]?.id;
    const summary = this.loading && !rows.length
      ? 'Loading…'
      : `${rows.length.toLocaleString()} event${rows.length === 1 ? '' : 's'} shown${this.hasNext ? ', more below' : ''}`;
    return html`
      <div class="summary" data-testid="count" role="status">${summary}</div>
      <div class="main">
        <div class="scroller">
          <table data-testid="table">
            <caption class="visually-hidden">Audit events, newest first. Press Enter on a row for its details.</caption>
            <colgroup><col class="time"><col class="actor"><col class="action"><col class="target"><col class="outcome"></colgroup>
            <thead><tr>
              <th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th>
              <th scope="col" class="target">Target</th><th scope="col">Outcome</th>
            </tr></thead>
            <tbody @keydown=${this.rowKeydown} @click=${this.rowClick}>
              ${repeat(rows, (row) => row.id, (row) => this.renderRow(row, row.id === activeId))}
            </tbody>
          </table>
          ${!rows.length && this.hasNext === false ? html`<p class="placeholder" data-testid="empty">No events match this filter.</p>` : nothing}
          ${rows.length && this.loading ? html`<p class="placeholder">Loading more…</p>` : nothing}
          ${rows.length && this.hasNext ? html`<div class="sentinel" aria-hidden="true"></div>` : nothing}
        </div>
        ${this.selected ? this.renderDetail(this.selected) : nothing}
      </div>
    `;
  }

  renderRow(row, active) {
    const time = new Date(row.occurredAt);
    return html`<tr data-testid="row" data-id=${row.id} tabindex=${active ? '0' : '-1'}
        class=${this.fresh.has(row.id) ? 'fresh' : ''} aria-current=${this.selected?.id === row.id ? 'true' : 'false'}>
      <td class="time"><time datetime=${row.occurredAt} title=${row.occurredAt}>${time.toLocaleString()}</time></td>
      <td title=${visible(`${row.actor.type} ${row.actor.id}${row.actor.name ? ` (${row.actor.name})` : ''}`)}><span class="kind">${row.actor.type}</span><span data-testid="actor">${row.actor.name ? personal(row.actor.name) : visible(row.actor.id)}</span></td>
      <td data-testid="action">${breakAtDots(row.action)}</td>
      <td class="target" data-testid="target">${row.target ? visible(`${row.target.type}:${row.target.id}`) : html`<span class="muted">—</span>`}</td>
      <td><span class="badge ${row.outcome}" data-testid="outcome">${row.outcome}</span></td>
    </tr>`;
  }

  renderDetail(event) {
    const { actor, target, context } = event;
    const fields = [
      ['Id', event.id, 'mono'],
      ['Tenant', event.tenantId],
      ['Sequence', event.sequence, 'mono'],
      ['Occurred', event.occurredAt, 'mono'],
      ['Recorded', event.recordedAt, 'mono'],
      ['Actor', html`${actor.type} ${visible(actor.id)}${actor.name ? html` (${personal(actor.name)})` : ''}`],
      ['Action', event.action],
      ['Target', target ? `${target.type}:${target.id}${target.name ? ` (${target.name})` : ''}` : '—'],
      ['Outcome', html`<span class="badge ${event.outcome}">${event.outcome}</span>`],
      ['Reason', event.reason ?? '—'],
      ['IP address', context.ipAddress ? personal(context.ipAddress) : '—', 'mono'],
      ['User agent', context.userAgent ? personal(context.userAgent) : '—'],
      ['Request id', context.requestId ?? '—', 'mono'],
      ['Hash', event.hash, 'mono', 'detail-hash'],
      ['Previous hash', event.previousHash, 'mono', 'detail-previous-hash'],
    ];
    return html`<aside class="detail" data-testid="detail" role="region" aria-labelledby="detail-title">
      <div class="detail-head">
        <h2 id="detail-title" tabindex="-1">Event ${event.sequence}</h2>
        <button type="button" data-testid="detail-close" aria-label="Close details" @click=${this.closeDetail}>✕</button>
      </div>
      <dl>
        ${fields.map(([label, value, style, testid]) => html`<dt>${label}</dt><dd class=${style ?? ''} data-testid=${testid ?? nothing}>${typeof value === 'string' ? visible(value) : value}</dd>`)}
        <dt>Metadata</dt>
        <dd><pre data-testid="detail-metadata">${visible(JSON.stringify(event.metadata, null, 2))}</pre></dd>
      </dl>
      <div class="verify">
        <button type="button" data-testid="verify" ?disabled=${this.verification?.running} @click=${this.verifyChain}>Verify chain</button>
        <span role="status" data-testid="verify-result">${this.renderVerification(event.tenantId)}</span>
      </div>
    </aside>`;
  }

  renderVerification(tenantId) {
    const result = this.verification;
    if (!result) return html`<span class="muted">checks tenant ${tenantId}'s whole hash chain</span>`;
    if (result.running) return 'Verifying…';
    if (result.error) return html`<span class="invalid">${result.error}</span>`;
    if (result.valid) return html`<span class="valid">Chain valid — ${result.checkedCount.toLocaleString()} events checked</span>`;
    return html`<span class="invalid">Chain invalid at sequence ${result.firstInvalidSequence}: ${result.reason}
      (${result.checkedCount.toLocaleString()} events checked before it)</span>`;
  }
}

/** `project.member.added`, which may wrap after its dots in a narrow column. */
function breakAtDots(text) {
  return text.split('.').map((part, index) => (index ? html`.<wbr>${part}` : part));
}

/** An error as a person reads it, with the server's code when there is one. */
function describe(error) {
  const hint = { RATE_LIMITED: ' Wait a moment and try again.', UNAVAILABLE: ' Try again shortly.' }[error.code] ?? '';
  return `${error.message}${error.code ? ` (${error.code})` : ''}.${hint}`;
}

customElements.define('audit-log-viewer', AuditLogViewer);
