"""`@NAME@`: a steedos-wasm package in Python.

Its actions are the functions of the `api` interface in wit/@NAME@.wit,
implemented by the class `Api` below (WIT names in snake_case).
componentize-py makes this module, with the packages in .deps, a component.
"""

from componentize_py_types import Err

from wit_world import exports
from wit_world.imports import logging


class Api(exports.Api):
    def hello(self, name: str) -> str:
        # hello: func(name: string) -> result<string, string>. Raising
        # Err(text) fails this call only. Any other exception would trap the
        # instance (the host replaces it and the caller gets `crashed`), so
        # turn exceptions into Err here.
        try:
            return greet(name)
        except Exception as e:
            raise Err(str(e)) from None


def greet(name: str) -> str:
    if not name.strip():
        raise ValueError("name must not be empty")
    logging.log(logging.Level.INFO, f"greeting {name}")
    return f"Hello, {name}!"


# To call another package by name (params and reply are MessagePack):
#
#     import msgpack
#     from wit_world.imports import broker
#
#     item = msgpack.unpackb(broker.call("inventory.get-item", msgpack.packb({"sku": "apple"})))
#
# The call's meta is a value (MessagePack of a dict, JSON types kept);
# `call_with` passes meta (merged over this call's), a timeout, a node id,
# retries; `set_meta` sets keys the caller gets back with the result:
#
#     from wit_world.imports import types
#
#     user = msgpack.unpackb(broker.context().meta).get("user")
#     broker.call_with("objectql.find", msgpack.packb({"objectName": "accounts"}),
#                      types.CallOptions(meta=msgpack.packb({"tenant": "acme"}),
#                                        timeout_ms=2000, node_id=None, retries=None))
#     broker.set_meta(msgpack.packb({"audited": True}))
#
# A failed call raises Err(call_error), such as Err(CallError_NotFound(...)).
# WIT types in Python: records are dataclasses, variants one class per case,
# enums Enums, options None or the value.
