// Events per day by outcome, a small stacked bar chart in SVG, from `auditLogStats`
// buckets (`{ start, outcome, count }`, UTC days).
import { html, svg } from 'lit';
import { OUTCOMES } from './filter.js';

const DAY = 86_400_000;
/** Past this many days the chart starts at the first day with events instead, and it
 * never shows more days than this. */
const MAX_EMPTY_DAYS = 400;

const floorDay = (time) => Math.floor(time / DAY) * DAY;
const isoDay = (time) => new Date(time).toISOString().slice(0, 10);

/**
 * The filter the chart asks for: the table's, with `occurredAfter` set to 30 whole days
 * before its end when it has none (counting events one by one, as some filters make the
 * server do, needs a window of at most 31 days).
 */
export function chartFilter(filter) {
  if (filter.occurredAfter) return filter;
  const end = filter.occurredBefore ? Date.parse(filter.occurredBefore) : Date.now();
  return { ...filter, occurredAfter: new Date(floorDay(end) - 30 * DAY).toISOString() };
}

/** The chart of `buckets` over the window of `filter` (as `chartFilter` made it). */
export function renderChart(buckets, filter) {
  const perDay = new Map();
  for (const { start, outcome, count } of buckets) {
    const day = floorDay(Date.parse(start));
    const counts = perDay.get(day) ?? { SUCCESS: 0, FAILURE: 0, DENIED: 0 };
    counts[outcome] += count;
    perDay.set(day, counts);
  }
  const last = floorDay(filter.occurredBefore ? Date.parse(filter.occurredBefore) - 1 : Date.now());
  let first = floorDay(Date.parse(filter.occurredAfter));
  // A long window starts at its first day with events, and never spans more than
  // MAX_EMPTY_DAYS days (a crafted link may ask for centuries).
  if ((last - first) / DAY > MAX_EMPTY_DAYS && perDay.size) first = Math.min(...perDay.keys());
  first = Math.max(first, last - MAX_EMPTY_DAYS * DAY);
  const days = [];
  for (let day = first; day <= last; day += DAY) days.push([day, perDay.get(day) ?? { SUCCESS: 0, FAILURE: 0, DENIED: 0 }]);

  const total = (counts) => OUTCOMES.reduce((sum, outcome) => sum + counts[outcome], 0);
  const max = Math.max(1, ...days.map(([, counts]) => total(counts)));
  const sums = Object.fromEntries(OUTCOMES.map((outcome) => [outcome, days.reduce((sum, [, counts]) => sum + counts[outcome], 0)]));
  const summary = `${isoDay(first)} to ${isoDay(last)} (UTC): ${OUTCOMES.map((o) => `${sums[o]} ${o.toLowerCase()}`).join(', ')}; at most ${max} a day.`;

  // Each day is 10 units wide and the chart 100 high; the SVG stretches to its box.
  const bars = days.map(([day, counts], index) => {
    let top = 100;
    const tooltip = `${isoDay(day)}: ${OUTCOMES.map((o) => `${counts[o]} ${o.toLowerCase()}`).join(', ')}`;
    return svg`<g><title>${tooltip}</title>
      <rect class="slot" x=${index * 10} y="0" width="10" height="100"></rect>
      ${OUTCOMES.filter((o) => counts[o]).map((outcome) => {
        const height = (counts[outcome] / max) * 100;
        top -= height;
        return svg`<rect class="bar ${outcome}" data-testid="bar" x=${index * 10 + 1} y=${top} width="8" height=${height}></rect>`;
      })}</g>`;
  });

  return html`<figure class="chart" data-testid="chart">
    <svg viewBox="0 0 ${days.length * 10} 100" preserveAspectRatio="none" role="img" aria-labelledby="chart-title chart-desc">
      <title id="chart-title">Events per day by outcome</title>
      <desc id="chart-desc">${summary}</desc>
      ${bars}
    </svg>
    <figcaption>
      <span class="muted">${isoDay(first)}</span>
      <ul class="legend" aria-label="Legend">
        ${OUTCOMES.map((o) => html`<li><span class="swatch ${o}"></span>${o.toLowerCase()} ${sums[o]}</li>`)}
      </ul>
      <span class="muted">max ${max}/day · ${isoDay(last)}</span>
    </figcaption>
  </figure>`;
}
