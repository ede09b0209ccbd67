// Typed helpers for the catalog's actions (contract/contract.json): `audit.project.created({
// actor, project: 'p-1' })` records `project.created` on the target `project/p-1`, with the
// catalog's outcome where it has one (`session.loginFailed` is a `FAILURE`).

import type { AuditEvent, Target } from './event.js';
import { CONTRACT } from './generated/contract.js';

type Entry = (typeof CONTRACT.catalog)[number];

/** `api_key` as `apiKey`. */
type Camel<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<Camel<Tail>>}`
  : S;

/** The resource a helper acts on: its id, or its id and name. */
export type Subject = string | { id: string; name?: string };

/** A helper's event: an event without its action, and the resource under the family's
 * name (`project`, `member`, `apiKey`, ...). */
export type HelperEvent<Family extends string> = Omit<AuditEvent, 'action'> & {
  [K in Camel<Family>]?: Subject;
};

/** The helpers of every family, by family and action: `project.created`. */
export type Helpers<Result> = {
  [F in Entry['family'] as Camel<F>]: {
    [H in Extract<Entry, { family: F }>['helper'] as Camel<H>]: (event: HelperEvent<F>) => Result;
  };
};

function camel(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_, letter: string) => letter.toUpperCase());
}

/** The helpers, each turning its event into a full one and passing it to `record`. */
export function helpers<Result>(record: (event: AuditEvent) => Result): Helpers<Result> {
  const families: Record<string, Record<string, (event: HelperEvent<string>) => Result>> = {};
  for (const entry of CONTRACT.catalog) {
    const family = camel(entry.family);
    const subjectKey = family;
    (families[family] ??= {})[camel(entry.helper)] = (event) => {
      const { [subjectKey]: subject, ...rest } = event as AuditEvent & Record<string, Subject | undefined>;
      const full: AuditEvent = { ...rest, action: entry.action };
      if (full.target === undefined && subject !== undefined) full.target = target(entry.targetType, subject);
      if (full.outcome === undefined && entry.outcome !== null) full.outcome = entry.outcome;
      return record(full);
    };
  }
  return families as unknown as Helpers<Result>;
}

function target(type: string, subject: Subject): Target {
  return typeof subject === 'string' ? { type, id: subject } : { type, ...subject };
}
