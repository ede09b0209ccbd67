// The default client and the audit-logs package's names bound to it: `logAuditEvent()`,
// `logProjectAction.created()`, ... A service configures it once (`configureAudit()`), or
// it is made on first use from `AUDIT_URL` and `AUDIT_API_KEY`.

import type { AuditSink } from './api.js';
import { helpers } from './catalog.js';
import { AuditClient, type AuditClientOptions } from './client.js';
import type { AuditEvent } from './event.js';

let current: AuditClient | undefined;

/** Makes the default client from `options`, replacing any earlier one, and returns it. */
export function configureAudit(options: AuditClientOptions): AuditClient {
  current = new AuditClient(options);
  return current;
}

/** Uses `client` as the default client. */
export function setDefaultClient(client: AuditClient): void {
  current = client;
}

/** The default client, made from `AUDIT_URL` and `AUDIT_API_KEY` when none is set. */
export function getDefaultClient(): AuditClient & AuditSink {
  if (current) return current;
  const url = process.env.AUDIT_URL;
  if (!url) {
    throw new Error('no audit client: call configureAudit({ url }) or set AUDIT_URL');
  }
  current = new AuditClient({ url, apiKey: process.env.AUDIT_API_KEY });
  return current;
}

/** Records `event` through the default client (in the background); resolves with its
 * idempotency key. */
export function logAuditEvent(event: AuditEvent): Promise<string> {
  return getDefaultClient().enqueue(event);
}

const bound = helpers((event) => logAuditEvent(event));

/** `logProjectAction.created({ actor, project, metadata })` and the other helpers of the
 * catalog, through the default client. */
export const logProjectAction = bound.project;
export const logMemberAction = bound.member;
export const logRoleAction = bound.role;
export const logApiKeyAction = bound.apiKey;
export const logSessionAction = bound.session;
export const logSettingsAction = bound.settings;
export const logPolicyAction = bound.policy;
