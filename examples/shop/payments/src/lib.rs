//! Charges orders. Handles `order.placed`: an order up to 1000.00
//! (`amount_cents` <= 100000) is charged and recorded in bucket `payments`
//! under the order id; a bigger one is "declined by the card processor",
//! which this example treats as a flaky failure and retries, so after the
//! subscription's `max_deliver` attempts it ends in the dead letters
//! (`atoll bus dlq order.placed`). Handling is idempotent: a redelivered
//! order is not charged twice. `GET /payments` lists the payments.

use atoll_sdk::bus::{self, Disposition, Message};
use atoll_sdk::http::{Request, Response};
use atoll_sdk::kv::{self, Store};
use serde::{Deserialize, Serialize};

/// Where payments are kept, keyed by order id.
const PAYMENTS: &str = "payments";
/// Above this the card processor declines.
const LIMIT_CENTS: u64 = 100_000;

/// The part of the `order.placed` payload this service needs.
#[derive(Deserialize)]
struct OrderPlaced {
    id: String,
    amount_cents: u64,
}

/// A recorded payment.
#[derive(Serialize, Deserialize)]
struct Payment {
    order_id: String,
    amount_cents: u64,
    status: String,
    /// The delivery that charged it (1 unless earlier ones failed).
    attempt: u32,
}

fn on_message(msg: Message) -> Disposition {
    let order = match msg.json::<OrderPlaced>() {
        Ok(order) => order,
        // Retrying cannot fix a malformed payload: dead-letter it at once.
        Err(err) => return Disposition::Reject(format!("not an order.placed payload: {err}")),
    };
    bus::idempotent(&msg, |msg| charge(msg, &order))
}

fn charge(msg: &Message, order: &OrderPlaced) -> Disposition {
    if order.amount_cents > LIMIT_CENTS {
        atoll_sdk::warn!(
            "card declined for order {} ({} cents), attempt {}",
            order.id,
            order.amount_cents,
            msg.attempt
        );
        return Disposition::retry_because(format!(
            "card declined: {} cents is over the {LIMIT_CENTS} limit",
            order.amount_cents
        ));
    }
    let payment = Payment {
        order_id: order.id.clone(),
        amount_cents: order.amount_cents,
        status: "captured".to_string(),
        attempt: msg.attempt,
    };
    match Store::open(PAYMENTS).and_then(|s| s.set_json(&order.id, &payment)) {
        Ok(()) => {
            atoll_sdk::info!("charged order {} ({} cents)", order.id, order.amount_cents);
            Disposition::Ack
        }
        Err(err) => {
            atoll_sdk::error!("recording the payment of {} failed: {err}", order.id);
            Disposition::retry_because(format!("recording the payment failed: {err}"))
        }
    }
}

fn handle(req: Request) -> Response {
    match (req.method(), req.path().trim_end_matches('/')) {
        ("GET", "/payments") => match all_payments() {
            Ok(payments) => Response::json(200, &payments),
            Err(err) => Response::internal_error(format!("kv: {err}\n")),
        },
        (_, "/payments") => Response::method_not_allowed(),
        _ => Response::not_found(),
    }
}

/// Every payment, in key order.
fn all_payments() -> Result<Vec<Payment>, kv::Error> {
    let store = Store::open(PAYMENTS)?;
    let keys = store.keys()?;
    let mut payments = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        for (_, value) in store.get_many(chunk)?.into_iter().flatten() {
            payments.push(serde_json::from_slice(&value).map_err(kv::Error::Json)?);
        }
    }
    Ok(payments)
}

atoll_sdk::service!(http: handle, messages: on_message);
