//! `shop`: places orders against `inventory`, showing both ways one package
//! calls another.
//!
//! - **Typed**: `wit/shop.wit` imports `acme:inventory/stock@0.1.0`, and
//!   `stock::reserve` is an ordinary function; the host links it to the
//!   package that exports the interface.
//! - **Dynamic**: `steedos_sdk::call("inventory.get-item", ..)` names the
//!   action; parameters and reply cross as MessagePack via serde.
//!
//! Order ids count per instance, like all state here.

steedos_sdk::generate!({
    path: ["../../../../wit", "../inventory/wit", "wit"],
    world: "acme:shop/shop",
});

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use acme::inventory::stock::{self, StockError};
use exports::acme::shop::orders::{Guest, OrderLine, Receipt, ReceiptLine};

/// The parameters of `inventory.get-item`.
#[derive(Serialize)]
struct GetItem<'a> {
    sku: &'a str,
}

/// The fields of `inventory`'s `item` record that a price needs.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct PricedItem {
    price_cents: Option<u64>,
}

/// The parameters of `inventory.echo`.
#[derive(Serialize)]
struct Echo<'a> {
    data: &'a str,
}

/// The payload of the `order.placed` event.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct OrderPlaced<'a> {
    order_id: u64,
    total_cents: u64,
    lines: Vec<PlacedLine<'a>>,
}

#[derive(Serialize)]
struct PlacedLine<'a> {
    sku: &'a str,
    qty: u32,
}

thread_local! {
    static LAST_ORDER: Cell<u64> = const { Cell::new(0) };
}

/// The unit price of `sku`, by a dynamic call to `inventory.get-item`.
fn unit_price(sku: &str) -> Result<u64, String> {
    let item: Option<PricedItem> = steedos_sdk::call("inventory.get-item", &GetItem { sku })
        .map_err(|e| format!("could not look up `{sku}`: {e}"))?;
    match item {
        None => Err(format!("unknown sku `{sku}`")),
        Some(PricedItem { price_cents: None }) => Err(format!("`{sku}` has no price")),
        Some(PricedItem {
            price_cents: Some(p),
        }) => Ok(p),
    }
}

fn describe(error: &StockError) -> String {
    match error {
        StockError::UnknownSku(sku) => format!("unknown sku `{sku}`"),
        StockError::Insufficient(left) => format!("insufficient stock ({left} left)"),
        StockError::Discontinued => "discontinued".to_string(),
    }
}

struct Shop;

impl Guest for Shop {
    fn place_order(lines: Vec<OrderLine>) -> Result<Receipt, String> {
        if lines.is_empty() {
            return Err("an order needs at least one line".to_string());
        }
        let mut receipt_lines = Vec::with_capacity(lines.len());
        for line in &lines {
            let reservation = stock::reserve(&line.sku, line.qty).map_err(|e| {
                format!(
                    "could not reserve {} x `{}`: {}",
                    line.qty,
                    line.sku,
                    describe(&e)
                )
            })?;
            receipt_lines.push(ReceiptLine {
                reservation_id: reservation.id,
                sku: reservation.sku,
                qty: reservation.qty,
                unit_price_cents: 0,
            });
        }

        // The stock is reserved: a price that cannot be looked up now makes
        // the total incomplete, not the order failed.
        let mut unpriced = Vec::new();
        for line in &mut receipt_lines {
            match unit_price(&line.sku) {
                Ok(price) => line.unit_price_cents = price,
                Err(why) => unpriced.push(why),
            }
        }
        let total_cents = receipt_lines
            .iter()
            .map(|l| l.unit_price_cents.saturating_mul(u64::from(l.qty)))
            .sum();
        let note = (!unpriced.is_empty())
            .then(|| format!("total excludes unpriced lines: {}", unpriced.join("; ")));

        let order_id = LAST_ORDER.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        steedos_sdk::emit(
            "order.placed",
            &OrderPlaced {
                order_id,
                total_cents,
                lines: lines
                    .iter()
                    .map(|l| PlacedLine {
                        sku: &l.sku,
                        qty: l.qty,
                    })
                    .collect(),
            },
        );
        steedos_sdk::info!("order {order_id} placed: {total_cents} cents");
        Ok(Receipt {
            order_id,
            lines: receipt_lines,
            total_cents,
            note,
        })
    }

    fn quote(lines: Vec<OrderLine>) -> Result<u64, String> {
        lines
            .iter()
            .map(|l| Ok(unit_price(&l.sku)?.saturating_mul(u64::from(l.qty))))
            .sum()
    }

    fn relay(payload: String) -> String {
        stock::echo(&payload)
    }

    fn relay_dynamic(payload: String) -> String {
        let echo = Echo { data: &payload };
        steedos_sdk::call::<_, String>("inventory.echo", &echo).unwrap_or_default()
    }
}

export!(Shop);
