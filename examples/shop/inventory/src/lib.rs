//! Keeps stock. Handles `order.placed`: every item starts with 100 units
//! and each order takes its `qty` away (bucket `stock`, key = item, value
//! in decimal). The decrement and the "processed" mark commit in one outbox
//! transaction, so a redelivered order never takes stock twice. An order
//! for more than is left is rejected (it lands in the dead letters with the
//! reason). `GET /inventory` shows the stock of every item ordered so far.
//!
//! Orders are published with the item as partition key, so the orders of
//! one item reach this handler one at a time, in order: the read-modify-write
//! of an item's stock below never races with itself.

use std::collections::BTreeMap;

use atoll_sdk::bus::{self, Disposition, Message, Transaction};
use atoll_sdk::http::{Request, Response};
use atoll_sdk::kv::{self, Store};
use serde::Deserialize;

/// Stock per item.
const STOCK: &str = "stock";
/// What an item nobody ordered yet has.
const INITIAL_STOCK: u64 = 100;

/// The part of the `order.placed` payload this service needs.
#[derive(Deserialize)]
struct OrderPlaced {
    id: String,
    item: String,
    qty: u32,
}

fn on_message(msg: Message) -> Disposition {
    match reserve(&msg) {
        Ok(disposition) => disposition,
        Err(err) => {
            atoll_sdk::error!("updating stock for message {} failed: {err}", msg.id);
            Disposition::retry_because(format!("updating stock failed: {err}"))
        }
    }
}

fn reserve(msg: &Message) -> Result<Disposition, Box<dyn std::error::Error>> {
    if bus::already_processed(msg)? {
        return Ok(Disposition::Ack);
    }
    let order = match msg.json::<OrderPlaced>() {
        Ok(order) => order,
        Err(err) => {
            return Ok(Disposition::Reject(format!(
                "not an order.placed payload: {err}"
            )));
        }
    };
    let stock = stock_of(&Store::open(STOCK)?, &order.item)?;
    let Some(left) = stock.checked_sub(u64::from(order.qty)) else {
        return Ok(Disposition::Reject(format!(
            "out of stock: order {} wants {} {}, {stock} left",
            order.id, order.qty, order.item
        )));
    };
    let tx = Transaction::new();
    tx.set(STOCK, &order.item, left.to_string())?;
    tx.mark_processed(msg)?;
    tx.commit()?;
    atoll_sdk::info!(
        "order {}: {} {} taken, {left} left",
        order.id,
        order.qty,
        order.item
    );
    Ok(Disposition::Ack)
}

fn stock_of(store: &Store, item: &str) -> Result<u64, kv::Error> {
    Ok(match store.get(item)? {
        Some(value) => String::from_utf8_lossy(&value)
            .parse()
            .map_err(|_| kv::Error::Other(format!("stock of `{item}` is not a number")))?,
        None => INITIAL_STOCK,
    })
}

fn handle(req: Request) -> Response {
    match (req.method(), req.path().trim_end_matches('/')) {
        ("GET", "/inventory") => match all_stock() {
            Ok(stock) => Response::json(200, &stock),
            Err(err) => Response::internal_error(format!("kv: {err}\n")),
        },
        (_, "/inventory") => Response::method_not_allowed(),
        _ => Response::not_found(),
    }
}

/// The stock of every item ordered so far.
fn all_stock() -> Result<BTreeMap<String, u64>, kv::Error> {
    let store = Store::open(STOCK)?;
    let mut stock = BTreeMap::new();
    for item in store.keys()? {
        let left = stock_of(&store, &item)?;
        stock.insert(item, left);
    }
    Ok(stock)
}

atoll_sdk::service!(http: handle, messages: on_message);
