// `pricing`: quotes and offers, in JavaScript (componentize-js).
//
// - Typed import: `getItem` is `acme:inventory/stock@0.1.0.get-item`, a Rust
//   package; the host links it. WIT records are objects with camelCase
//   fields, variants `{ tag, val }`, options `undefined` or the value, and
//   u64 a BigInt.
// - Dynamic call: `call("inventory.list-items", ..)` through the broker,
//   MessagePack in and out (@msgpack/msgpack, bundled by esbuild).
// - Events: emits `price.quoted`; handles what steedos.toml subscribes it to.
//
// Errors: a function whose WIT result is `result<_, string>` fails with the
// string it throws. A thrown `Error` object would trap the instance instead,
// so every such function runs its body through `failsWith`, which turns any
// exception into its message. An exception that escapes a function without
// a `result` (see `explode`) traps: the host restarts the instance and the
// caller gets `crashed` with the message.

import { decode, encode } from "@msgpack/msgpack";
import { getItem } from "acme:inventory/stock@0.1.0";
import { call, context, emit, setMeta } from "steedos:package/broker@0.2.0";
import { log } from "steedos:package/logging@0.2.0";

const COUPONS = {
  SAVE10: { tag: "percent", val: 10 },
  MINUS100: { tag: "fixed-cents", val: 100n },
};

/** The events this instance handled (at most the last 100). */
const seen = [];

/** Runs `body`; any exception becomes the action's error result: its message. */
function failsWith(body) {
  try {
    return body();
  } catch (e) {
    throw e instanceof Error ? e.message : String(e);
  }
}

/** Calls an action by name: params and reply as MessagePack. */
function callAction(action, params) {
  try {
    return decode(call(action, encode(params)));
  } catch (e) {
    // A failed import call throws an error whose `payload` is the
    // call-error variant: `{ tag: "not-found", val: "..." }`.
    const why = e?.payload ?? e;
    throw new Error(`${action}: ${why.tag ?? "error"}${why.val === undefined ? "" : `: ${why.val}`}`);
  }
}

function priceOf(sku) {
  const item = getItem(sku);
  if (item === undefined) throw new Error(`unknown sku \`${sku}\``);
  if (item.priceCents === undefined) throw new Error(`\`${sku}\` has no price`);
  return item;
}

function discountOf(coupon) {
  if (coupon === undefined) return { tag: "none" };
  const discount = COUPONS[coupon];
  if (discount === undefined) throw new Error(`unknown coupon \`${coupon}\``);
  return discount;
}

function applyDiscount(discount, subtotal) {
  switch (discount.tag) {
    case "percent":
      return subtotal - (subtotal * BigInt(discount.val)) / 100n;
    case "fixed-cents":
      return subtotal > discount.val ? subtotal - discount.val : 0n;
    default:
      return subtotal;
  }
}

export const quotes = {
  quote(lines, coupon) {
    return failsWith(() => {
      if (lines.length === 0) throw new Error("a quote needs at least one line");
      const quoted = lines.map(({ sku, qty }) => {
        if (qty === 0) throw new Error(`\`${sku}\`: quantity must be at least 1`);
        const item = priceOf(sku);
        const unitCents = item.priceCents;
        return { sku, name: item.name, qty, unitCents, lineCents: unitCents * BigInt(qty) };
      });
      const subtotalCents = quoted.reduce((sum, l) => sum + l.lineCents, 0n);
      const discount = discountOf(coupon);
      const totalCents = applyDiscount(discount, subtotalCents);
      emit("price.quoted", encode({ skus: quoted.map((l) => l.sku), "total-cents": totalCents }, { useBigInt64: true }));
      log("info", `quoted ${quoted.length} line(s): ${totalCents} cents`);
      return { lines: quoted, subtotalCents, discount, totalCents, coupon };
    });
  },

  cheapest(tag, limit) {
    return failsWith(() => {
      // By name this time: the reply is inventory's `list<item>` as
      // MessagePack maps with kebab-case keys.
      const items = callAction("inventory.list-items", { tag: tag ?? null });
      return items
        .filter((item) => item["price-cents"] != null)
        .sort((a, b) => a["price-cents"] - b["price-cents"])
        .slice(0, limit)
        .map((item) => ({
          sku: item.sku,
          name: item.name,
          priceCents: BigInt(item["price-cents"]),
          tags: item.tags,
        }));
    });
  },

  eventsSeen() {
    return seen;
  },

  explode(message) {
    throw new Error(message);
  },

  session() {
    setMeta(encode({ "priced-by": "pricing" }));
    const meta = decode(context().meta);
    return JSON.stringify(meta, (_, v) => (typeof v === "bigint" ? Number(v) : v));
  },
  hog(mib) {
    const held = [];
    for (let i = 0; i < mib; i++) {
      // Filled, so that every page is really there.
      held.push(new Uint8Array(1 << 20).fill(1 + (i % 255)));
    }
    return held.length;
  },
};

export const events = {
  handle(event, payload, ctx) {
    let summary;
    try {
      summary = JSON.stringify(decode(payload), (_, v) => (typeof v === "bigint" ? Number(v) : v));
    } catch (e) {
      summary = `${payload.length} byte payload`;
    }
    log("info", `${event} from ${ctx.caller ?? "outside"} [${ctx.requestId}]: ${summary}`);
    if (seen.length === 100) seen.shift();
    seen.push({ event, source: ctx.caller, summary });
  },
};
