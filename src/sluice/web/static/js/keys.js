// Keys: create (the key is shown once), revoke, limits, spend against budget.

import { api, el, fmt, openGateway } from "./api.js";

export async function keys(main) {
  const created = el("div", { id: "created" });
  const error = el("p", { class: "error", role: "alert", hidden: true });
  const form = el(
    "form",
    { class: "create", id: "create-key" },
    el("label", {}, "Name", el("input", { name: "name", required: true, placeholder: "web-app" })),
    el("label", {}, "Models", el("input", { name: "models", placeholder: "all (or a,b)" })),
    el("label", {}, "Requests / min", el("input", { name: "rpm", type: "number", min: 1, step: 1 })),
    el("label", {}, "Tokens / min", el("input", { name: "tpm", type: "number", min: 1, step: 1 })),
    el("label", {}, "Budget (USD)", el("input", { name: "budget_usd", type: "number", min: 0, step: "any" })),
    el("label", {}, "Expires", el("input", { name: "expires", placeholder: "never (or 30d, 2026-12-31)" })),
    el("label", { class: "check" }, el("input", { name: "admin", type: "checkbox" }), "admin (may sign in here)"),
    el("button", { type: "submit", text: "Create key" }),
  );
  const body = el("tbody", { id: "keys" });
  main.append(
    ...[
    el("h1", { text: "Keys" }),
    openGateway
      ? el("p", { class: "notice", text: "This gateway has no keys yet and serves anyone on loopback. The first key turns authentication on — for this console too: make it an admin key (or set SLUICE_MASTER_KEY) to sign in again." })
      : null,
    el("h2", { text: "New key" }),
    form,
    error,
    created,
    el("h2", { text: "All keys" }),
    el(
      "div",
      { class: "table-box" },
      el(
        "table",
        { class: "keys" },
        el("thead", {}, el("tr", {}, ["Id", "Name", "Key", "Limits", "Spend / budget", "Expires", "Status", ""].map((h) => el("th", { text: h })))),
        body,
      ),
    ),
    ].filter(Boolean),
  );

  async function load() {
    const data = await api("keys");
    body.replaceChildren(...data.keys.map(row));
    if (!data.keys.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "empty", text: "No keys yet." })));
  }

  function row(k) {
    const now = Date.now() / 1000;
    let status = k.revoked ? "revoked" : k.expires_at && k.expires_at <= now ? "expired" : "active";
    const limits = [k.models.length ? `models: ${k.models.join(", ")}` : "all models", k.rpm ? `${k.rpm} rpm` : null, k.tpm ? `${k.tpm} tpm` : null].filter(Boolean).join(" · ");
    let spend = fmt.usd(k.spend_usd);
    let bar = null;
    if (k.budget_usd !== null) {
      spend += ` of ${fmt.usd(k.budget_usd)}`;
      const used = k.budget_usd > 0 ? Math.min(1, k.spend_usd / k.budget_usd) : 1;
      bar = el("progress", { max: 1, value: used, title: `${(used * 100).toFixed(1)} % of the budget` });
    }
    const revoke = el("button", {
      type: "button",
      class: "danger",
      text: "Revoke",
      "data-revoke": k.id,
      onclick: async () => {
        if (!confirm(`Revoke ${k.id} (${k.name})? Clients using it are refused within seconds.`)) return;
        await api(`keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
        await load();
      },
    });
    const edit = el("button", { type: "button", text: "Limits", "data-edit": k.id, onclick: () => editRow(tr, k) });
    const tr = el(
      "tr",
      { "data-key": k.id },
      el("td", {}, el("code", { text: k.id })),
      el("td", { text: k.name }),
      el("td", {}, el("code", { text: `${k.prefix}…` })),
      el("td", { text: limits }),
      el("td", {}, spend, bar),
      el("td", { text: k.expires_at ? fmt.time(k.expires_at) : "never" }),
      el("td", {}, el("span", { class: `badge ${status}`, text: status }), k.admin ? el("span", { class: "badge admin", text: "admin" }) : null),
      el("td", { class: "actions" }, status === "active" ? [edit, revoke] : null),
    );
    return tr;
  }

  // Limits in place: models, requests and tokens per minute, budget.
  function editRow(tr, k) {
    const field = (name, value, attrs = {}) => el("input", { name, value: value ?? "", ...attrs });
    const form = el(
      "form",
      { class: "limits", "data-limits": k.id },
      el("label", {}, "Models", field("models", k.models.join(", "), { placeholder: "all" })),
      el("label", {}, "Requests / min", field("rpm", k.rpm, { type: "number", min: 1, step: 1 })),
      el("label", {}, "Tokens / min", field("tpm", k.tpm, { type: "number", min: 1, step: 1 })),
      el("label", {}, "Budget (USD)", field("budget_usd", k.budget_usd, { type: "number", min: 0, step: "any" })),
      el("button", { type: "submit", text: "Save" }),
      el("button", { type: "button", text: "Cancel", onclick: () => load() }),
      el("span", { class: "error", role: "alert" }),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const number = (name) => (data.get(name) ? Number(data.get(name)) : null);
      try {
        await api(`keys/${encodeURIComponent(k.id)}`, {
          method: "POST",
          body: {
            models: (data.get("models") || "").split(",").map((m) => m.trim()).filter(Boolean),
            rpm: number("rpm"),
            tpm: number("tpm"),
            budget_usd: number("budget_usd"),
          },
        });
        await load();
      } catch (err) {
        form.querySelector(".error").textContent = err.message;
      }
    });
    tr.replaceChildren(el("td", { colspan: 8 }, el("b", { text: `${k.id} (${k.name}) ` }), form));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const data = new FormData(form);
    const number = (name) => (data.get(name) ? Number(data.get(name)) : null);
    try {
      const key = await api("keys", {
        method: "POST",
        body: {
          name: data.get("name"),
          models: (data.get("models") || "").split(",").map((m) => m.trim()).filter(Boolean),
          rpm: number("rpm"),
          tpm: number("tpm"),
          budget_usd: number("budget_usd"),
          expires: data.get("expires") || null,
          admin: data.get("admin") === "on",
        },
      });
      form.reset();
      const secret = el("code", { class: "secret", id: "new-secret", text: key.key });
      const copy = el("button", {
        type: "button",
        text: "Copy",
        onclick: async () => {
          await navigator.clipboard.writeText(key.key).catch(() => {});
          copy.textContent = "Copied";
        },
      });
      created.replaceChildren(
        el(
          "div",
          { class: "secret-box" },
          el("p", {}, el("b", { text: `Key ${key.id} (${key.name}) created.` }), " Copy it now: this is the only time it is shown."),
          el("div", { class: "secret-line" }, secret, copy),
          el("button", { type: "button", class: "link", text: "Done, hide it", onclick: () => created.replaceChildren() }),
        ),
      );
      await load();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  });

  await load();
  return null;
}
