//! `storefront`: a Rust package calling a JavaScript one (`pricing`) and a
//! Python one (`reviews`), each both ways.
//!
//! - **Typed**: `wit/storefront.wit` imports `acme:pricing/quotes@0.1.0` and
//!   `acme:reviews/ratings@0.1.0`; `quotes::quote` and `ratings::post` are
//!   ordinary Rust functions, whichever language is behind them.
//! - **Dynamic**: `steedos_sdk::call("pricing.quote", ..)` names the action;
//!   parameters and reply cross as MessagePack via serde.
//!
//! It also follows the other packages' events (`events-seen`) and emits its
//! own (`announce`).

steedos_sdk::generate!({
    // A package's WIT needs the WIT of every package it names: the host's,
    // inventory's (named by pricing's and reviews' worlds), and the two
    // interfaces it imports.
    path: [
        "../../../../wit",
        "../../../shop/packages/inventory/wit",
        "../pricing/wit/pricing.wit",
        "../reviews/wit/reviews.wit",
        "wit",
    ],
    world: "acme:storefront/storefront",
});

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use steedos_sdk::CallContext;

use acme::pricing::quotes::{self, Discount, Line, Quotation};
use acme::reviews::ratings::{self, Review, ReviewError, ReviewSummary, Stars};
use exports::acme::storefront::front::{BasketLine, Guest, ProductPage, Receipt, SeenEvent};
use exports::steedos::package::events::Guest as EventsGuest;

const KEEP: usize = 100;

thread_local! {
    static SEEN: RefCell<Vec<SeenEvent>> = const { RefCell::new(Vec::new()) };
}

// ------------------------------------------------- the wire forms (dynamic)

/// The parameters of `reviews.summary`.
#[derive(Serialize)]
struct BySku<'a> {
    sku: &'a str,
}

/// `reviews.summary`'s `review-summary`, the fields a product page shows.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SummaryWire {
    sku: String,
    name: String,
    count: u32,
    average: Option<f64>,
    latest: Option<ReviewWire>,
    price_cents: Option<u64>,
}

#[derive(Deserialize)]
struct ReviewWire {
    text: String,
}

/// The parameters of `pricing.quote`.
#[derive(Serialize)]
struct QuoteParams<'a> {
    lines: &'a [LineWire],
    coupon: Option<&'a str>,
}

#[derive(Serialize)]
struct LineWire {
    sku: String,
    qty: u32,
}

/// `pricing.quote`'s `quotation`.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct QuotationWire {
    lines: Vec<QuoteLineWire>,
    total_cents: u64,
    discount: DiscountWire,
}

#[derive(Deserialize)]
struct QuoteLineWire {
    name: String,
    qty: u32,
}

/// A variant on the wire: `"none"` or `{"percent": 10}`.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DiscountWire {
    None,
    Percent(u8),
    FixedCents(u64),
}

/// The parameters of an `explode` action.
#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

// ------------------------------------------------------------- converting

fn describe_discount(discount: &Discount) -> String {
    match discount {
        Discount::None => "none".to_string(),
        Discount::Percent(p) => format!("{p}%"),
        Discount::FixedCents(c) => format!("{c} cents"),
    }
}

fn receipt_of(q: Quotation) -> Receipt {
    Receipt {
        lines: q
            .lines
            .iter()
            .map(|l| format!("{} x {}", l.name, l.qty))
            .collect(),
        total_cents: q.total_cents,
        discount: describe_discount(&q.discount),
    }
}

fn product_of(s: ReviewSummary) -> ProductPage {
    ProductPage {
        sku: s.sku,
        name: s.name,
        price_cents: s.price_cents,
        reviews: s.count,
        average_stars: s.average,
        latest_review: s.latest.map(|r| r.text),
    }
}

fn stars_of(n: u8) -> Result<Stars, String> {
    Ok(match n {
        1 => Stars::One,
        2 => Stars::Two,
        3 => Stars::Three,
        4 => Stars::Four,
        5 => Stars::Five,
        n => return Err(format!("stars must be 1 to 5, not {n}")),
    })
}

fn describe_review_error(e: ReviewError) -> String {
    match e {
        ReviewError::UnknownSku(sku) => format!("unknown sku `{sku}`"),
        ReviewError::EmptyText => "a review needs some text".to_string(),
        ReviewError::TooLong(max) => format!("a review is at most {max} characters"),
    }
}

// ------------------------------------------------------------------ actions

struct Storefront;

impl Guest for Storefront {
    fn product(sku: String) -> Result<ProductPage, String> {
        ratings::summary(&sku).map(product_of)
    }

    fn product_dynamic(sku: String) -> Result<ProductPage, String> {
        let s: SummaryWire = steedos_sdk::call("reviews.summary", &BySku { sku: &sku })
            .map_err(|e| e.to_string())?;
        Ok(ProductPage {
            sku: s.sku,
            name: s.name,
            price_cents: s.price_cents,
            reviews: s.count,
            average_stars: s.average,
            latest_review: s.latest.map(|r| r.text),
        })
    }

    fn checkout(lines: Vec<BasketLine>, coupon: Option<String>) -> Result<Receipt, String> {
        let lines: Vec<Line> = lines
            .into_iter()
            .map(|l| Line {
                sku: l.sku,
                qty: l.qty,
            })
            .collect();
        quotes::quote(&lines, coupon.as_deref()).map(receipt_of)
    }

    fn checkout_dynamic(lines: Vec<BasketLine>, coupon: Option<String>) -> Result<Receipt, String> {
        let lines: Vec<LineWire> = lines
            .into_iter()
            .map(|l| LineWire {
                sku: l.sku,
                qty: l.qty,
            })
            .collect();
        let params = QuoteParams {
            lines: &lines,
            coupon: coupon.as_deref(),
        };
        let q: QuotationWire =
            steedos_sdk::call("pricing.quote", &params).map_err(|e| e.to_string())?;
        Ok(Receipt {
            lines: q
                .lines
                .iter()
                .map(|l| format!("{} x {}", l.name, l.qty))
                .collect(),
            total_cents: q.total_cents,
            discount: match q.discount {
                DiscountWire::None => "none".to_string(),
                DiscountWire::Percent(p) => format!("{p}%"),
                DiscountWire::FixedCents(c) => format!("{c} cents"),
            },
        })
    }

    fn review(sku: String, stars: u8, text: String) -> Result<u32, String> {
        let review = Review {
            sku,
            stars: stars_of(stars)?,
            text,
            author: Some("storefront".to_string()),
        };
        ratings::post(&review).map_err(describe_review_error)
    }

    fn announce(message: String) {
        steedos_sdk::emit("storefront.announced", &Message { message: &message });
    }

    fn events_seen() -> Vec<SeenEvent> {
        SEEN.with_borrow(|seen| seen.clone())
    }

    fn provoke(action: String, message: String) -> String {
        match steedos_sdk::call::<_, String>(&action, &Message { message: &message }) {
            Ok(text) => format!("ok: {text}"),
            Err(e) => e.to_string(),
        }
    }
}

impl EventsGuest for Storefront {
    fn handle(event: String, _payload: Vec<u8>, ctx: CallContext) {
        steedos_sdk::info!("{event} from {:?}", ctx.caller);
        SEEN.with_borrow_mut(|seen| {
            if seen.len() == KEEP {
                seen.remove(0);
            }
            seen.push(SeenEvent {
                event,
                source: ctx.caller,
            });
        });
    }
}

export!(Storefront);
