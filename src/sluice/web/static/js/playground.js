// Playground: stream an answer from any of the gateway's APIs, as the signed-in key.

import { api, changeHeaders, el, fmt } from "./api.js";

const APIS = {
  chat: {
    label: "Chat completions (OpenAI)",
    path: "/v1/chat/completions",
    body: (model, prompt, max) => ({ model, stream: true, max_tokens: max, messages: [{ role: "user", content: prompt }], stream_options: { include_usage: true } }),
    text(event) {
      if (event.data === "[DONE]") return null;
      const chunk = JSON.parse(event.data);
      if (chunk.error) throw new Error(chunk.error.message);
      return chunk.choices?.[0]?.delta?.content || "";
    },
  },
  responses: {
    label: "Responses (OpenAI)",
    path: "/v1/responses",
    body: (model, prompt, max) => ({ model, stream: true, store: false, max_output_tokens: max, input: prompt }),
    text(event) {
      const data = JSON.parse(event.data);
      if (data.type === "error" || data.type === "response.failed") throw new Error(data.message || data.response?.error?.message || "failed");
      return data.type === "response.output_text.delta" ? data.delta : "";
    },
  },
  messages: {
    label: "Messages (Anthropic)",
    path: "/v1/messages",
    body: (model, prompt, max) => ({ model, stream: true, max_tokens: max, messages: [{ role: "user", content: prompt }] }),
    text(event) {
      const data = JSON.parse(event.data);
      if (data.type === "error") throw new Error(data.error?.message || "error");
      return data.type === "content_block_delta" && data.delta?.type === "text_delta" ? data.delta.text : "";
    },
  },
};

// SSE framing: events end at a blank line; lines end at CR, LF or CRLF.
function sseParser() {
  let buffer = "";
  return (text) => {
    buffer += text;
    const events = [];
    const parts = buffer.split(/\r\n\r\n|\n\n|\r\r/);
    buffer = parts.pop();
    for (const part of parts) {
      const data = [];
      let name = "message";
      for (const line of part.split(/\r\n|\n|\r/)) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("event:")) name = line.slice(6).trim();
      }
      if (data.length) events.push({ event: name, data: data.join("\n") });
    }
    return events;
  };
}

export async function playground(main) {
  const { models, default: fallback } = await api("models");
  const model = el("input", { id: "model", name: "model", list: "model-names", value: fallback, required: true });
  const which = el("select", { id: "api", name: "api" }, Object.entries(APIS).map(([value, a]) => el("option", { value, text: a.label })));
  const prompt = el("textarea", { id: "prompt", rows: 4, text: "Tell me a story about a river and a gate." });
  const max = el("input", { id: "max-tokens", type: "number", min: 1, value: 400 });
  const send = el("button", { type: "submit", id: "send", text: "Send" });
  const stop = el("button", { type: "button", id: "stop", text: "Stop", disabled: true, class: "danger" });
  const output = el("pre", { class: "output", id: "output" });
  const status = el("span", { id: "status", class: "muted", text: "idle" });
  const ttft = el("b", { id: "ttft", text: "–" });
  const speed = el("b", { id: "speed", text: "–" });
  const count = el("b", { id: "deltas", text: "0" });
  const form = el(
    "form",
    { class: "playground", id: "play" },
    el("datalist", { id: "model-names" }, models.map((m) => el("option", { value: m }))),
    el("div", { class: "row" }, el("label", {}, "Model", model), el("label", {}, "API", which), el("label", {}, "Max tokens", max)),
    el("label", {}, "Prompt", prompt),
    el("div", { class: "row" }, send, stop, status),
  );
  main.append(
    el("h1", { text: "Playground" }),
    form,
    el("ul", { class: "stats" }, el("li", {}, "Time to first token ", ttft), el("li", {}, "Deltas ", count), el("li", {}, "Tokens per second ", speed)),
    output,
  );

  let controller = null;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (controller) return;
    const chosen = APIS[which.value];
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    output.textContent = "";
    ttft.textContent = "–";
    speed.textContent = "–";
    count.textContent = "0";
    status.textContent = "waiting for the first token…";
    const started = performance.now();
    let first = null;
    let deltas = 0;
    const tick = () => {
      if (first === null) return;
      const seconds = (performance.now() - first) / 1000;
      if (seconds > 0.05) speed.textContent = fmt.num(deltas / seconds, 1);
    };
    const ticker = setInterval(tick, 200);
    try {
      const res = await fetch(`/ui/play${chosen.path}`, {
        method: "POST",
        headers: changeHeaders({ "content-type": "application/json", accept: "text/event-stream" }),
        body: JSON.stringify(chosen.body(model.value.trim(), prompt.value, Number(max.value) || 400)),
        credentials: "same-origin",
        signal: controller.signal,
      });
      if (!res.ok) {
        const text = await res.text();
        let message = text;
        try {
          const err = JSON.parse(text);
          message = err.error?.message || err.error || text;
        } catch {}
        throw new Error(`${res.status}: ${message}`);
      }
      status.textContent = "streaming…";
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      const parse = sseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const event of parse(value)) {
          const text = chosen.text(event);
          if (text === null) continue;
          if (text) {
            if (first === null) {
              first = performance.now();
              ttft.textContent = fmt.ms(first - started);
            }
            deltas += 1;
            count.textContent = String(deltas);
            output.textContent += text;
          }
        }
      }
      tick();
      status.textContent = `done in ${fmt.ms(performance.now() - started)}`;
    } catch (err) {
      status.textContent = err.name === "AbortError" ? "stopped: the gateway cancelled the upstream request" : `error: ${err.message}`;
    } finally {
      clearInterval(ticker);
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  return () => controller && controller.abort();
}
