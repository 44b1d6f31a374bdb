// `@NAME@`: a steedos-wasm package in JavaScript (componentize-js) that
// serves HTTP and calls out. Its world exports `wasi:http/incoming-handler`,
// so componentize-js runs the `fetch` event listener below for each
// request; `fetch` sends requests through `wasi:http/outgoing-handler`.
// The gateway hands it every request under `/@NAME@/`:
//
// - `GET /@NAME@/fetch?url=<url>` sends `GET <url>` (an origin
//   `grants.http` names) and answers with what came back;
// - anything else answers `Hello from @NAME@!` and the path.

async function handle(request) {
  const url = new URL(request.url);
  const path = url.pathname + url.search;
  const marker = "/fetch?url=";
  const at = path.indexOf(marker);
  if (at < 0) {
    return new Response(`Hello from @NAME@! You asked for ${path}`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  }
  const target = path.slice(at + marker.length);
  try {
    const reply = await fetch(target);
    const body = await reply.text();
    return new Response(`${target} answered ${reply.status}: ${body}`);
  } catch (e) {
    return new Response(`${target}: ${e && e.message ? e.message : e}`, { status: 502 });
  }
}

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));
