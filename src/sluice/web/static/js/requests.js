// Requests: the record, newest first, filtered and paged; new ones appear live.

import { api, badge, el, fmt, headers } from "./api.js";

const FILTERS = ["model", "key", "outcome", "status", "since", "until"];

export async function requests(main) {
  const params = new URLSearchParams(location.search);
  const facets = await api("facets");
  const form = el("form", { class: "filters", id: "filters" });
  const summary = el("p", { class: "muted", id: "summary" });
  const body = el("tbody", { id: "rows" });
  const older = el("button", { type: "button", id: "older", text: "Older →" });
  const newest = el("button", { type: "button", id: "newest", text: "← Newest" });
  const live = el("input", { type: "checkbox", id: "live", checked: true });
  main.append(
    el("h1", { text: "Requests" }),
    form,
    el("div", { class: "bar" }, summary, el("label", { class: "live" }, live, " live")),
    el(
      "div",
      { class: "table-box" },
      el(
        "table",
        { class: "requests" },
        el(
          "thead",
          {},
          headers(["Time", "Request", "API", "Model", "Key", "Outcome", ["Status", "num"], ["TTFT", "num"], ["Duration", "num"], ["Tokens in/out", "num"], ["Cost", "num"]]),
        ),
        body,
      ),
    ),
    el("div", { class: "pager" }, newest, older),
  );

  const select = (name, label, options) =>
    el(
      "label",
      {},
      label,
      el(
        "select",
        { name },
        el("option", { value: "", text: "any" }),
        options.map((o) => el("option", { value: o, text: o, selected: params.get(name) === o })),
      ),
    );
  const toLocal = (unix) => {
    if (!unix) return "";
    const d = new Date(Number(unix) * 1000);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  };
  form.append(
    select("model", "Model", facets.models),
    select("key", "Key", facets.keys),
    select("outcome", "Outcome", ["ok", "error", "rejected", "client_disconnected", "cancelled", "shutdown"]),
    el("label", {}, "Status", el("input", { name: "status", placeholder: "429 or 5xx", size: 8, value: params.get("status") || "" })),
    el("label", {}, "From", el("input", { name: "since", type: "datetime-local", value: toLocal(params.get("since")) })),
    el("label", {}, "To", el("input", { name: "until", type: "datetime-local", value: toLocal(params.get("until")) })),
    el("button", { type: "reset", class: "link", text: "clear" }),
  );

  // Pages: a stack of cursors (the first page has none); live polling on the first only.
  let stack = [];
  let first = null; // cursor of the newest row shown
  let timer = null;

  function query(extra = {}) {
    const q = new URLSearchParams();
    const data = new FormData(form);
    for (const name of FILTERS) {
      let value = (data.get(name) || "").trim();
      if (!value) continue;
      if (name === "since" || name === "until") value = String(new Date(value).getTime() / 1000);
      q.set(name, value);
    }
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return q;
  }

  function row(r, fresh = false) {
    const tokens = r.input_tokens === null && r.output_tokens === null ? "–" : `${fmt.num(r.input_tokens)} / ${fmt.num(r.output_tokens)}`;
    return el(
      "tr",
      { class: fresh ? "fresh" : null, "data-id": r.id },
      el("td", { text: fmt.time(r.started_at) }),
      el("td", {}, el("a", { href: `/ui/requests/${encodeURIComponent(r.id)}`, text: r.id })),
      el("td", { text: r.api || r.route }),
      el("td", { text: r.model || "–" }),
      el("td", { text: r.key_id || "–" }),
      el("td", {}, badge(r.outcome)),
      el("td", { class: "num", text: r.status }),
      el("td", { class: "num", text: fmt.ms(r.ttft_ms) }),
      el("td", { class: "num", text: fmt.ms(r.duration_ms) }),
      el("td", { class: "num", text: tokens }),
      el("td", { class: "num", text: fmt.usd(r.cost_usd) }),
    );
  }

  async function load() {
    const cursor = stack[stack.length - 1];
    const q = query(cursor ? { before: cursor.join(",") } : {});
    const filters = query();
    history.replaceState({}, "", `/ui/requests${filters.toString() ? "?" + filters : ""}`);
    const page = await api(`requests?${q}`);
    body.replaceChildren(...page.rows.map((r) => row(r)));
    if (!page.rows.length) body.append(el("tr", {}, el("td", { colspan: 11, class: "empty", text: "No requests match." })));
    if (!cursor) {
      first = page.rows.length ? page.rows[0].cursor : null;
      summary.textContent = `${fmt.num(page.total)} matching`;
    } else {
      summary.textContent = `page ${stack.length + 1}`;
    }
    older.disabled = !page.more;
    older.dataset.cursor = page.rows.length ? page.rows[page.rows.length - 1].cursor.join(",") : "";
    newest.disabled = stack.length === 0;
  }

  async function poll() {
    if (!live.checked || stack.length || document.hidden) return;
    const q = query(first ? { after: first.join(",") } : {});
    const page = await api(`requests?${q}`);
    if (!page.rows.length) return;
    if (!first) body.replaceChildren();
    first = page.rows[0].cursor;
    body.prepend(...page.rows.map((r) => row(r, true)));
    while (body.children.length > 200) body.lastChild.remove();
    const total = Number(summary.textContent.replace(/[^0-9]/g, "")) || 0;
    summary.textContent = `${fmt.num(total + page.rows.length)} matching`;
  }

  form.addEventListener("change", () => {
    stack = [];
    load();
  });
  form.addEventListener("submit", (e) => e.preventDefault());
  form.addEventListener("reset", () =>
    setTimeout(() => {
      stack = [];
      load();
    }),
  );
  older.addEventListener("click", () => {
    stack.push(older.dataset.cursor.split(",").map(Number));
    load();
  });
  newest.addEventListener("click", () => {
    stack = [];
    load();
  });

  await load();
  timer = setInterval(() => poll().catch(() => {}), 2000);
  return () => clearInterval(timer);
}
