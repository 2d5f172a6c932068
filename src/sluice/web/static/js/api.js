// Talking to the gateway: the console's JSON, and formatting shared by the pages.

const csrf = document.querySelector('meta[name="csrf-token"]').content;

export const who = document.querySelector('meta[name="sluice-who"]').content;
export const openGateway = document.querySelector('meta[name="sluice-open"]').content === "true";

export function changeHeaders(extra = {}) {
  return { "x-csrf-token": csrf, ...extra };
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = method === "GET" ? {} : changeHeaders();
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`/ui/api/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    signal,
  });
  if (res.status === 401) {
    location.href = `/ui/login?next=${encodeURIComponent(location.pathname)}`;
    throw new Error("signed out");
  }
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const fmt = {
  ms(v) {
    if (v === null || v === undefined) return "–";
    return v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`;
  },
  num(v, digits = 0) {
    if (v === null || v === undefined) return "–";
    return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  },
  pct(v) {
    return v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`;
  },
  usd(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "$0";
    if (v < 0.01) return `$${v.toPrecision(2)}`;
    return `$${v.toFixed(v < 1 ? 4 : 2)}`;
  },
  time(unix) {
    if (!unix) return "–";
    const d = new Date(unix * 1000);
    return d.toLocaleString(undefined, { hour12: false });
  },
  clock(unix) {
    return new Date(unix * 1000).toLocaleTimeString(undefined, { hour12: false });
  },
};

// Table headers: a name, or [name, "num"] for a right-aligned number column.
export function headers(names) {
  return el("tr", {}, names.map((h) => (Array.isArray(h) ? el("th", { class: h[1], text: h[0] }) : el("th", { text: h }))));
}

export function badge(outcome) {
  return el("span", { class: `badge ${outcome}`, text: outcome.replace("_", " ") });
}
