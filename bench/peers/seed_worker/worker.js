// The seed program: a Cloudflare Worker that streams an OpenAI chat completion
// to the client as plain text, in the shape of Cloudflare's well-known
// "stream OpenAI API responses" example. The only changes: the upstream base URL
// comes from the OPENAI_BASE_URL binding and the model from the `model` query
// parameter, so the bench can point it at its fake upstream and pick a scenario.
import OpenAI from "openai";

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    const model = url.searchParams.get("model") || "gpt-4o-mini";
    const openai = new OpenAI({
      apiKey: env.OPENAI_API_KEY || "sk-fake",
      baseURL: env.OPENAI_BASE_URL || undefined,
    });

    const stream = await openai.chat.completions.create({
      model,
      messages: [{ role: "user", content: "Tell me a story" }],
      stream: true,
    });

    // Pipe each delta's content to the response as it arrives.
    const { readable, writable } = new TransformStream();
    const writer = writable.getWriter();
    const textEncoder = new TextEncoder();

    ctx.waitUntil(
      (async () => {
        for await (const part of stream) {
          writer.write(textEncoder.encode(part.choices[0]?.delta?.content || ""));
        }
        writer.close();
      })(),
    );

    return new Response(readable, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
