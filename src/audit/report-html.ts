import { bytes, count, tables } from './format.js';
import type { SummaryResult } from './summary.js';
import type { Bucket } from './timeline.js';

/**
 * `audit report`: the summary as one self-contained HTML page. Inline CSS and
 * an inline SVG chart drawn here: no script, style sheet, font or image from
 * anywhere else, so the file opens on an air-gapped machine. The layout is
 * one column on a phone and a grid on a desktop; dark mode follows the system.
 */

const CSS = `
:root{--bg:#fafaf8;--fg:#1d1d1f;--muted:#6b6b70;--line:#dcdcd8;--card:#fff;--allowed:#2e8540;--denied:#c62828;--failed:#e0a100;--bar:#c9d7ee}
@media (prefers-color-scheme:dark){:root{--bg:#141416;--fg:#ececee;--muted:#9a9aa2;--line:#35353a;--card:#1e1e22;--allowed:#4caf50;--denied:#ef5350;--failed:#ffc107;--bar:#33466b}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1200px;margin:0 auto;padding:16px}
h1{font-size:1.5rem;margin:.2em 0}
h2{font-size:1.05rem;margin:0 0 .6em}
.meta{color:var(--muted);margin:.2em 0 1em;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:10px;margin-bottom:14px}
.card,section.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card .v{font-size:1.5rem;font-weight:650;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:.85rem}
.card.allowed .v{color:var(--allowed)}.card.denied .v{color:var(--denied)}.card.failed .v{color:var(--failed)}
section.panel{margin-bottom:14px}
.chart{overflow-x:auto}
.chart svg{display:block;width:100%;height:auto}
.chart text{fill:var(--muted);font-size:14px}
.chart svg.narrow{display:none}
.chart svg.narrow text{font-size:19px}
@media (max-width:600px){.chart svg.wide{display:none}.chart svg.narrow{display:block}}
.chart .grid{stroke:var(--line);stroke-width:1}
rect.allowed{fill:var(--allowed)}rect.denied{fill:var(--denied)}rect.failed{fill:var(--failed)}
.legend{display:flex;flex-wrap:wrap;gap:14px;color:var(--muted);font-size:.9rem;margin-top:6px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.tables{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:14px}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:5px 6px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:.85rem}
td.key{overflow-wrap:anywhere;word-break:break-word;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88rem}
td.num,th.num{text-align:right;white-space:nowrap}
td.share{width:28%}
td.share div{height:.7em;border-radius:3px;background:var(--bar)}
.note{color:var(--muted);font-size:.85rem;margin:.5em 0 0}
.empty{color:var(--muted)}
`;

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function span(ms: number): string {
  if (ms % 86_400_000 === 0) return `${ms / 86_400_000} day${ms === 86_400_000 ? '' : 's'}`;
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000} hour${ms === 3_600_000 ? '' : 's'}`;
  return `${ms / 60_000} minute${ms === 60_000 ? '' : 's'}`;
}

/** A round axis maximum at or above `n`. */
function niceMax(n: number): number {
  if (n <= 5) return Math.max(n, 1);
  const p = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= n) return m * p;
  return 10 * p;
}

/** `2026-11-25 10:00:00` from an ISO time (UTC). */
function readable(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$|Z$/, '');
}

/** An axis value: 950, 1.5k, 20k, 3M. */
function compact(v: number): string {
  if (v < 1000) return String(Math.round(v));
  const [d, unit] = v < 1e6 ? [1e3, 'k'] : [1e6, 'M'];
  return `${Number((v / d).toFixed(1))}${unit}`;
}

function timeLabel(ms: number, width: number): string {
  const iso = new Date(ms).toISOString();
  return width >= 86_400_000 ? iso.slice(0, 10) : `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
}

/** The two layouts: wide for a desktop, and a taller one with fewer labels for a phone. */
const LAYOUTS = {
  wide: { W: 960, H: 280, left: 56, bottom: 34, ticks: 5 },
  narrow: { W: 480, H: 300, left: 50, bottom: 34, ticks: 3 },
};

