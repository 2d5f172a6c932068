// The console's pages: one shell, drawn by the page that matches the URL.

import { changeHeaders, el, openGateway, who } from "./api.js";
import { overview } from "./overview.js";
import { requests } from "./requests.js";
import { detail } from "./detail.js";
import { keys } from "./keys.js";
import { playground } from "./playground.js";

const main = document.getElementById("page");
let cleanup = null;

function route(path) {
  if (path === "/ui/" || path === "/ui") return ["overview", overview, {}];
  if (path === "/ui/requests") return ["requests", requests, {}];
  if (path.startsWith("/ui/requests/")) {
    return ["requests", detail, { id: decodeURIComponent(path.slice("/ui/requests/".length)) }];
  }
  if (path === "/ui/keys") return ["keys", keys, {}];
  if (path === "/ui/playground") return ["playground", playground, {}];
  return [null, null, {}];
}

async function show() {
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
    cleanup = null;
  }
  const [name, page, params] = route(location.pathname);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === name);
  }
  main.replaceChildren();
  if (!page) {
    main.append(el("h1", { text: "Not found" }));
    return;
  }
  document.body.dataset.page = name;
  try {
    cleanup = (await page(main, params)) || null;
  } catch (err) {
    main.append(el("p", { class: "error", text: `Could not load this page: ${err.message}` }));
  }
}

export function go(path) {
  if (path !== location.pathname + location.search) history.pushState({}, "", path);
  show();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || link.target || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui/") || url.pathname.startsWith("/ui/assets/")) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", show);

const whoBox = document.getElementById("who");
const signout = document.getElementById("signout");
if (openGateway) {
  whoBox.textContent = "open gateway (no keys)";
  whoBox.title = "No key exists and no master key is set: the console needs no sign-in on loopback.";
} else {
  whoBox.textContent = `signed in as ${who}`;
  signout.hidden = false;
  signout.addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", headers: changeHeaders(), credentials: "same-origin" });
    location.href = "/ui/login";
  });
}

show();
