// The Vercel AI SDK's own client against a running gateway (tests/test_ui_stream.py).
//
//   node chat.mjs send API_URL < request.json
//     DefaultChatTransport posts the request's messages to API_URL (Node's fetch);
//     readUIMessageStream assembles the answer. With "resume": true it calls
//     reconnectToStream instead (GET API_URL/{chatId}/stream). With "cutAfter": N it
//     reads N chunks of the answer, cancels it (the connection is closed), then
//     reconnects and assembles the message from the resumed stream alone, as a
//     reloaded page does ("cut" holds the chunks read before the cut).
//   node chat.mjs validate < stream.txt
//     Checks a raw UI message stream.
//
// Either way every SSE event of the raw body is checked: only data lines (and
// comments), each a JSON chunk that ai's own uiMessageChunkSchema accepts, and
// "[DONE]" only as the last one. Prints one JSON object:
//   {status, headers, message, chunks, errors, problems, thrown}

import {
  DefaultChatTransport,
  asSchema,
  readUIMessageStream,
  uiMessageChunkSchema,
} from 'ai';

const schema = asSchema(uiMessageChunkSchema);

async function readStdin() {
  const pieces = [];
  for await (const piece of process.stdin) pieces.push(piece);
  return Buffer.concat(pieces).toString('utf8');
}

// SSE events as the WHATWG spec reads them: lines end at CR, LF or CRLF.
function sseEvents(text, problems) {
  const events = [];
  let data = null;
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (data !== null) events.push(data.join('\n'));
      data = null;
    } else if (line.startsWith(':')) {
      // a comment: a keep-alive
    } else if (line.startsWith('data:')) {
      const value = line.slice(5).replace(/^ /, '');
      (data ??= []).push(value);
    } else {
      problems.push(`a line that is not data or a comment: ${JSON.stringify(line)}`);
    }
  }
  if (data !== null) problems.push('the last event is not terminated by a blank line');
  return events;
}

async function check(text) {
  const problems = [];
  const chunks = [];
  const events = sseEvents(text, problems);
  events.forEach((data, i) => {
    if (data === '[DONE]') {
      if (i !== events.length - 1) problems.push(`[DONE] is event ${i} of ${events.length}`);
      return;
    }
    let value;
    try {
      value = JSON.parse(data);
    } catch (error) {
      problems.push(`event ${i} is not JSON: ${data}`);
      return;
    }
    chunks.push(value);
  });
  for (const [i, chunk] of chunks.entries()) {
    const result = await schema.validate(chunk);
    if (!result.success) {
      problems.push(`chunk ${i} ${JSON.stringify(chunk)}: ${result.error.message}`);
    }
  }
  if (events.at(-1) !== '[DONE]') problems.push('the stream does not end with [DONE]');
  return { chunks, problems };
}

async function send(api, request) {
  const out = { status: null, headers: {}, message: null, chunks: [], errors: [], problems: [] };
  let raw = null;
  // The transport reads one copy of the body; the other is checked here, byte for byte.
  let abortLast = null;
  const teeing = async (url, init) => {
    const controller = new AbortController();
    abortLast = () => controller.abort();
    const response = await fetch(url, { ...init, signal: controller.signal });
    out.status = response.status;
    for (const name of ['content-type', 'x-vercel-ai-ui-message-stream', 'x-request-id']) {
      out.headers[name] = response.headers.get(name);
    }
    if (!response.ok || response.status === 204 || !response.body) return response;
    const [mine, theirs] = response.body.tee();
    raw = new Response(mine).text();
    raw.catch(() => {}); // a cut body rejects: it is not checked
    return new Response(theirs, { status: response.status, headers: response.headers });
  };
  const transport = new DefaultChatTransport({
    api,
    fetch: teeing,
    headers: request.headers ?? {},
    body: request.body ?? {},
  });
  try {
    let stream = request.resume
      ? await transport.reconnectToStream({ chatId: request.chatId })
      : await transport.sendMessages({
          chatId: request.chatId ?? 'chat-1',
          messages: request.messages,
          trigger: request.trigger ?? 'submit-message',
          messageId: request.messageId,
          abortSignal: undefined,
        });
    if (request.cutAfter !== undefined && stream !== null) {
      out.cut = [];
      const reader = stream.getReader();
      while (out.cut.length < request.cutAfter) {
        const { done, value } = await reader.read();
        if (done) break;
        out.cut.push(value);
      }
      abortLast(); // closes the connection, as a dropped network does
      await reader.cancel().catch(() => {});
      raw = null; // the checked body is the resumed one
      stream = await transport.reconnectToStream({ chatId: request.chatId ?? 'chat-1' });
    }
    if (stream !== null) {
      const lastMessage = request.messages?.at(-1);
      const messages = readUIMessageStream({
        stream,
        // A turn that goes on after tool results continues the last assistant message.
        message: lastMessage?.role === 'assistant' ? lastMessage : undefined,
        onError: error => out.errors.push(String(error?.message ?? error)),
      });
      for await (const message of messages) out.message = message;
    }
  } catch (error) {
    out.thrown = String(error?.message ?? error);
  }
  if (raw !== null) Object.assign(out, await check(await raw));
  return out;
}

const [mode, api] = process.argv.slice(2);
const input = await readStdin();
const out = mode === 'validate' ? await check(input) : await send(api, JSON.parse(input));
process.stdout.write(JSON.stringify(out) + '\n');
