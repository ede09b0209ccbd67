// The viewer's shadow-DOM styles; the custom properties it reads are listed at the top of
// audit-log-viewer.js. Widths are container queries on the element, so an embedded narrow
// viewer lays out like a narrow screen.
import { css } from 'lit';

export const styles = css`
  :host {
    --_bg: var(--alv-bg, #fff);
    --_fg: var(--alv-fg, #1d2330);
    --_muted: var(--alv-muted, #5f6b7a);
    --_accent: var(--alv-accent, #2457c5);
    --_border: var(--alv-border, #d8dde5);
    --_success: var(--alv-success, #16794a);
    --_failure: var(--alv-failure, #b25e00);
    --_denied: var(--alv-denied, #c02636);
    --_hover: var(--alv-row-hover, #f1f5fb);
    display: block;
    position: relative;
    height: 100%;
    container-type: inline-size;
    font: 14px/1.4 var(--alv-font, system-ui, -apple-system, 'Segoe UI', sans-serif);
    color: var(--_fg);
    background: var(--_bg);
  }
  *, *::before, *::after { box-sizing: border-box; }
  .frame { height: 100%; display: flex; flex-direction: column; }
  :focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
  [hidden] { display: none !important; }
  .visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); white-space: nowrap; }
  .muted { color: var(--_muted); }
  h1, h2, h3 { margin: 0; }

  button, input, textarea { font: inherit; color: inherit; }
  button {
    border: 1px solid var(--_border); border-radius: 6px; background: var(--_bg);
    padding: 0.3rem 0.75rem; cursor: pointer;
  }
  button:hover { background: var(--_hover); }
  button.primary { background: var(--_accent); border-color: var(--_accent); color: #fff; }
  button:disabled { opacity: 0.6; cursor: progress; }
  input[type='text'], input[type='password'], input[type='datetime-local'], textarea {
    width: 100%; min-width: 0; border: 1px solid var(--_border); border-radius: 6px;
    padding: 0.3rem 0.5rem; background: var(--_bg);
  }
  [aria-invalid='true'] { border-color: var(--_denied) !important; }
  .field-error { color: var(--_denied); font-size: 0.85em; }

  /* Header */
  header {
    display: flex; flex-wrap: wrap; align-items: center; gap: 0.5rem 1rem;
    padding: 0.6rem 1rem; border-bottom: 1px solid var(--_border);
  }
  header h1 { font-size: 1.1rem; margin-right: auto; }
  .who b { font-weight: 600; }
  .switch { display: inline-flex; align-items: center; gap: 0.35rem; cursor: pointer; }
  .switch input { accent-color: var(--_accent); width: 1rem; height: 1rem; }
  .downloads { display: inline-flex; gap: 0.4rem; }
  .status { font-size: 0.85em; color: var(--_muted); }
  .status::before { content: '●'; margin-right: 0.25rem; }
  .status.live::before { color: var(--_success); }
  .status.connecting::before, .status.reconnecting::before { color: var(--_failure); }

  /* Filters */
  form.filters {
    display: flex; flex-wrap: wrap; align-items: flex-start; gap: 0.5rem 0.75rem;
    padding: 0.6rem 1rem; border-bottom: 1px solid var(--_border);
  }
  .field { display: flex; flex-direction: column; gap: 0.15rem; flex: 1 1 11rem; min-width: 0; }
  .field.wide { flex: 2 1 16rem; }
  .field > span, fieldset legend { font-size: 0.8em; color: var(--_muted); }
  fieldset { border: 0; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 0 0.6rem; flex: 0 1 auto; }
  fieldset legend { padding: 0; width: 100%; margin-bottom: 0.15rem; }
  fieldset label { display: inline-flex; align-items: center; gap: 0.25rem; white-space: nowrap; }
  textarea { resize: vertical; min-height: 2.1rem; height: 2.1rem; font-family: ui-monospace, monospace; font-size: 0.9em; }
  .buttons { display: flex; gap: 0.5rem; align-self: flex-end; }

  /* Chart */
  .chart { margin: 0; padding: 0.5rem 1rem; border-bottom: 1px solid var(--_border); }
  .chart svg { display: block; width: 100%; height: 56px; }
  .chart .slot { fill: transparent; }
  .chart g:hover .slot { fill: var(--_hover); }
  .chart figcaption { display: flex; flex-wrap: wrap; justify-content: space-between; gap: 0.5rem; font-size: 0.8em; }
  .legend { display: flex; gap: 0.75rem; list-style: none; margin: 0; padding: 0; }
  .swatch { display: inline-block; width: 0.7em; height: 0.7em; border-radius: 2px; margin-right: 0.25rem; }
  .SUCCESS { fill: var(--_success); background: var(--_success); }
  .FAILURE { fill: var(--_failure); background: var(--_failure); }
  .DENIED { fill: var(--_denied); background: var(--_denied); }

  .banner {
    margin: 0.5rem 1rem 0; padding: 0.5rem 0.75rem; border-radius: 6px;
    border: 1px solid var(--_denied); color: var(--_denied); background: var(--_bg);
  }
  .summary { padding: 0.4rem 1rem; font-size: 0.85em; color: var(--_muted); }

  /* Table and detail */
  .main { flex: 1 1 auto; display: flex; min-height: 0; }
  .scroller { flex: 1 1 auto; min-width: 0; overflow: auto; }
  table { width: 100%; border-collapse: collapse; table-layout: fixed; }
  th {
    position: sticky; top: 0; z-index: 1; background: var(--_bg); text-align: left;
    font-weight: 600; font-size: 0.8em; color: var(--_muted); border-bottom: 1px solid var(--_border);
  }
  th, td { padding: 0.4rem 0.6rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  th:first-child, td:first-child { padding-left: 1rem; }
  col.time { width: 14rem; }
  col.outcome { width: 6.5rem; }
  tbody tr { border-bottom: 1px solid var(--_border); cursor: pointer; }
  tbody tr:hover { background: var(--_hover); }
  tbody tr:focus-visible { outline-offset: -2px; }
  tbody tr[aria-current='true'] { background: var(--_hover); box-shadow: inset 3px 0 var(--_accent); }
  tbody tr.fresh { animation: fresh 2s ease-out; }
  @keyframes fresh { from { background: color-mix(in srgb, var(--_accent) 22%, transparent); } }
  .kind { font-size: 0.75em; color: var(--_muted); text-transform: lowercase; margin-right: 0.3rem; }
  .badge {
    display: inline-block; padding: 0.05rem 0.5rem; border-radius: 999px; color: #fff;
    font-size: 0.75em; font-weight: 600; letter-spacing: 0.02em;
  }
  .withheld {
    font-size: 0.75em; font-style: italic; padding: 0 0.35rem; border-radius: 3px;
    border: 1px dashed var(--_muted); color: var(--_muted);
  }
  .withheld.erased { border-style: solid; text-decoration: line-through; }
  .streams { margin: 0 1rem 0.5rem; font-size: 0.9em; overflow-x: auto; }
  .streams summary { cursor: pointer; color: var(--_muted); }
  .streams table { margin: 0.25rem 0; }
  .streams td, .streams th { padding: 0.2rem 0.5rem; text-align: left; }
  .state.FAILING { color: var(--_failure); font-weight: 600; }
  .state.PAUSED { color: var(--_muted); }
  .placeholder { padding: 2rem 1rem; text-align: center; color: var(--_muted); }
  .sentinel { height: 1px; }

  aside.detail {
    flex: 0 0 28rem; max-width: 45%; overflow: auto; border-left: 1px solid var(--_border);
    padding: 0.75rem 1rem; background: var(--_bg);
  }
  .detail-head { display: flex; align-items: center; gap: 0.5rem; margin-bottom: 0.5rem; }
  .detail-head h2 { font-size: 1rem; margin-right: auto; }
  dl { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 0.25rem 0.75rem; margin: 0; }
  dt { color: var(--_muted); font-size: 0.85em; }
  dd { margin: 0; overflow-wrap: anywhere; }
  .mono { font-family: ui-monospace, monospace; font-size: 0.85em; }
  pre { margin: 0; padding: 0.5rem; border-radius: 6px; background: var(--_hover); overflow: auto; font-size: 0.85em; }
  .verify { margin-top: 0.75rem; display: flex; flex-wrap: wrap; align-items: center; gap: 0.5rem; }
  .valid { color: var(--_success); font-weight: 600; }
  .invalid { color: var(--_denied); font-weight: 600; }

  /* Sign-in */
  form.signin { max-width: 28rem; margin: 3rem auto; padding: 1.25rem; border: 1px solid var(--_border); border-radius: 8px; display: grid; gap: 0.75rem; }

  @container (max-width: 720px) {
    col.time { width: 9rem; }
    col.target, th.target, td.target { display: none; }
  }
  /* Narrow: one scrolling column, so that the filters never squeeze the table away. */
  @container (max-width: 480px) {
    .frame { display: block; overflow: auto; }
    .scroller { overflow: visible; }
    header, form.filters, .summary { padding-left: 0.6rem; padding-right: 0.6rem; }
    col.time { width: 6.5rem; }
    col.outcome { width: 5.25rem; }
    table { font-size: 0.9em; }
    td { white-space: normal; overflow-wrap: anywhere; }
    td.time { font-size: 0.9em; }
    .badge { white-space: nowrap; padding: 0.05rem 0.35rem; }
    .kind { display: none; }
    .field, .field.wide { flex-basis: 100%; }
    aside.detail { position: absolute; inset: 0; z-index: 2; max-width: none; border-left: 0; }
  }
`;
