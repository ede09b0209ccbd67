// @audit-service/client: record audit events in audit-service from Node.js.

export type { AuditSink, Metrics, Report } from './api.js';
export type { HelperEvent, Helpers, Subject } from './catalog.js';
export { auditPlugin, fromArg, fromResult, type AuditPluginOptions, type AuditedOperation } from './apollo.js';
export { cleanId, cleanMetadata, cleanText, type CleanOptions } from './clean.js';
export { AuditClient, createAuditClient, type AuditClientOptions } from './client.js';
export { currentAudit, runWithAudit, type AuditScope } from './context.js';
export type { ErrorHandler } from './dead-letter.js';
export {
  configureAudit,
  getDefaultClient,
  logApiKeyAction,
  logAuditEvent,
  logMemberAction,
  logPolicyAction,
  logProjectAction,
  logRoleAction,
  logSessionAction,
  logSettingsAction,
  setDefaultClient,
} from './default.js';
export { Audited, type AuditedDecorator, type AuditedOptions } from './decorator.js';
export type { DeliveryOptions } from './delivery.js';
export {
  AuditError,
  BufferFullError,
  ClosedError,
  DeniedError,
  InvalidEventError,
  RejectedError,
  UnavailableError,
} from './errors.js';
export type {
  Actor,
  ActorType,
  AuditEvent,
  Outcome,
  RecordedEvent,
  RequestContext,
  StoredEvent,
  Target,
} from './event.js';
export {
  auditContext,
  auditMiddleware,
  fromBody,
  fromParam,
  fromResponse,
  type AuditHandler,
  type AuditMiddlewareOptions,
  type AuditRequest,
  type AuditRequestView,
  type AuditResponse,
  type TargetSource,
} from './express.js';
export { CONTRACT } from './generated/contract.js';
export type { AuditLogFilter, AuditLogOrder, EventsOptions, TailOptions } from './read.js';
export { ANONYMOUS } from './request.js';
export { checkInput, checkMetadata } from './rules.js';
export type { SpoolOptions } from './spool.js';
export type { Credentials } from './transport.js';
