/**
 * A small SVG writer for gmdsizing --plot: write rate per interval (a step line) against the link's
 * payload capacity (a horizontal line), with axes and a legend. No dependency: the picture is a few
 * dozen elements and SVG is text.
 */
import type { Interval } from './sizing.js';

const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

/** Round axis maximum: 1, 2 or 5 times a power of ten above v. */
function niceMax(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function plotSvg(title: string, iv: Interval[], linkPayloadRate?: number, averageRate?: number): string {
  const W = 800, H = 420, L = 70, R = 20, T = 40, B = 50;
  const MiB = 1024 * 1024;
  const end = iv.length ? iv[iv.length - 1]!.start + iv[iv.length - 1]!.seconds : 1;
  const yMax = niceMax(Math.max(...iv.map((i) => i.writeRate), linkPayloadRate ?? 0, 1) / MiB * 1.05);
  const x = (t: number) => L + (t / end) * (W - L - R);
  const y = (rate: number) => H - B - (rate / MiB / yMax) * (H - T - B);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${esc(title)}</text>`,
  ];
  for (let k = 0; k <= 5; k++) {
    const v = (yMax * k) / 5;
    const yy = H - B - (k / 5) * (H - T - B);
    out.push(`<line x1="${L}" y1="${yy}" x2="${W - R}" y2="${yy}" stroke="#ddd"/>`, `<text x="${L - 6}" y="${yy + 4}" text-anchor="end">${+v.toFixed(2)}</text>`);
  }
  for (let k = 0; k <= 5; k++) {
    const t = (end * k) / 5;
    out.push(`<text x="${x(t)}" y="${H - B + 16}" text-anchor="middle">${+t.toFixed(1)}</text>`);
  }
  out.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`, `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`);
  out.push(`<text x="${W / 2}" y="${H - 12}" text-anchor="middle">seconds</text>`);
  out.push(`<text transform="translate(16 ${(H - B + T) / 2}) rotate(-90)" text-anchor="middle">MiB/s written</text>`);
  const pts: string[] = [];
  for (const i of iv) pts.push(`${x(i.start).toFixed(1)},${y(i.writeRate).toFixed(1)}`, `${x(i.start + i.seconds).toFixed(1)},${y(i.writeRate).toFixed(1)}`);
  out.push(`<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="${pts.join(' ')}"><title>write rate per interval</title></polyline>`);
  const legend: Array<[string, string, string]> = [['#1f77b4', '', 'write rate']];
  if (averageRate !== undefined) {
    out.push(`<line x1="${L}" y1="${y(averageRate)}" x2="${W - R}" y2="${y(averageRate)}" stroke="#2ca02c" stroke-dasharray="3 3"/>`);
    legend.push(['#2ca02c', '3 3', `average ${(averageRate / MiB).toFixed(1)} MiB/s`]);
  }
  if (linkPayloadRate !== undefined) {
    out.push(`<line x1="${L}" y1="${y(linkPayloadRate)}" x2="${W - R}" y2="${y(linkPayloadRate)}" stroke="#d62728" stroke-width="2" stroke-dasharray="8 4"/>`);
    legend.push(['#d62728', '8 4', `link payload capacity ${(linkPayloadRate / MiB).toFixed(1)} MiB/s`]);
  }
  legend.forEach(([color, dash, text], k) => {
    const ly = T + 8 + k * 16;
    out.push(`<line x1="${W - R - 250}" y1="${ly}" x2="${W - R - 220}" y2="${ly}" stroke="${color}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`, `<text x="${W - R - 214}" y="${ly + 4}">${esc(text)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
