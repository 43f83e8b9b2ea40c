// Canvas drawing of the live guidance chart (no ComfyUI import). One point per sampler step:
//   orange  mean ‖λ·c·G‖ / ‖O_s‖   (relative size of the guidance; own scale, right axis)
//   red     fraction of (token, head) whose ‖G‖ was capped at τ   (0–1, left axis)
//   blue    ‖Δ∥‖² / ‖Δ‖², the share of Δ's energy parallel to O_s  (0–1, left axis)
// O_s is the sparse retrieval over the text keys: in cross-attention the whole output, in joint attention
// (FLUX, Qwen-Image, SD3, ...) the text sub-operator O_s^t that GAG acts on (LEGEND_NOTE says so on the chart).

export const CHART_HEIGHT = 150;
export const LEGEND_NOTE = "Oₛ: sparse text retrieval (joint attention: over the text keys only, Oₛᵗ)";

export const SERIES = [
  { key: "relGuidance", label: "‖λcG‖/‖Oₛ‖", color: "#f5a623", unit: false },
  { key: "cappedFraction", label: "capped", color: "#e8505b", unit: true },
  { key: "parallelShare", label: "∥ share", color: "#4aa3f0", unit: true },
];

function niceMax(x) {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (x <= m * p) return m * p;
  return 10 * p;
}

function fmt(x) {
  if (x === null || x === undefined) return "–";
  if (x === 0) return "0";
  return Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(2);
}

function box(ctx, x, y, w, h, r) {
  ctx.beginPath();
  if (typeof ctx.roundRect === "function") ctx.roundRect(x, y, w, h, r);
  else ctx.rect(x, y, w, h);
}

/** Draw `data` (a ChartData) in the rectangle (x, y, w, h); `note` replaces the empty-chart hint. */
export function drawChart(ctx, data, x, y, w, h, note = null) {
  if (!(w > 40 && h > 40)) return;
  ctx.save();
  box(ctx, x, y, w, h, 6);
  ctx.fillStyle = "#161616";
  ctx.fill();
  ctx.strokeStyle = "#3a3a3a";
  ctx.lineWidth = 1;
  ctx.stroke();

  const points = data?.points ?? [];
  const n = Math.max(data?.steps ?? 0, points.length, 1);
  const px = x + 28, py = y + 38, pw = w - 58, ph = h - 56;
  const relMax = niceMax(Math.max(0, ...points.filter(Boolean).map((p) => p.relGuidance ?? 0)));
  const sx = (i) => px + (n <= 1 ? pw / 2 : (i / (n - 1)) * pw);
  const sy = (v, unit) => py + ph - Math.max(0, Math.min(1, unit ? v : v / relMax)) * ph;

  // legend with the latest values
  ctx.font = "10px sans-serif";
  ctx.textBaseline = "middle";
  let lx = x + 8;
  const last = data?.last;
  for (const s of SERIES) {
    ctx.fillStyle = s.color;
    ctx.fillRect(lx, y + 8, 8, 8);
    ctx.fillStyle = "#ccc";
    const text = `${s.label} ${fmt(last ? last[s.key] : null)}`;
    ctx.fillText(text, lx + 11, y + 12);
    lx += 15 + ctx.measureText(text).width;
  }
  ctx.font = "9px sans-serif";
  ctx.fillStyle = "#888";
  ctx.fillText(LEGEND_NOTE, x + 8, y + 25);
  ctx.font = "10px sans-serif";

  // grid and axes
  ctx.strokeStyle = "#2c2c2c";
  ctx.fillStyle = "#888";
  ctx.textAlign = "right";
  for (const f of [0, 0.5, 1]) {
    const gy = py + ph - f * ph;
    ctx.beginPath();
    ctx.moveTo(px, gy);
    ctx.lineTo(px + pw, gy);
    ctx.stroke();
    ctx.fillText(String(f), px - 4, gy);
  }
  ctx.textAlign = "left";
  ctx.fillStyle = SERIES[0].color;
  ctx.fillText(fmt(relMax), px + pw + 4, py);
  ctx.fillText("0", px + pw + 4, py + ph);
  ctx.fillStyle = "#888";
  ctx.textAlign = "center";
  const steps = data?.steps;
  ctx.fillText(steps ? `step (${data.count}/${steps})` : "step", px + pw / 2, py + ph + 10);

  // series
  for (const s of SERIES) {
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let open = false;
    for (let i = 0; i < points.length; i++) {
      const v = points[i]?.[s.key];
      if (v === null || v === undefined) {
        open = false;
        continue;
      }
      if (open) ctx.lineTo(sx(i), sy(v, s.unit));
      else ctx.moveTo(sx(i), sy(v, s.unit));
      open = true;
    }
    ctx.stroke();
    for (let i = 0; i < points.length; i++) {
      const v = points[i]?.[s.key];
      if (v === null || v === undefined) continue;
      ctx.beginPath();
      ctx.arc(sx(i), sy(v, s.unit), 2, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  if (!points.some(Boolean)) {
    ctx.fillStyle = "#777";
    ctx.textAlign = "center";
    ctx.fillText(note ?? "runs of this node will show their guidance here", px + pw / 2, py + ph / 2);
  }
  ctx.restore();
}
