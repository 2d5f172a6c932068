// Small uPlot helpers: one line chart per metric, resized with its box.

const PALETTE = ["#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599", "#c2255c", "#868e96"];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

function width(box) {
  return Math.max(240, box.clientWidth - 8);
}

// A chart in `box`; returns {chart, destroy}. `series` is [{label, values, color, dash}].
export function lineChart(box, { title, xs, series, yLabel, fmtY = (v) => v, time = true, height = 200 }) {
  const opts = {
    title,
    width: width(box),
    height,
    scales: { x: { time } },
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    series: [
      {},
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || color(i),
        width: s.width || 1.5,
        dash: s.dash,
        spanGaps: false,
        // Points where values are sparse: a lone value between gaps draws no line.
        points: { show: s.points ?? s.values.filter((v) => v !== null && v !== undefined).length < 40 },
        value: (u, v) => (v === null || v === undefined ? "–" : fmtY(v)),
      })),
    ],
    axes: [{}, { label: yLabel, size: 76, values: (u, vals) => vals.map((v) => fmtY(v)) }],
  };
  const chart = new uPlot(opts, [xs, ...series.map((s) => s.values)], box);
  const observer = new ResizeObserver(() => chart.setSize({ width: width(box), height }));
  observer.observe(box);
  return {
    chart,
    destroy() {
      observer.disconnect();
      chart.destroy();
    },
  };
}
