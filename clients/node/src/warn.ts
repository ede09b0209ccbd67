// Reports, once per kind, that an integration could not record an event: the integrations
// never throw into the host, but a lost audit trail should not go unnoticed.

const warned = new Set<string>();

/** Emits a process warning `AuditWarning` for `code`, the first time only. */
export function warnOnce(code: string, message: string, error?: unknown): void {
  if (warned.has(code)) return;
  warned.add(code);
  const detail = error instanceof Error ? `: ${error.message}` : '';
  process.emitWarning(`${message}${detail}`, { type: 'AuditWarning', code });
}
