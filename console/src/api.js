// audit-service's HTTP API as the viewer uses it: GraphQL over POST, the export route, and
// the error shape they share: `{ errors: [{ message, extensions: { code, field? } }] }`.

/** An error answered by the server (or the network), with the server's code and field. */
export class ApiError extends Error {
  constructor(message, { code = 'INTERNAL', field, status } = {}) {
    super(message);
    this.code = code;
    this.field = field;
    this.status = status;
  }
}

const CODE_OF_STATUS = { 401: 'UNAUTHENTICATED', 403: 'FORBIDDEN', 404: 'NOT_FOUND', 429: 'RATE_LIMITED', 503: 'UNAVAILABLE' };

/** The first error of a GraphQL `errors` array (HTTP, WebSocket or export) as an ApiError. */
export function apiError(errors, status) {
  const [first] = Array.isArray(errors) ? errors : [];
  if (!first) return new ApiError(`the server answered HTTP ${status}`, { code: CODE_OF_STATUS[status], status });
  const { code = CODE_OF_STATUS[status], field } = first.extensions ?? {};
  return new ApiError(first.message, { code, field, status });
}

/** The header (and graphql-ws connection parameters) that carry a credential. */
export function authorization(credential) {
  return credential ? { authorization: `Bearer ${credential}` } : {};
}

/** POSTs a GraphQL operation; resolves to `data`, rejects with an ApiError. */
export async function graphql(url, credential, query, variables) {
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json', ...authorization(credential) },
      body: JSON.stringify({ query, variables }),
    });
  } catch (error) {
    throw new ApiError(`cannot reach ${url.host}: ${error.message}`, { code: 'UNAVAILABLE' });
  }
  const body = await response.json().catch(() => null);
  if (body?.errors?.length || !body?.data) throw apiError(body?.errors, response.status);
  return body.data;
}

/**
 * Whether the server has the export route. A request with an invalid `format` is refused
 * before the server reads (or records) anything, so it costs nothing: 404 means no route.
 */
export async function hasExport(exportUrl, credential) {
  const probe = new URL(exportUrl);
  probe.searchParams.set('format', 'none');
  try {
    return (await fetch(probe, { headers: authorization(credential) })).status !== 404;
  } catch {
    return false;
  }
}

/** Fetches an export with the credential (a link cannot carry the header) and saves it. */
export async function download(exportUrl, credential, { format, filter }) {
  const url = new URL(exportUrl);
  url.searchParams.set('format', format);
  url.searchParams.set('filter', JSON.stringify(filter));
  url.searchParams.set('orderBy', 'OCCURRED_AT_DESC');
  let response;
  try {
    response = await fetch(url, { headers: authorization(credential) });
  } catch (error) {
    throw new ApiError(`cannot reach ${url.host}: ${error.message}`, { code: 'UNAVAILABLE' });
  }
  if (!response.ok) throw apiError((await response.json().catch(() => null))?.errors, response.status);
  const blob = await response.blob();
  // Content-Disposition is not exposed to other origins, so the name is made here.
  const stamp = new Date().toISOString().replace(/[-:]|\.\d+/g, '');
  const link = Object.assign(document.createElement('a'), {
    href: URL.createObjectURL(blob),
    download: `audit-export-${stamp}.${format}`,
  });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

const EVENT_FIELDS = `
  id tenantId cursor sequence occurredAt recordedAt
  actor { type id name } action target { type id name } outcome reason metadata
  hash previousHash context { ipAddress userAgent requestId }`;

const PAGE_SIZE = 50;

export const VIEWER_QUERY = `{ auditViewer { subject tenantId scopes open expiresAt } }`;

export const PAGE_QUERY = `query AuditLogPage($filter: AuditLogFilter, $after: String) {
  auditLogs(filter: $filter, first: ${PAGE_SIZE}, after: $after, orderBy: OCCURRED_AT_DESC) {
    edges { node { ${EVENT_FIELDS} } }
    pageInfo { hasNextPage endCursor }
  }
}`;

export const LIVE_SUBSCRIPTION = `subscription AuditLogLive($filter: AuditLogFilter, $after: String) {
  auditLogCreated(filter: $filter, after: $after) { ${EVENT_FIELDS} }
}`;

export const STATS_QUERY = `query AuditLogChart($filter: AuditLogFilter) {
  auditLogStats(filter: $filter, groupBy: [OUTCOME], interval: DAY, first: 1000) { start outcome count }
}`;

export const VERIFY_QUERY = `query VerifyChain($tenantId: String) {
  verifyAuditChain(tenantId: $tenantId) { valid checkedCount firstInvalidSequence reason }
}`;

export const STREAMS_QUERY = `query AuditStreams {
  auditStreams { id name kind state deliveredSequence lagEvents lagSeconds lastError lastDeliveredAt }
}`;
