// One GraphQL request over HTTP, and what its failure means: every answer becomes data or
// an `AuditError` whose class says whether to retry.

import {
  AuditError,
  DeniedError,
  RejectedError,
  UnavailableError,
  isDenial,
  isRejection,
} from './errors.js';

/** How the client proves who it is: a fixed API key, or a function giving a token (called
 * for every request, so that it can renew one). */
export interface Credentials {
  apiKey?: string | undefined;
  token?: (() => Promise<string> | string) | undefined;
}

/** The longest wait a server's `Retry-After` may impose, in milliseconds. */
const MAX_RETRY_AFTER_MS = 60_000;

/** The largest answer read: the client's own answers are a few KiB; a misdirected URL's may
 * be anything. */
const MAX_ANSWER_BYTES = 16 * 1024 * 1024;

/** `promise`, or a rejection when `signal` aborts first. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(signal.reason);
    if (signal.aborted) return abort();
    signal.addEventListener('abort', abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', abort));
  });
}

/** The answer's body as text, refused past `MAX_ANSWER_BYTES`. */
async function readText(response: Response): Promise<string> {
  const body = response.body;
  if (body === null) return '';
  if (Number(response.headers.get('content-length') ?? 0) > MAX_ANSWER_BYTES) {
    await body.cancel();
    throw new Error('the answer is too large');
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > MAX_ANSWER_BYTES) throw new Error('the answer is too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

interface GraphQLError {
  message?: unknown;
  extensions?: { code?: unknown; field?: unknown; retryAfter?: unknown };
}

/** Where a server behind read replicas says how far a write got, and a read asks to see
 * at least that far. */
const CONSISTENCY = 'x-audit-consistency';

/** A `pg_lsn` (`16/B374D848`) as a number that orders like it. */
function lsn(token: string): bigint | undefined {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(token);
  return match ? (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`) : undefined;
}

/** Posts GraphQL requests to `url`. */
export class Transport {
  readonly url: string;
  private readonly credentials: Credentials;
  private readonly timeoutMs: number;
  /** The consistency token of this client's latest write, sent with its reads so that
   * they see its writes even on a lagging replica. */
  private consistency: { token: string; at: bigint } | undefined;

  constructor(url: string, credentials: Credentials, timeoutMs: number) {
    this.url = url;
    this.credentials = credentials;
    this.timeoutMs = timeoutMs;
  }

  /** The `authorization` header's value, if any. */
  async authorization(): Promise<string | undefined> {
    if (this.credentials.token) return `Bearer ${await this.credentials.token()}`;
    if (this.credentials.apiKey) return `Bearer ${this.credentials.apiKey}`;
    return undefined;
  }

  /** Sends `query` with `variables` and resolves with `data`. */
  async request<T>(query: string, variables: unknown, signal?: AbortSignal): Promise<T> {
    return this.post<T>(JSON.stringify({ query, variables }), signal);
  }

  /** Sends a request body already written as JSON and resolves with its `data`. */
  async post<T>(body: string, signal?: AbortSignal): Promise<T> {
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
    };
    let response: Response;
    let text: string;
    // One time limit for everything: the credential, the request and the answer.
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const limit = signal ? AbortSignal.any([signal, timeout]) : timeout;
    try {
      const authorization = await abortable(this.authorization(), limit);
      if (authorization) headers.authorization = authorization;
      if (this.consistency) headers[CONSISTENCY] = this.consistency.token;
      response = await fetch(this.url, { method: 'POST', headers, body, signal: limit });
      text = await readText(response);
    } catch (error) {
      throw new UnavailableError('NETWORK', `audit-service unreachable: ${describe(error)}`);
    }
    this.remember(response.headers.get(CONSISTENCY));
    return parse<T>(response, text);
  }

  /** Keeps the latest of the tokens writes answered with. */
  private remember(token: string | null): void {
    const at = token === null ? undefined : lsn(token);
    if (token !== null && at !== undefined && (this.consistency === undefined || at > this.consistency.at)) {
      this.consistency = { token, at };
    }
  }
}

function parse<T>(response: Response, text: string): T {
  const retryAfter = retryAfterMs(response.headers.get('retry-after'));
  if (response.status === 413) {
    throw new RejectedError('PAYLOAD_TOO_LARGE', 'the request is larger than the server takes');
  }
  let body: { data?: unknown; errors?: GraphQLError[] } | undefined;
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    body = undefined;
  }
  const error = body?.errors?.[0];
  if (error) throw fromGraphQL(error, retryAfter);
  if (response.status >= 500 || response.status === 429 || body?.data == null) {
    throw new UnavailableError(`HTTP_${response.status}`, `audit-service answered HTTP ${response.status}`, retryAfter);
  }
  return body.data as T;
}

function fromGraphQL(error: GraphQLError, retryAfter: number | undefined): AuditError {
  const code = typeof error.extensions?.code === 'string' ? error.extensions.code : 'INTERNAL';
  const message = typeof error.message === 'string' ? error.message : code;
  const field = typeof error.extensions?.field === 'string' ? error.extensions.field : undefined;
  if (isRejection(code)) return new RejectedError(code, message, field);
  if (isDenial(code)) return new DeniedError(code, message);
  const seconds = error.extensions?.retryAfter;
  const wait = typeof seconds === 'number' ? Math.min(seconds * 1000, MAX_RETRY_AFTER_MS) : retryAfter;
  return new UnavailableError(code, message, wait);
}

/** `Retry-After` in milliseconds: seconds or an HTTP date, capped. */
function retryAfterMs(header: string | null): number | undefined {
  if (header === null) return undefined;
  const seconds = Number(header);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), MAX_RETRY_AFTER_MS) : undefined;
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? `: ${error.cause.message}` : '';
    return `${error.message}${cause}`;
  }
  return String(error);
}
