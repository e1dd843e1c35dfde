//! Takes orders. `POST /orders` with `{"item": "tea", "qty": 2,
//! "amount_cents": 1200}` assigns an id (`ord-1`, `ord-2`, ...) and, in one
//! outbox transaction, saves the order (bucket `orders`, status `placed`) and
//! publishes `order.placed` (message id = order id, partition key = item):
//! either both happen or neither does. It answers 201 with the order as
//! JSON. `GET /orders` lists every order, `GET /orders/<id>` shows one.

use atoll_sdk::bus::{self, Outgoing, Transaction};
use atoll_sdk::http::{Request, Response, percent_decode};
use atoll_sdk::kv::{self, Store};
use serde::{Deserialize, Serialize};

/// Where orders are kept, keyed by id.
const ORDERS: &str = "orders";
/// The topic announcing new orders.
const ORDER_PLACED: &str = "order.placed";

/// What a client sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    item: String,
    qty: u32,
    amount_cents: u64,
}

/// The `order.placed` payload.
#[derive(Serialize)]
struct OrderPlaced<'a> {
    id: &'a str,
    item: &'a str,
    qty: u32,
    amount_cents: u64,
}

/// An order as stored and returned.
#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
    item: String,
    qty: u32,
    amount_cents: u64,
    status: String,
}

fn handle(req: Request) -> Response {
    let path = req.path().trim_end_matches('/');
    match (req.method(), path) {
        ("POST", "/orders") => place(&req),
        ("GET", "/orders") => list(),
        ("GET", _) => match path.strip_prefix("/orders/") {
            Some(id) if !id.contains('/') => show(&percent_decode(id)),
            _ => Response::not_found(),
        },
        (_, "/orders") => Response::method_not_allowed(),
        _ => Response::not_found(),
    }
}

fn place(req: &Request) -> Response {
    let new = match req.json::<NewOrder>() {
        Ok(new) => new,
        Err(err) => {
            return Response::bad_request(format!(
                "invalid order: {err}\nexpected JSON like {{\"item\": \"tea\", \"qty\": 2, \"amount_cents\": 1200}}\n"
            ));
        }
    };
    let item = new.item.trim();
    if item.is_empty() {
        return Response::bad_request("invalid order: `item` is empty\n");
    }
    if new.qty == 0 {
        return Response::bad_request("invalid order: `qty` must be at least 1\n");
    }

    // Ids come from a counter; a failed transaction below skips a number,
    // which is harmless.
    let seq = match Store::open("counters").and_then(|s| s.increment("order", 1)) {
        Ok(seq) => seq,
        Err(err) => return Response::internal_error(format!("cannot assign an id: {err}\n")),
    };
    let order = Order {
        id: format!("ord-{seq}"),
        item: item.to_string(),
        qty: new.qty,
        amount_cents: new.amount_cents,
        status: "placed".to_string(),
    };
    match save_and_announce(&order) {
        Ok(()) => Response::json(201, &order).header("location", format!("/orders/{}", order.id)),
        Err(err) => Response::internal_error(format!("cannot place the order: {err}\n")),
    }
}

/// Saves `order` and publishes `order.placed`, atomically.
fn save_and_announce(order: &Order) -> Result<(), bus::Error> {
    let placed = OrderPlaced {
        id: &order.id,
        item: &order.item,
        qty: order.qty,
        amount_cents: order.amount_cents,
    };
    let tx = Transaction::new();
    tx.set_json(ORDERS, &order.id, order)?;
    tx.publish(
        Outgoing::json(ORDER_PLACED, &placed)?
            .id(&order.id)
            .partition_key(&order.item),
    )?;
    tx.commit()
}

fn show(id: &str) -> Response {
    match Store::open(ORDERS).and_then(|s| s.get_json::<Order>(id)) {
        Ok(Some(order)) => Response::json(200, &order),
        Ok(None) => Response::text(404, format!("no order `{id}`\n")),
        Err(err) => Response::internal_error(format!("kv: {err}\n")),
    }
}

fn list() -> Response {
    match all_orders() {
        Ok(orders) => Response::json(200, &orders),
        Err(err) => Response::internal_error(format!("kv: {err}\n")),
    }
}

/// Every order, oldest first.
fn all_orders() -> Result<Vec<Order>, kv::Error> {
    let store = Store::open(ORDERS)?;
    let keys = store.keys()?;
    let mut orders = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        for (_, value) in store.get_many(chunk)?.into_iter().flatten() {
            orders.push(serde_json::from_slice::<Order>(&value).map_err(kv::Error::Json)?);
        }
    }
    orders.sort_by_key(|o| {
        o.id.trim_start_matches("ord-")
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    });
    Ok(orders)
}

atoll_sdk::http_handler!(handle);
