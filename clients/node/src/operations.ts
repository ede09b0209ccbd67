// The GraphQL operations the client sends. GraphQL Code Generator checks them against the
// repository's schema.graphql and types them (src/generated/graphql.ts), so a schema change
// that breaks one breaks the build.

export const LOG_ONE = /* GraphQL */ `
  mutation LogOne($input: AuditEventInput!) {
    logAuditEvent(input: $input) {
      id
      sequence
      hash
      occurredAt
    }
  }
`;

export const LOG_MANY = /* GraphQL */ `
  mutation LogMany($inputs: [AuditEventInput!]!) {
    logAuditEvents(inputs: $inputs) {
      id
    }
  }
`;

export const EVENTS = /* GraphQL */ `
  query Events($filter: AuditLogFilter, $first: Int, $after: String, $orderBy: AuditLogOrder) {
    auditLogs(filter: $filter, first: $first, after: $after, orderBy: $orderBy) {
      edges {
        cursor
        node {
          id
          tenantId
          cursor
          sequence
          occurredAt
          recordedAt
          actor { type id name }
          action
          target { type id name }
          outcome
          reason
          metadata
          hash
          previousHash
          idempotencyKey
          context { ipAddress userAgent requestId traceId }
        }
      }
      pageInfo {
        hasNextPage
        endCursor
      }
    }
  }
`;

// Written out rather than shared through a fragment: the server takes subscriptions
// without fragments only.
export const TAIL = /* GraphQL */ `
  subscription Tail($filter: AuditLogFilter, $after: String) {
    auditLogCreated(filter: $filter, after: $after) {
      id
      tenantId
      cursor
      sequence
      occurredAt
      recordedAt
      actor { type id name }
      action
      target { type id name }
      outcome
      reason
      metadata
      hash
      previousHash
      idempotencyKey
      context { ipAddress userAgent requestId traceId }
    }
  }
`;
