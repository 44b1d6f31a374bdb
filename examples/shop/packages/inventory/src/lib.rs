//! `inventory`: a stock keeper with rich WIT types (records, variants,
//! options, lists), called by `shop` both through its typed interface and
//! by name.
//!
//! Every instance starts from the same seed stock and keeps its own state:
//! a reservation made on one instance does not lower the stock another
//! instance reports, and a restarted instance starts from the seed again.

steedos_sdk::generate!({
    path: ["../../../../wit", "wit"],
    world: "acme:inventory/inventory",
});

use std::cell::RefCell;
use std::collections::BTreeMap;

use exports::acme::inventory::stock::{Availability, Guest, Item, Reservation, StockError};

/// Days until an item that ran out is back.
const RESTOCK_DAYS: u64 = 7;

struct Stock {
    items: BTreeMap<String, Item>,
    last_reservation: u64,
}

impl Stock {
    fn seed() -> Stock {
        let items = [
            item(
                "apple",
                "Apple",
                10,
                &["fruit"],
                Some(120),
                Availability::InStock(10),
            ),
            item(
                "dodo",
                "Dodo",
                0,
                &["bird"],
                None,
                Availability::Discontinued,
            ),
            item(
                "honey",
                "Honey",
                3,
                &["pantry", "sweet"],
                Some(650),
                Availability::InStock(3),
            ),
            item(
                "pear",
                "Pear",
                0,
                &["fruit"],
                Some(90),
                Availability::Backorder(RESTOCK_DAYS),
            ),
        ];
        Stock {
            items: items.into_iter().map(|i| (i.sku.clone(), i)).collect(),
            last_reservation: 0,
        }
    }

    fn reserve(&mut self, sku: &str, qty: u32) -> Result<Reservation, StockError> {
        let item = self
            .items
            .get_mut(sku)
            .ok_or_else(|| StockError::UnknownSku(sku.to_string()))?;
        if let Availability::Discontinued = item.status {
            return Err(StockError::Discontinued);
        }
        if qty > item.qty {
            return Err(StockError::Insufficient(item.qty));
        }
        item.qty -= qty;
        item.status = match item.qty {
            0 => Availability::Backorder(RESTOCK_DAYS),
            n => Availability::InStock(n),
        };
        self.last_reservation += 1;
        Ok(Reservation {
            id: self.last_reservation,
            sku: sku.to_string(),
            qty,
        })
    }
}

fn item(
    sku: &str,
    name: &str,
    qty: u32,
    tags: &[&str],
    price_cents: Option<u64>,
    status: Availability,
) -> Item {
    Item {
        sku: sku.to_string(),
        name: name.to_string(),
        qty,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        price_cents,
        status,
    }
}

thread_local! {
    static STOCK: RefCell<Stock> = RefCell::new(Stock::seed());
}

struct Inventory;

impl Guest for Inventory {
    fn get_item(sku: String) -> Option<Item> {
        STOCK.with_borrow(|s| s.items.get(&sku).cloned())
    }

    fn list_items(tag: Option<String>) -> Vec<Item> {
        STOCK.with_borrow(|s| {
            s.items
                .values()
                .filter(|i| tag.as_ref().is_none_or(|t| i.tags.contains(t)))
                .cloned()
                .collect()
        })
    }

    fn reserve(sku: String, qty: u32) -> Result<Reservation, StockError> {
        STOCK.with_borrow_mut(|s| s.reserve(&sku, qty))
    }

    fn echo(data: String) -> String {
        data
    }
}

export!(Inventory);
