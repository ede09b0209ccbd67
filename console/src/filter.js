// The filter in its three forms: the form's text (a "draft": what the inputs hold), the
// `AuditLogFilter` sent to the server, and the page's query string (`sync-url`).

export const ACTOR_TYPES = ['USER', 'SERVICE', 'SYSTEM'];
export const OUTCOMES = ['SUCCESS', 'FAILURE', 'DENIED'];

/** Comma-separated list fields, with their filter and query-string name. */
const LISTS = ['tenantIds', 'actorIds', 'actions', 'targetIds'];
/** Checkbox groups: filter field → allowed values. */
const CHOICES = { actorTypes: ACTOR_TYPES, outcomes: OUTCOMES };
const TEXTS = ['targetType', 'requestId'];
const TIMES = ['occurredAfter', 'occurredBefore'];

export const emptyDraft = () => ({
  tenantIds: '', actorIds: '', actorTypes: [], actions: '', targetType: '', targetIds: '',
  outcomes: [], occurredAfter: '', occurredBefore: '', requestId: '', metadata: '',
});

const split = (text) => text.split(',').map((item) => item.trim()).filter(Boolean);

/** A `datetime-local` value (local time) as RFC 3339 in UTC, or null when invalid. */
function localToUtc(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

/** An RFC 3339 instant as a `datetime-local` value in local time (to the second). */
function utcToLocal(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/**
 * The filter a draft stands for, and the problems found at its fields (`{ metadata:
 * 'not JSON: ...' }`); a draft with problems is not to be sent.
 */
export function draftToFilter(draft) {
  const filter = {};
  const errors = {};
  for (const name of LISTS) {
    const items = split(draft[name]);
    if (items.length) filter[name] = items;
  }
  for (const [name, allowed] of Object.entries(CHOICES)) {
    const chosen = allowed.filter((value) => draft[name].includes(value));
    if (chosen.length) filter[name] = chosen;
  }
  for (const name of TEXTS) {
    const text = draft[name].trim();
    if (text) filter[name] = text;
  }
  for (const name of TIMES) {
    if (!draft[name]) continue;
    const instant = localToUtc(draft[name]);
    if (instant) filter[name] = instant;
    else errors[name] = 'not a valid date and time';
  }
  if (draft.metadata.trim()) {
    try {
      const metadata = JSON.parse(draft.metadata);
      if (metadata && typeof metadata === 'object' && !Array.isArray(metadata)) filter.metadata = metadata;
      else errors.metadata = 'must be a JSON object, like {"env": "prod"}';
    } catch (error) {
      errors.metadata = `not JSON: ${error.message}`;
    }
  }
  if (filter.targetIds && !filter.targetType) errors.targetType = 'target ids need a target type';
  return { filter, errors };
}

/** The query-string parameters this element owns. */
const PARAMS = [...LISTS, ...Object.keys(CHOICES), ...TEXTS, ...TIMES, 'metadata', 'live'];

/** Reads the filter (as a draft, since the URL is typed by people too) and live state. */
export function readSearch(search) {
  const params = new URLSearchParams(search);
  const draft = emptyDraft();
  for (const name of LISTS) draft[name] = split(params.get(name) ?? '').join(', ');
  for (const name of [...TEXTS, 'metadata']) draft[name] = params.get(name) ?? '';
  for (const name of Object.keys(CHOICES)) draft[name] = split((params.get(name) ?? '').toUpperCase());
  // A `+` of a typed offset (`+02:00`) arrives as a space; an invalid time stays as typed,
  // for draftToFilter to report.
  for (const name of TIMES) {
    const value = (params.get(name) ?? '').replace(' ', '+');
    draft[name] = value && (utcToLocal(value) || value);
  }
  return { draft, live: params.get('live') === '1' };
}

/**
 * `search` with this element's parameters replaced by `filter` and `live`; others are kept.
 * Commas and colons stay readable (`outcomes=DENIED,FAILURE`), as do the `*` of prefixes.
 */
export function writeSearch(search, filter, live) {
  const params = new URLSearchParams(search);
  for (const name of PARAMS) params.delete(name);
  const pairs = [...params];
  for (const [name, value] of Object.entries(filter)) {
    pairs.push([name, Array.isArray(value) ? value.join(',') : typeof value === 'object' ? JSON.stringify(value) : value]);
  }
  if (live) pairs.push(['live', '1']);
  const encode = (text) => encodeURIComponent(text).replace(/%2C/g, ',').replace(/%3A/g, ':');
  return pairs.length ? `?${pairs.map(([name, value]) => `${encode(name)}=${encode(value)}`).join('&')}` : '';
}
