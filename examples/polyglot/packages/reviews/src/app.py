"""`reviews`: product reviews, in Python (componentize-py).

- Typed import: `stock.get_item` is `acme:inventory/stock@0.1.0.get-item`, a
  Rust package; the host links it. WIT records are dataclasses, variants
  one dataclass per case, enums `Enum`s, options `None` or the value.
- Dynamic calls: `call_action("inventory.get-item", ..)` and
  `call_action("pricing.quote", ..)` (a JavaScript package) through the
  broker, MessagePack in and out (the `msgpack` package, pure Python here).
- Events: emits `review.posted`; handles what steedos.toml subscribes it to.

Errors: a function whose WIT result is `result<_, E>` fails by raising
`Err(e)`. Any other exception would trap the instance, so `post` and
`summary` turn exceptions into `Err(message)` themselves. An exception that
escapes (see `explode`) traps: the host restarts the instance and the
caller gets `crashed` with the exception's message.
"""

import json
import re

import msgpack
from componentize_py_types import Err

from wit_world import exports
from wit_world.exports.ratings import (
    Review,
    ReviewError_EmptyText,
    ReviewError_TooLong,
    ReviewError_UnknownSku,
    ReviewSummary,
    SeenEvent,
    Stars,
)
from wit_world.imports import broker, logging, stock, types

MAX_TEXT = 500
KEEP = 100

# State lives in each instance, like every package's.
REVIEWS: dict[str, list[Review]] = {}
SEEN: list[SeenEvent] = []


class CallFailed(Exception):
    """A dynamic call returned a call-error."""


def call_action(action: str, params: dict):
    """Calls an action by name: params and reply as MessagePack."""
    try:
        reply = broker.call(action, msgpack.packb(params))
    except Err as e:
        # e.value is the call-error variant: CallError_NotFound(value=...), ...
        # Named as WIT names it: `not-found`.
        case = re.sub(r"(?<!^)(?=[A-Z])", "-", type(e.value).__name__.removeprefix("CallError_")).lower()
        raise CallFailed(f"{action}: {case}: {getattr(e.value, 'value', '')}") from None
    return msgpack.unpackb(reply)


def log(message: str) -> None:
    logging.log(logging.Level.INFO, message)


def stars_count(stars: Stars) -> int:
    return stars.value + 1


class Ratings(exports.Ratings):
    def post(self, review: Review) -> int:
        text = review.text.strip()
        if not text:
            raise Err(ReviewError_EmptyText())
        if len(text) > MAX_TEXT:
            raise Err(ReviewError_TooLong(MAX_TEXT))
        # The typed import: an option<item> comes back as None or an Item.
        if stock.get_item(review.sku) is None:
            raise Err(ReviewError_UnknownSku(review.sku))
        reviews = REVIEWS.setdefault(review.sku, [])
        reviews.append(review)
        broker.emit(
            "review.posted",
            msgpack.packb({"sku": review.sku, "stars": stars_count(review.stars), "count": len(reviews)}),
        )
        log(f"review of {review.sku}: {stars_count(review.stars)} star(s)")
        return len(reviews)

    def summary(self, sku: str) -> ReviewSummary:
        try:
            return self._summary(sku)
        except Exception as e:
            # The idiom: any exception becomes this action's error, with its message.
            raise Err(str(e)) from None

    def _summary(self, sku: str) -> ReviewSummary:
        item = call_action("inventory.get-item", {"sku": sku})
        if item is None:
            raise LookupError(f"unknown sku `{sku}`")
        price = None
        if item["price-cents"] is not None:
            quote = call_action("pricing.quote", {"lines": [{"sku": sku, "qty": 1}], "coupon": None})
            price = quote["total-cents"]
        reviews = REVIEWS.get(sku, [])
        average = sum(stars_count(r.stars) for r in reviews) / len(reviews) if reviews else None
        return ReviewSummary(
            sku=sku,
            name=item["name"],
            count=len(reviews),
            average=average,
            latest=reviews[-1] if reviews else None,
            price_cents=price,
        )

    def events_seen(self) -> list[SeenEvent]:
        return SEEN

    def explode(self, message: str) -> str:
        raise ValueError(message)

    def session(self) -> str:
        broker.set_meta(msgpack.packb({"reviewed-by": "reviews"}))
        return json.dumps(msgpack.unpackb(broker.context().meta))

    def hog(self, mib: int) -> int:
        held = []
        for _ in range(mib):
            held.append(bytearray(1 << 20))
        return len(held)


class Events(exports.Events):
    def handle(self, event: str, payload: bytes, ctx: types.CallContext) -> None:
        try:
            summary = repr(msgpack.unpackb(payload))
        except Exception:
            summary = f"{len(payload)} byte payload"
        log(f"{event} from {ctx.caller or 'outside'} [{ctx.request_id}]: {summary}")
        if len(SEEN) == KEEP:
            SEEN.pop(0)
        SEEN.append(SeenEvent(event=event, source=ctx.caller, summary=summary))
