// What the integrations read from a request, made safe to record: the actor (from a user
// object or id), the client's address, the request id and the user agent.

import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';

import { cleanId, cleanText, idText } from './clean.js';
import type { Actor, ActorType, Target } from './event.js';

const ACTOR_TYPES: ReadonlySet<string> = new Set<ActorType>(['USER', 'SERVICE', 'SYSTEM']);

/** The actor of a request no one is signed in to. The schema has no anonymous actor type,
 * so it is a user with the id `anonymous`. */
export const ANONYMOUS: Readonly<Actor> = Object.freeze({ type: 'USER', id: 'anonymous' });

/** An actor from a user id (string or number) or a user object with `id` (or `sub`) and
 * optional `type` and `name`, cleaned; `undefined` when there is none. */
export function toCleanActor(value: unknown): Actor | undefined {
  try {
    const plain = idText(value);
    if (plain !== undefined) return { type: 'USER', id: cleanId(plain, 256) };
    if (typeof value !== 'object' || value === null) return undefined;
    const user = value as Record<string, unknown>;
    const id = idText(user.id) ?? idText(user.sub);
    if (id === undefined) return undefined;
    const type = typeof user.type === 'string' && ACTOR_TYPES.has(user.type) ? (user.type as ActorType) : 'USER';
    const actor: Actor = { type, id: cleanId(id, 256) };
    const name = typeof user.name === 'string' ? cleanText(user.name, 256).trim() : '';
    if (name !== '') actor.name = name;
    return actor;
  } catch {
    return undefined; // a hostile getter
  }
}

/** A target with a cleaned type and id, or `undefined` when the id is missing or blank. */
export function toCleanTarget(value: Target | undefined): Target | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  try {
    const id = idText(value.id);
    if (id === undefined) return undefined;
    const target: Target = { type: cleanId(value.type, 64), id: cleanId(id, 256) };
    const name = typeof value.name === 'string' ? cleanText(value.name, 256).trim() : '';
    if (name !== '') target.name = name;
    return target;
  } catch {
    return undefined;
  }
}

/** `address` as the server takes it (IPv4-mapped IPv6 as IPv4, no zone id), or `undefined`
 * when it is not an IP address. */
export function cleanIp(address: unknown): string | undefined {
  if (typeof address !== 'string') return undefined;
  let ip = address.trim();
  const zone = ip.indexOf('%');
  if (zone >= 0) ip = ip.slice(0, zone);
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(ip);
  if (mapped?.[1] !== undefined) ip = mapped[1];
  return isIP(ip) === 0 ? undefined : ip;
}

const REQUEST_ID = /^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$/;

/** The request id a client sent, when it is 1 to 256 printable ASCII characters (safe to
 * record and to echo in a header), else a new UUID. */
export function requestIdOf(header: unknown): string {
  const given = Array.isArray(header) ? header[0] : header;
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
}

/** A header's single value: the first of repeated ones. */
export function headerText(value: unknown): string | undefined {
  const first: unknown = Array.isArray(value) ? value[0] : value;
  return typeof first === 'string' ? first : undefined;
}

/** The user agent, cleaned and cut to the server's 1,024 characters. */
export function cleanUserAgent(value: unknown): string | undefined {
  const text = headerText(value);
  if (text === undefined) return undefined;
  const agent = cleanText(text, 1024);
  return agent === '' ? undefined : agent;
}

/** An error's message as a reason: cleaned and cut to the server's 4,096 characters. */
export function reasonOf(error: unknown): string {
  let message: unknown;
  try {
    message = error instanceof Error ? error.message : error;
  } catch {
    message = undefined;
  }
  const reason = cleanText(message, 4096);
  return reason.trim() === '' ? 'error' : reason;
}

/** `source[name]`, or `undefined` when `source` is not an object or reading it throws (a
 * hostile getter or proxy). */
export function field(source: unknown, name: string): unknown {
  if (typeof source !== 'object' || source === null) return undefined;
  try {
    return (source as Record<string, unknown>)[name];
  } catch {
    return undefined;
  }
}

/** The target `{ type, id }` of an id read from a request or a result, if it is one. */
export function targetOf(type: string, id: unknown): Target | undefined {
  const text = idText(id);
  return text === undefined ? undefined : { type, id: text };
}
