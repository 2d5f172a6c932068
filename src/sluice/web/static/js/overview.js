// Overview: traffic, errors, time to first token, speed and cost over a window.

import { api, el, fmt, headers } from "./api.js";
import { color, lineChart } from "./charts.js";

const METRICS = [
  ["requests_per_min", "Requests per minute", (v) => fmt.num(v, v < 10 ? 1 : 0)],
  ["error_rate", "Error rate", (v) => `${(v * 100).toFixed(v < 0.1 ? 1 : 0)}%`],
  ["ttft_p50", "Time to first token, p50", fmt.ms],
  ["ttft_p95", "Time to first token, p95", fmt.ms],
  ["tokens_per_s", "Output tokens per second (per stream)", (v) => fmt.num(v, 0)],
  ["cost_usd", "Cost per interval (USD)", fmt.usd],
];

export async function overview(main) {
  const state = { window: new URLSearchParams(location.search).get("window") || "hour", by: "model" };
  const controls = el("div", { class: "controls" });
  const cards = el("div", { class: "cards", id: "cards" });
  const grid = el("div", { class: "charts", id: "charts" });
  const table = el("div", { class: "table-box", id: "by-group" });
  main.append(el("h1", { text: "Overview" }), controls, cards, grid, table);
  let charts = [];
  let timer = null;

  function segmented(name, options) {
    return el(
      "div",
      { class: "segmented", role: "group", "aria-label": name },
      options.map(([value, label]) =>
        el("button", {
          type: "button",
          text: label,
          "data-value": value,
          "aria-pressed": String(state[name] === value),
          onclick: () => {
            state[name] = value;
            drawControls();
            load();
          },
        }),
      ),
    );
  }

  function drawControls() {
    controls.replaceChildren(
      el("label", { text: "Window" }),
      segmented("window", [["hour", "Hour"], ["day", "Day"], ["week", "Week"]]),
      el("label", { text: "By" }),
      segmented("by", [["model", "Model"], ["key", "Key"]]),
    );
  }

  async function load() {
    const data = await api(`overview?window=${state.window}&by=${state.by}`);
    draw(data);
  }

  function draw(data) {
    const all = data.all;
    cards.replaceChildren(
      card("Requests", fmt.num(all.requests), `in the last ${data.window}`),
      card("Error rate", fmt.pct(all.error_rate), `${fmt.num(all.errors)} errors`),
      card("TTFT p50", fmt.ms(all.ttft_p50), "time to first token"),
      card("TTFT p95", fmt.ms(all.ttft_p95), "time to first token"),
      card("Tokens / s", fmt.num(all.tokens_per_s, 0), `${fmt.num(all.output_tokens)} output tokens`),
      card("Cost", fmt.usd(all.cost_usd), "priced requests"),
    );
    for (const chart of charts) chart.destroy();
    charts = [];
    grid.replaceChildren();
    const names = data.groups;
    for (const [metric, title, fmtY] of METRICS) {
      const box = el("div", { class: "chart", "data-metric": metric });
      grid.append(box);
      const series = [
        { label: "all", values: data.series["*"][metric], color: "#868e96", width: 2.5 },
        ...names.map((name, i) => ({
          label: name || "(none)",
          values: data.series[name][metric],
          color: color(i),
        })),
      ];
      charts.push(lineChart(box, { title, xs: data.times, series, fmtY }));
    }
    const label = state.by === "model" ? "Model" : "Key";
    const rows = data.totals.map((t) =>
      el(
        "tr",
        {},
        el("td", { text: t.group || "(none)" }),
        el("td", { class: "num", text: fmt.num(t.requests) }),
        el("td", { class: "num", text: fmt.pct(t.error_rate) }),
        el("td", { class: "num", text: fmt.ms(t.ttft_p50) }),
        el("td", { class: "num", text: fmt.ms(t.ttft_p95) }),
        el("td", { class: "num", text: fmt.num(t.tokens_per_s, 0) }),
        el("td", { class: "num", text: fmt.num(t.output_tokens) }),
        el("td", { class: "num", text: fmt.usd(t.cost_usd) }),
      ),
    );
    table.replaceChildren(
      el(
        "table",
        {},
        el(
          "thead",
          {},
          headers([label, ...["Requests", "Error rate", "TTFT p50", "TTFT p95", "Tokens/s", "Output tokens", "Cost"].map((h) => [h, "num"])]),
        ),
        el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 8, class: "empty", text: "No requests in this window yet." }))),
      ),
    );
  }

  drawControls();
  await load();
  timer = setInterval(() => load().catch(() => {}), 15000);
  return () => {
    clearInterval(timer);
    for (const chart of charts) chart.destroy();
  };
}

function card(title, value, note) {
  return el("div", { class: "card" }, el("div", { class: "card-title", text: title }), el("div", { class: "card-value", text: value }), el("div", { class: "card-note", text: note }));
}