/** Stacked bars of allowed, denied and failed attempts per interval. */
export function chartSvg(buckets: Bucket[], widthMs: number, layout: keyof typeof LAYOUTS = 'wide'): string {
  const { W, H, left, bottom, ticks: maxTicks } = LAYOUTS[layout];
  const right = 12;
  const top = 12;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const max = niceMax(Math.max(1, ...buckets.map((b) => b.allowed + b.denied + b.failed)));
  const step = plotW / Math.max(1, buckets.length);
  const barW = Math.max(0.6, step * (buckets.length > 120 ? 1 : 0.8));
  const y = (v: number) => top + plotH - (v / max) * plotH;
  const parts: string[] = [];
  for (const f of [0, 0.5, 1]) {
    const v = max * f;
    parts.push(
      `<line class="grid" x1="${left}" x2="${W - right}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}"/>`,
      `<text x="${left - 6}" y="${(y(v) + 5).toFixed(1)}" text-anchor="end">${esc(compact(v))}</text>`,
    );
  }
  const ticks = Math.min(buckets.length, maxTicks);
  for (let i = 0; i < ticks; i++) {
    const idx = ticks === 1 ? 0 : Math.round((i * (buckets.length - 1)) / (ticks - 1));
    const x = left + idx * step + step / 2;
    const anchor = i === 0 ? 'start' : i === ticks - 1 ? 'end' : 'middle';
    parts.push(`<text x="${(i === 0 ? left : i === ticks - 1 ? W - right : x).toFixed(1)}" y="${H - 6}" text-anchor="${anchor}">${esc(timeLabel(buckets[idx]!.start, widthMs))}</text>`);
  }
  buckets.forEach((b, i) => {
    const x = (left + i * step + (step - barW) / 2).toFixed(2);
    let base = 0;
    const rects: string[] = [];
    for (const series of ['allowed', 'denied', 'failed'] as const) {
      const v = b[series];
      if (v === 0) continue;
      const h = (v / max) * plotH;
      rects.push(`<rect class="${series}" x="${x}" y="${(y(base + v)).toFixed(2)}" width="${barW.toFixed(2)}" height="${Math.max(h, 0.5).toFixed(2)}" data-count="${v}"/>`);
      base += v;
    }
    if (rects.length === 0) return;
    const title = `${new Date(b.start).toISOString().slice(0, 16)}Z: ${b.allowed} allowed, ${b.denied} denied, ${b.failed} failed`;
    parts.push(`<g><title>${esc(title)}</title>${rects.join('')}</g>`);
  });
  return `<svg id="${layout === 'wide' ? 'timeline' : 'timeline-narrow'}" class="${layout}" viewBox="0 0 ${W} ${H}" role="img" aria-label="Allowed, denied and failed connection attempts per ${esc(span(widthMs))}" xmlns="http://www.w3.org/2000/svg">${parts.join('')}</svg>`;
}

function tableHtml(id: string, title: string, t: SummaryResult['denials_by_reason'], asBytes: boolean): string {
  if (t.rows.length === 0) return '';
  const max = t.rows[0]!.count || 1;
  const rows = t.rows
    .map(
      (r) =>
        `<tr><td class="key">${esc(r.key)}</td><td class="num" data-count="${r.count}">${esc(asBytes ? bytes(r.count) : count(r.count))}</td>` +
        `<td class="share"><div style="width:${((r.count / max) * 100).toFixed(1)}%"></div></td></tr>`,
    )
    .join('');
  const note = t.error ? `<p class="note">Approximate: ${esc(count(t.distinct))}+ distinct values; counts may be low by up to ${esc(count(t.error))}.</p>` : '';
  return `<section class="panel"><h2>${esc(title)}</h2><table id="${id}"><thead><tr><th>${id.includes('reason') ? 'reason' : id.includes('client') ? 'client' : id.includes('user') ? 'user' : 'destination'}</th><th class="num">${asBytes ? 'bytes' : 'count'}</th><th></th></tr></thead><tbody>${rows}</tbody></table>${note}</section>`;
}

export function reportHtml(s: SummaryResult, generated = new Date()): string {
  const cards = [
    ['attempts', 'Connection attempts', count(s.attempts)],
    ['allowed', 'Allowed', count(s.events.allowed)],
    ['denied', 'Denied', count(s.denied)],
    ['failed', 'Failed', count(s.events.failed)],
    ...(s.would_deny ? [['would-deny', 'Report mode: would deny', count(s.would_deny)]] : []),
    ['bytes', 'Bytes up / down', `${bytes(s.bytes.up)} / ${bytes(s.bytes.down)}`],
  ]
    .map(([cls, k, v]) => `<div class="card ${cls}" id="card-${cls}"><div class="v">${esc(v!)}</div><div class="k">${esc(k!)}</div></div>`)
    .join('');
  const input = s.input;
  const files = input.sources.map((x) => `${x.name}${x.gzip ? ' (gzip)' : ''}${x.error ? ` (broke off: ${x.error})` : ''}`).join(', ');
  const buckets = s.timeline.buckets;
  const chart = buckets.length
    ? `<div class="chart">${chartSvg(buckets, s.timeline.width_ms)}${chartSvg(buckets, s.timeline.width_ms, 'narrow')}</div>` +
      `<div class="legend"><span><i style="background:var(--allowed)"></i>allowed</span><span><i style="background:var(--denied)"></i>denied</span><span><i style="background:var(--failed)"></i>failed</span><span>one bar per ${esc(span(s.timeline.width_ms))} (UTC)</span></div>`
    : '<p class="empty">No connection attempts in this range.</p>';
  const body = tables(s)
    .map((t) => tableHtml(t.id, t.title, t.table, t.bytes ?? false))
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>wa-egress audit report</title><style>${CSS}</style></head>
<body><main>
<h1>wa-egress audit report</h1>
<p class="meta">${s.first ? `${esc(readable(s.first))} to ${esc(readable(s.last!))} UTC` : 'No records'}${s.window.since || s.window.until ? ` · window ${esc(s.window.since ? readable(s.window.since) : '…')} to ${esc(s.window.until ? readable(s.window.until) : '…')}` : ''}<br>
${esc(count(input.records))} records read from ${esc(files || 'no input')} · <span id="malformed">${esc(count(input.malformed))}</span> malformed lines · generated ${esc(generated.toISOString())}</p>
<div class="cards">${cards}</div>
<section class="panel"><h2>Connection attempts per ${esc(span(s.timeline.width_ms))}</h2>${chart}</section>
<div class="tables">${body || '<p class="empty">No denials, failures or traffic to list.</p>'}</div>
</main></body></html>
`;
}
