// `fetcher`: `fetch` in a JavaScript package. componentize-js runs it on
// `wasi:http/outgoing-handler` (the `http` feature, left enabled in
// package.json's build), so the host's `grants.http` and limits apply to it
// as to any package. An async export runs the event loop until its promise
// settles; a rejected request comes back as the error string.

export const client = {
  async send(method, url, body) {
    try {
      const init = { method, redirect: "manual" };
      if (body !== "") {
        init.body = body;
      }
      const res = await fetch(url, init);
      const text = await res.text();
      return { status: res.status, location: res.headers.get("location") ?? undefined, body: text };
    } catch (e) {
      throw String(e && e.message ? e.message : e);
    }
  },
};
