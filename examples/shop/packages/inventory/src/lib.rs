//! `inventory`: a stock keeper with rich WIT types (records, variants,
//! options, lists), called by `shop` both through its typed interface and
//! by name.
//!
//! With `grants.kv = ["stock"]` the quantities live in the app's `stock`
//! bucket: every instance (and every node on a shared backend) sells from
//! the same stock, a reservation is a compare-and-swap that no concurrent
//! one can undo, and a restart keeps what was sold. Without the grant, each
//! instance keeps a stock of its own, from the same seed, in memory.

steedos_sdk::generate!({
    path: ["../../../../wit", "wit"],
    world: "acme:inventory/inventory",
});

use std::cell::RefCell;
use std::collections::BTreeMap;

use exports::acme::inventory::stock::{Availability, Guest, Item, Reservation, StockError};
use steedos_sdk::kv::{Bucket, KvError};

/// The bucket the shared stock lives in.
const BUCKET: &str = "stock";

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
        take(item.qty, &item.status, qty)?;
        item.qty -= qty;
        item.status = status_of(item.qty);
        self.last_reservation += 1;
        Ok(Reservation {
            id: self.last_reservation,
            sku: sku.to_string(),
            qty,
        })
    }
}

/// Whether `qty` can be taken from `left` items of this status.
fn take(left: u32, status: &Availability, qty: u32) -> Result<(), StockError> {
    if let Availability::Discontinued = status {
        return Err(StockError::Discontinued);
    }
    if qty > left {
        return Err(StockError::Insufficient(left));
    }
    Ok(())
}

fn status_of(qty: u32) -> Availability {
    match qty {
        0 => Availability::Backorder(RESTOCK_DAYS),
        n => Availability::InStock(n),
    }
}

/// The shared stock: the seed's items with their quantities from the
/// bucket (`qty:<sku>`, the seed's until the first reservation).
struct Shared(Bucket);

impl Shared {
    /// The bucket, when the app grants it.
    fn open() -> Option<Shared> {
        match Bucket::open(BUCKET) {
            Ok(bucket) => Some(Shared(bucket)),
            Err(KvError::AccessDenied | KvError::NoSuchStore) => None,
            Err(e) => {
                steedos_sdk::warn!("stock bucket unavailable, using this instance's stock: {e}");
                None
            }
        }
    }

    fn item(&self, mut item: Item) -> Item {
        if !matches!(item.status, Availability::Discontinued)
            && let Ok(Some(qty)) = self.0.get::<u32>(&format!("qty:{}", item.sku))
        {
            item.qty = qty;
            item.status = status_of(qty);
        }
        item
    }

    fn reserve(&self, seed: &Item, qty: u32) -> Result<Reservation, StockError> {
        let key = format!("qty:{}", seed.sku);
        let taken = self.0.update(&key, |left: Option<u32>| {
            let left = left.unwrap_or(seed.qty);
            take(left, &seed.status, qty).map(|()| left - qty)
        });
        let failed =
            |e: KvError| StockError::UnknownSku(format!("{}: stock unavailable: {e}", seed.sku));
        taken.map_err(failed)??;
        let id = self.0.increment("last-reservation", 1).map_err(failed)?;
        Ok(Reservation {
            id: u64::try_from(id).unwrap_or_default(),
            sku: seed.sku.clone(),
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
    static SHARED: Option<Shared> = Shared::open();
}

/// `f` on the shared stock when there is one, else `None`.
fn shared<T>(f: impl FnOnce(&Shared) -> T) -> Option<T> {
    SHARED.with(|s| s.as_ref().map(f))
}

struct Inventory;

impl Guest for Inventory {
    fn get_item(sku: String) -> Option<Item> {
        let seed = STOCK.with_borrow(|s| s.items.get(&sku).cloned())?;
        Some(shared(|kv| kv.item(seed.clone())).unwrap_or(seed))
    }

    fn list_items(tag: Option<String>) -> Vec<Item> {
        let items: Vec<Item> = STOCK.with_borrow(|s| {
            s.items
                .values()
                .filter(|i| tag.as_ref().is_none_or(|t| i.tags.contains(t)))
                .cloned()
                .collect()
        });
        match shared(|kv| items.iter().map(|i| kv.item(i.clone())).collect::<Vec<_>>()) {
            Some(items) => items,
            None => items,
        }
    }

    fn reserve(sku: String, qty: u32) -> Result<Reservation, StockError> {
        let Some(seed) = STOCK.with_borrow(|s| s.items.get(&sku).cloned()) else {
            return Err(StockError::UnknownSku(sku));
        };
        match shared(|kv| kv.reserve(&seed, qty)) {
            Some(reserved) => reserved,
            None => STOCK.with_borrow_mut(|s| s.reserve(&sku, qty)),
        }
    }

    fn echo(data: String) -> String {
        data
    }
}

export!(Inventory);
