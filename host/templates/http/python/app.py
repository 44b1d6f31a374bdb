"""`@NAME@`: a steedos-wasm package in Python (componentize-py) that serves
HTTP and calls out, on the `wasi:http` bindings componentize-py generates
for the world in `wit/@NAME@.wit`. The gateway hands it every request under
`/@NAME@/`:

- `GET /@NAME@/fetch?url=<url>` sends `GET <url>` (an origin `grants.http`
  names) and answers with what came back;
- anything else answers `Hello from @NAME@!` and the path.

Waiting is synchronous (`subscribe().block()`): one request at a time per
instance needs no event loop. An exception that escapes `handle` traps the
instance: the host answers 500 and replaces it.
"""

from componentize_py_types import Err, Ok

from wit_world import exports
from wit_world.imports import outgoing_handler, streams, types


def respond(response_out, status: int, text: str) -> None:
    headers = types.Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
    response = types.OutgoingResponse(headers)
    response.set_status_code(status)
    body = response.body()
    types.ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    data = text.encode()
    for i in range(0, len(data), 4096):
        stream.blocking_write_and_flush(data[i:i + 4096])
    stream.__exit__(None, None, None)
    types.OutgoingBody.finish(body, None)


def fetch(url: str) -> tuple[int, str]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("no scheme in the URL")
    wit_scheme = {"http": types.Scheme_Http(), "https": types.Scheme_Https()}.get(
        scheme, types.Scheme_Other(scheme)
    )
    authority, slash, path = rest.partition("/")
    request = types.OutgoingRequest(types.Fields())
    request.set_method(types.Method_Get())
    request.set_scheme(wit_scheme)
    request.set_authority(authority)
    request.set_path_with_query("/" + path if slash else "/")
    try:
        future = outgoing_handler.handle(request, None)
    except Err as e:
        raise ValueError(type(e.value).__name__.removeprefix("ErrorCode_"))
    while (got := future.get()) is None:
        future.subscribe().block()
    inner = got.value
    if isinstance(inner, Err):
        raise ValueError(type(inner.value).__name__.removeprefix("ErrorCode_"))
    response = inner.value
    # Children go before their parents: the stream, its body, the response.
    body = response.consume()
    stream = body.stream()
    data = bytearray()
    while True:
        try:
            data.extend(stream.blocking_read(16 * 1024))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise
    stream.__exit__(None, None, None)
    body.__exit__(None, None, None)
    status = response.status()
    response.__exit__(None, None, None)
    return status, data.decode(errors="replace")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out) -> None:
        path = request.path_with_query() or "/"
        _, found, url = path.partition("/fetch?url=")
        if not found:
            respond(response_out, 200, f"Hello from @NAME@! You asked for {path}")
            return
        try:
            status, body = fetch(url)
            respond(response_out, 200, f"{url} answered {status}: {body}")
        except ValueError as e:
            respond(response_out, 502, f"{url}: {e}")
