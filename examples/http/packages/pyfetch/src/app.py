"""`pyfetch`: HTTP requests from Python (componentize-py), on the
`wasi:http/outgoing-handler` bindings componentize-py generates: a request
built from `types`, sent with `outgoing_handler.handle`, its future and
body streams waited on with `subscribe().block()` (a synchronous poll loop:
one request at a time needs no event loop).

The host lets a request through only to the origins `grants.http` lists;
anything else comes back as the error code `HTTP-request-denied`, which
`send` returns as `Err("HttpRequestDenied...")`.
"""

from componentize_py_types import Err, Ok

from wit_world import exports
from wit_world.exports.client import Reply
from wit_world.imports import outgoing_handler, streams, types

KEEP = 64 * 1024


def method_of(name: str):
    known = {
        "GET": types.Method_Get(),
        "HEAD": types.Method_Head(),
        "POST": types.Method_Post(),
        "PUT": types.Method_Put(),
        "DELETE": types.Method_Delete(),
        "PATCH": types.Method_Patch(),
        "OPTIONS": types.Method_Options(),
    }
    return known.get(name.upper(), types.Method_Other(name))


def split(url: str):
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("no scheme in the URL")
    if scheme == "http":
        wit_scheme = types.Scheme_Http()
    elif scheme == "https":
        wit_scheme = types.Scheme_Https()
    else:
        wit_scheme = types.Scheme_Other(scheme)
    authority, slash, path = rest.partition("/")
    return wit_scheme, authority, "/" + path if slash else "/"


def code_text(e) -> str:
    """An error code as text: its case name, and its value when it has one."""
    name = type(e).__name__.removeprefix("ErrorCode_")
    value = getattr(e, "value", None)
    return name if value is None else f"{name}({value})"


def write_body(request, body: bytes) -> None:
    outgoing = request.body()
    if body:
        stream = outgoing.write()
        for i in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[i:i + 4096])
        stream.__exit__(None, None, None)
    types.OutgoingBody.finish(outgoing, None)


def read_body(response) -> bytes:
    incoming = response.consume()
    stream = incoming.stream()
    data = bytearray()
    while True:
        try:
            chunk = stream.blocking_read(16 * 1024)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise
        if len(data) < KEEP:
            data.extend(chunk[: KEEP - len(data)])
    stream.__exit__(None, None, None)
    return bytes(data)


class Client(exports.Client):
    def send(self, method: str, url: str, body: str) -> Reply:
        try:
            scheme, authority, path = split(url)
        except ValueError as e:
            raise Err(str(e))
        request = types.OutgoingRequest(types.Fields())
        request.set_method(method_of(method))
        request.set_scheme(scheme)
        request.set_authority(authority)
        request.set_path_with_query(path)
        write_body(request, body.encode())
        try:
            future = outgoing_handler.handle(request, None)
        except Err as e:
            raise Err(code_text(e.value))
        while True:
            got = future.get()
            if got is not None:
                break
            future.subscribe().block()
        # option<result<result<incoming-response, error-code>, _>>
        if isinstance(got, Err):
            raise Err("the response was taken already")
        inner = got.value
        if isinstance(inner, Err):
            raise Err(code_text(inner.value))
        response = inner.value
        location = None
        for name, value in response.headers().entries():
            if name.lower() == "location":
                location = value.decode(errors="replace")
        status = response.status()
        text = read_body(response).decode(errors="replace")
        return Reply(status=status, location=location, body=text)
