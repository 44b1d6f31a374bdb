// `@NAME@`: a steedos-wasm package in JavaScript. Its actions are the
// functions of the `api` interface in wit/@NAME@.wit, exported below as
// `api` (WIT names in camelCase). `npm run build` bundles this file with its
// npm dependencies (esbuild) and makes it a component (componentize-js).

import { log } from "steedos:package/logging@0.2.0";

/**
 * Runs `body`; an exception becomes the action's error result: its message.
 *
 * For a WIT `result<_, string>`, a thrown string is the error result, but a
 * thrown `Error` object traps the instance. An exception that escapes a
 * function without a `result` traps too: the host replaces the instance and
 * the caller gets `crashed` with the message.
 */
function failsWith(body) {
  try {
    return body();
  } catch (e) {
    throw e instanceof Error ? e.message : String(e);
  }
}

export const api = {
  // hello: func(name: string) -> result<string, string>
  hello(name) {
    return failsWith(() => {
      if (name.trim() === "") throw new Error("name must not be empty");
      log("info", `greeting ${name}`);
      return `Hello, ${name}!`;
    });
  },
};

// To call another package by name (params and reply are MessagePack):
//
//   import { decode, encode } from "@msgpack/msgpack";
//   import { call } from "steedos:package/broker@0.2.0";
//
//   const item = decode(call("inventory.get-item", encode({ sku: "apple" })));
//
// The call's meta is a value (MessagePack of an object, JSON types kept);
// `callWith` passes meta (merged over this call's), a timeout, a node id,
// retries; `setMeta` sets keys the caller gets back with the result:
//
//   import { callWith, context, setMeta } from "steedos:package/broker@0.2.0";
//
//   const user = decode(context().meta).user;
//   callWith("objectql.find", encode({ objectName: "accounts" }),
//            { meta: encode({ tenant: "acme" }), timeoutMs: 2000 });
//   setMeta(encode({ audited: true }));
//
// A failed call throws an error whose `payload` is the call-error, such as
// `{ tag: "not-found", val: "..." }`. WIT types in JavaScript: records are
// objects, variants `{ tag, val }`, options `undefined` or the value, and
// u64/s64 are BigInts.
