/**
 * Candlestick + volume chart on a <canvas>, HiDPI aware, with a crosshair callback.
 * Korean convention: rising candles red, falling blue.
 * @module chart
 */

const COLORS = {
  bg: '#ffffff', grid: '#eef0f3', axis: '#6b7280', up: '#d6303a', down: '#1f63d6', flat: '#6b7280',
  cross: '#374151', crossBg: '#111827', crossText: '#ffffff',
};
const PAD = { left: 8, right: 72, top: 12, bottom: 26 };

/** Number of decimals to show for prices: KRW none, others as many as the data carries (at most 4). */
export function priceDecimals(candles, currency) {
  if (currency === 'KRW') return 0;
  let d = 0;
  for (const c of candles) {
    for (const v of [c.open, c.high, c.low, c.close]) {
      const s = String(v);
      const i = s.indexOf('.');
      if (i >= 0) d = Math.max(d, s.length - i - 1);
    }
  }
  return Math.min(d, 4);
}

/** Formats a price with thousands separators and a fixed number of decimals. */
export function formatPrice(value, decimals) {
  return Number(value).toLocaleString('ko-KR', { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

/** Formats a volume: 1,234,567 below 100만, 1,234만 / 1.2억 above. */
export function formatVolume(value, compact = false) {
  const v = Number(value);
  if (!compact || v < 1e6) return v.toLocaleString('ko-KR');
  if (v >= 1e8) return `${(v / 1e8).toLocaleString('ko-KR', { maximumFractionDigits: 1 })}억`;
  return `${Math.round(v / 1e4).toLocaleString('ko-KR')}만`;
}

const dateFmt = new Intl.DateTimeFormat('ko-KR', { year: 'numeric', month: 'long', day: 'numeric', weekday: 'short', timeZone: 'UTC' });

/** "2024년 1월 2일 (화)" for "2024-01-02". */
export function formatDate(iso) {
  const d = new Date(`${iso}T00:00:00Z`);
  if (Number.isNaN(d.getTime())) return String(iso);
  const parts = dateFmt.formatToParts(d);
  const get = (t) => parts.find((p) => p.type === t)?.value ?? '';
  return `${get('year')}년 ${get('month')} ${get('day')}일 (${get('weekday')})`.replace('월월', '월');
}

/** A candle's date as its period reads it: "2024년 7월" for a month's candle (`M`), "2024년" for a year's (`Y`), else
 *  the day, "2024년 7월 1일 (월)" (a day's or a week's candle). */
export function formatCandleDate(iso, period) {
  const [y, m] = String(iso).split('-').map(Number);
  if (period === 'Y' && y) return `${y}년`;
  if (period === 'M' && y && m) return `${y}년 ${m}월`;
  return formatDate(iso);
}

function niceStep(range, target) {
  const raw = range / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
}

/**
 * A chart bound to one canvas. `setData` then it redraws on resize and on pointer moves.
 */
export class CandleChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onHover?: (candle: object|null, index: number, x: number, y: number) => void}} [options]
   */
  constructor(canvas, options = {}) {
    this.canvas = canvas;
    this.onHover = options.onHover ?? (() => {});
    this.data = null;
    this.hover = null;
    this.decimals = 0;
    this.layout = null;
    // A mouse (or a pen) shows the crosshair where it hovers and hides it when it leaves. A finger has no hover: a
    // tap or a horizontal drag puts the crosshair on a candle, and it stays after the finger lifts (which is also a
    // `pointerleave`) — until a tap elsewhere on the page, Esc, or the focus leaving the chart. The canvas lets the
    // page scroll vertically (`touch-action: pan-y`): a vertical swipe over the chart scrolls the page.
    const touch = (e) => e.pointerType === 'touch';
    canvas.addEventListener('pointerdown', (e) => this.pointer(e));
    canvas.addEventListener('pointermove', (e) => { if (!touch(e) || e.buttons) this.pointer(e); });
    canvas.addEventListener('pointerleave', (e) => { if (!touch(e)) this.clearSelection(); });
    canvas.ownerDocument.addEventListener('pointerdown', (e) => {
      if (e.target !== canvas && touch(e)) this.clearSelection();
    });
    // The keyboard reads the candles one by one, as the pointer does: ←/→ a candle, PageUp/PageDown 20, Home/End
    // the first and the last, Esc away (the canvas is focusable in the page).
    canvas.addEventListener('keydown', (e) => this.key(e));
    canvas.addEventListener('blur', () => this.clearSelection());
    if (typeof ResizeObserver !== 'undefined') new ResizeObserver(() => this.draw()).observe(canvas);
    if (window.matchMedia) {
      // redraw when the device pixel ratio changes (moving to another screen, zooming)
      const watch = () => {
        const mq = window.matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`);
        mq.addEventListener('change', () => { this.draw(); watch(); }, { once: true });
      };
      watch();
    }
  }

  /** @param {{candles: object[], currency: string}|null} data */
  setData(data) {
    this.data = data;
    this.hover = null;
    this.decimals = data ? priceDecimals(data.candles, data.currency) : 0;
    this.draw();
  }

  pointer(event) {
    if (!this.layout || !this.data?.candles.length) return;
    const rect = this.canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const { plotLeft, step, n } = this.layout;
    const i = Math.max(0, Math.min(n - 1, Math.floor((x - plotLeft) / step)));
    this.hover = { i, x, y };
    this.draw();
    this.onHover(this.data.candles[i], i, x, y);
  }

  /** The candle the crosshair is on, or null. */
  get selected() { return this.hover?.i ?? null; }

  /** Puts the crosshair on candle `i` (clamped), at its close, and tells `onHover`. */
  select(i) {
    if (!this.layout || !this.data?.candles.length) return;
    const { plotLeft, step, n, yP } = this.layout;
    const k = Math.max(0, Math.min(n - 1, i));
    const c = this.data.candles[k];
    const x = plotLeft + step * k + step / 2;
    const y = yP(c.close);
    this.hover = { i: k, x, y };
    this.draw();
    this.onHover(c, k, x, y);
  }

  clearSelection() {
    if (!this.hover) return;
    this.hover = null;
    this.draw();
    this.onHover(null, -1, 0, 0);
  }

  key(event) {
    const n = this.data?.candles.length ?? 0;
    if (!n) return;
    const at = this.selected;
    const from = (delta) => (at === null ? n - 1 : at + delta);
    const next = { ArrowLeft: from(-1), ArrowRight: from(1), PageUp: from(-20), PageDown: from(20), Home: 0, End: n - 1 }[event.key];
    if (next !== undefined) {
      event.preventDefault();
      this.select(next);
    } else if (event.key === 'Escape') {
      this.clearSelection();
    }
  }

  draw() {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = COLORS.bg;
    ctx.fillRect(0, 0, w, h);
    const candles = this.data?.candles ?? [];
    if (!candles.length) { this.layout = null; return; }

    const plotLeft = PAD.left;
    const plotRight = w - PAD.right;
    const plotW = Math.max(10, plotRight - plotLeft);
    const totalH = h - PAD.top - PAD.bottom;
    const volH = Math.round(totalH * 0.22);
    const gap = 10;
    const priceTop = PAD.top;
    const priceH = totalH - volH - gap;
    const volTop = priceTop + priceH + gap;
    const n = candles.length;
    const step = plotW / n;
    const body = Math.max(1, Math.min(14, step * 0.7));

    let lo = Infinity, hi = -Infinity, vmax = 0;
    for (const c of candles) {
      lo = Math.min(lo, c.low); hi = Math.max(hi, c.high); vmax = Math.max(vmax, c.volume ?? 0);
    }
    if (hi === lo) { hi += 1; lo -= 1; }
    const padP = (hi - lo) * 0.06;
    hi += padP; lo -= padP;
    const yP = (p) => priceTop + (hi - p) / (hi - lo) * priceH;
    const yV = (v) => volTop + volH - (vmax ? v / vmax * volH : 0);
    const xC = (i) => plotLeft + step * i + step / 2;
    this.layout = { plotLeft, step, n, yP, priceTop, priceH, volTop, volH, hi, lo };

    // grid + price axis
    ctx.font = '11px system-ui, "Noto Sans CJK KR", sans-serif';
    ctx.textBaseline = 'middle';
    // Never finer than the prices' own last digit (a flat KRW chart would label 78,200 twice at a step of 0.5), and
    // each label with the digits its step needs.
    const ps = Math.max(niceStep(hi - lo, 6), 10 ** -this.decimals);
    const labelDecimals = Math.max(0, -Math.floor(Math.log10(ps) + 1e-9));
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.axis;
    ctx.lineWidth = 1;
    for (let p = Math.ceil(lo / ps) * ps; p <= hi; p += ps) {
      const y = Math.round(yP(p)) + 0.5;
      ctx.beginPath(); ctx.moveTo(plotLeft, y); ctx.lineTo(plotRight, y); ctx.stroke();
      ctx.fillText(formatPrice(p, labelDecimals), plotRight + 6, y);
    }
    ctx.beginPath();
    ctx.moveTo(plotLeft, volTop - gap / 2 + 0.5); ctx.lineTo(plotRight, volTop - gap / 2 + 0.5); ctx.stroke();
    ctx.fillText(formatVolume(vmax, true), plotRight + 6, volTop + 6);

    // date axis: a label where the month changes (or the year, for long ranges)
    ctx.textBaseline = 'alphabetic';
    ctx.textAlign = 'center';
    const longRange = n > 0 && (Date.parse(candles[n - 1].date) - Date.parse(candles[0].date)) > 400 * 86400000;
    let lastLabelX = -Infinity;
    for (let i = 0; i < n; i++) {
      const d = candles[i].date;
      const prev = i > 0 ? candles[i - 1].date : null;
      const boundary = i === 0 || (longRange ? d.slice(0, 4) !== prev.slice(0, 4) : d.slice(0, 7) !== prev.slice(0, 7));
      const x = xC(i);
      if (!boundary || x - lastLabelX < 56) continue;
      lastLabelX = x;
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath(); ctx.moveTo(Math.round(x) + 0.5, priceTop); ctx.lineTo(Math.round(x) + 0.5, volTop + volH); ctx.stroke();
      const [yy, mm, dd] = d.split('-').map(Number);
      const label = i === 0 ? (longRange ? `${yy}.${mm}` : `${mm}.${dd}`) : longRange ? `${yy}년` : `${mm}월`;
      const half = ctx.measureText(label).width / 2;
      ctx.fillText(label, Math.min(plotRight - half, Math.max(plotLeft + half, x)), h - 8);
    }
    ctx.textAlign = 'left';

    // candles + volume
    for (let i = 0; i < n; i++) {
      const c = candles[i];
      const color = c.close > c.open ? COLORS.up : c.close < c.open ? COLORS.down : COLORS.flat;
      const x = xC(i);
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, yP(c.high)); ctx.lineTo(Math.round(x) + 0.5, yP(c.low)); ctx.stroke();
      const top = yP(Math.max(c.open, c.close));
      const bh = Math.max(1, Math.abs(yP(c.open) - yP(c.close)));
      ctx.fillRect(x - body / 2, top, body, bh);
      ctx.globalAlpha = 0.55;
      const vy = yV(c.volume ?? 0);
      ctx.fillRect(x - body / 2, vy, body, volTop + volH - vy);
      ctx.globalAlpha = 1;
    }

    // crosshair
    if (this.hover) {
      const { i, y } = this.hover;
      const x = Math.round(xC(i)) + 0.5;
      ctx.strokeStyle = COLORS.cross;
      ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(x, priceTop); ctx.lineTo(x, volTop + volH); ctx.stroke();
      if (y >= priceTop && y <= priceTop + priceH) {
        const yy = Math.round(y) + 0.5;
        ctx.beginPath(); ctx.moveTo(plotLeft, yy); ctx.lineTo(plotRight, yy); ctx.stroke();
        ctx.setLineDash([]);
        const price = hi - (y - priceTop) / priceH * (hi - lo);
        ctx.fillStyle = COLORS.crossBg;
        ctx.fillRect(plotRight + 1, yy - 9, PAD.right - 2, 18);
        ctx.fillStyle = COLORS.crossText;
        ctx.textBaseline = 'middle';
        ctx.fillText(formatPrice(price, this.decimals), plotRight + 6, yy);
      }
      ctx.setLineDash([]);
    }
  }
}
