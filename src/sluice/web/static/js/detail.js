// One request: everything recorded, and its token timeline.

import { api, badge, el, fmt } from "./api.js";

const FIELDS = [
  ["id", "Request id"],
  ["started_at", "Started", (v) => fmt.time(v)],
  ["ended_at", "Ended", (v) => fmt.time(v)],
  ["method", "Method"],
  ["route", "Route"],
  ["api", "API"],
  ["model", "Model"],
  ["upstream", "Upstream"],
  ["stream", "Streamed", (v) => (v ? "yes" : "no")],
  ["client", "Client"],
  ["key_id", "Key"],
  ["outcome", "Outcome", (v) => badge(v)],
  ["status", "Status"],
  ["ttft_ms", "Time to first token", fmt.ms],
  ["duration_ms", "Duration", fmt.ms],
  ["input_tokens", "Input tokens", (v) => fmt.num(v)],
  ["output_tokens", "Output tokens", (v) => fmt.num(v)],
  ["usage_source", "Usage"],
  ["chunks", "Output deltas", (v) => fmt.num(v)],
  ["cost_usd", "Cost", fmt.usd],
  ["cache", "Cache"],
  ["attempts", "Upstream attempts"],
  ["resumes", "Resumed", (v) => fmt.num(v)],
  ["error", "Error"],
];

// A gap this much longer than the typical one (and at least STALL_MS) is a stall.
const STALL_FACTOR = 4;
const STALL_MS = 250;

export async function detail(main, { id }) {
  let record = null;
  for (let tries = 0; tries < 10 && !record; tries++) {
    try {
      record = await api(`requests/${encodeURIComponent(id)}`);
    } catch (err) {
      if (!String(err.message).includes("no such request") || tries === 9) throw err;
      await new Promise((r) => setTimeout(r, 500)); // records are written in batches
    }
  }
  const list = el("dl", { class: "fields", id: "fields" });
  for (const [name, label, show] of FIELDS) {
    const value = record[name];
    if (value === null || value === undefined || value === "") continue;
    const shown = show ? show(value) : String(value);
    list.append(el("dt", { text: label }), el("dd", {}, shown));
  }
  const timelineBox = el("div", { class: "chart wide", id: "timeline" });
  const stats = el("ul", { class: "stats", id: "timeline-stats" });
  main.append(
    el("p", {}, el("a", { href: "/ui/requests", text: "← Requests" })),
    el("h1", {}, "Request ", el("code", { text: record.id })),
    list,
    el("h2", { text: "Token timeline" }),
    el("p", { class: "muted", text: "When each batch of the answer arrived: the first token, the gaps between them, and stalls (shaded)." }),
    timelineBox,
    stats,
  );
  for (const [name, title] of [["prompt", "Prompt"], ["response", "Response"]]) {
    if (record[name]) main.append(el("h2", { text: title }), el("pre", { class: "content", text: record[name] }));
  }
  const marks = record.timeline;
  if (!marks.length) {
    timelineBox.replaceWith(el("p", { class: "empty", id: "timeline", text: "No timeline: this request streamed nothing (or was recorded before timelines were)." }));
    return null;
  }
  return drawTimeline(timelineBox, stats, marks, record);
}

function drawTimeline(box, stats, marks, record) {
  const xs = [];
  const total = [];
  const gaps = [];
  let count = 0;
  let previous = 0;
  let first = null;
  for (const [at, n] of marks) {
    count += n;
    xs.push(at / 1000);
    total.push(count);
    gaps.push(at - previous);
    previous = at;
    if (first === null && n > 0) first = at;
  }
  const later = gaps.slice(1).filter((g) => g > 0).sort((a, b) => a - b);
  const typical = later.length ? later[Math.floor(later.length / 2)] : 0;
  const limit = Math.max(STALL_MS, typical * STALL_FACTOR);
  const stalls = [];
  for (let i = 1; i < marks.length; i++) if (gaps[i] >= limit) stalls.push([xs[i - 1], xs[i]]);
  const longest = later.length ? later[later.length - 1] : 0;
  stats.replaceChildren(
    el("li", {}, el("b", { text: "First token " }), fmt.ms(first)),
    el("li", {}, el("b", { text: "Batches " }), fmt.num(marks.length)),
    el("li", {}, el("b", { text: "Typical gap " }), fmt.ms(typical)),
    el("li", {}, el("b", { text: "Longest gap " }), fmt.ms(longest)),
    el("li", { id: "stall-count" }, el("b", { text: "Stalls " }), `${stalls.length} (gaps ≥ ${fmt.ms(limit)})`),
    el("li", {}, el("b", { text: "Recorded in " }), `${fmt.num(record.timeline_bytes)} bytes`),
  );
  const marker = {
    hooks: {
      drawClear: [
        (u) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.fillStyle = "rgba(230, 73, 73, 0.18)";
          for (const [a, b] of stalls) {
            const x0 = u.valToPos(a, "x", true);
            const x1 = u.valToPos(b, "x", true);
            ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
          }
          ctx.restore();
        },
      ],
      draw: [
        (u) => {
          if (first === null) return;
          const ctx = u.ctx;
          const x = u.valToPos(first / 1000, "x", true);
          ctx.save();
          ctx.strokeStyle = "#2f9e44";
          ctx.lineWidth = 2 * devicePixelRatio;
          ctx.setLineDash([6, 4]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.fillStyle = "#2f9e44";
          ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
          ctx.fillText(`first token ${fmt.ms(first)}`, x + 6 * devicePixelRatio, u.bbox.top + 14 * devicePixelRatio);
          ctx.restore();
        },
      ],
    },
  };
  const width = () => Math.max(300, box.clientWidth - 8);
  const chart = new uPlot(
    {
      width: width(),
      height: 280,
      plugins: [marker],
      scales: { x: { time: false, range: (u, min, max) => [0, Math.max(max, 0.001)] }, gap: { auto: true } },
      series: [
        { label: "seconds", value: (u, v) => (v === null ? "–" : `${v.toFixed(3)} s`) },
        {
          label: "deltas so far",
          stroke: "#1f6feb",
          width: 2,
          paths: uPlot.paths.stepped({ align: 1 }),
          points: { show: false },
        },
        {
          label: "gap (ms)",
          scale: "gap",
          stroke: "#e8590c",
          width: 0,
          paths: () => null,
          points: { show: true, size: 5, fill: "#e8590c" },
        },
      ],
      axes: [
        { label: "seconds since the request started", values: (u, vals) => vals.map((v) => `${v}s`) },
        { label: "deltas" },
        { scale: "gap", side: 1, label: "gap (ms)", grid: { show: false } },
      ],
    },
    [xs, total, gaps],
    box,
  );
  const observer = new ResizeObserver(() => chart.setSize({ width: width(), height: 280 }));
  observer.observe(box);
  return () => {
    observer.disconnect();
    chart.destroy();
  };
}
