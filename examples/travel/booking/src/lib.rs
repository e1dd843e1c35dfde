//! Books trips: an HTTP service that asks `pricing` for every price through
//! its import of `travel:pricing/quote` (see `../wit/pricing.wit`), a typed
//! call that Atoll routes to a fresh instance of the `pricing` component.
//!
//! - `GET /quote?to=kyoto&nights=3`: 200 `{"to":"kyoto","nights":3,"total_cents":42000}`
//! - `POST /bookings` with `{"name": "Ada", "to": "kyoto", "nights": 3}`:
//!   prices the trip and saves it (bucket `bookings`), 201 with the booking
//! - `GET /bookings/<id>`: the booking, or 404
//!
//! A price pricing refuses (unknown destination, bad nights) is 422 with
//! `{"error": "..."}`.

use atoll_sdk::http::{Request, Response, percent_decode};
use atoll_sdk::kv::Store;
use serde::{Deserialize, Serialize};
use serde_json::json;

wit_bindgen::generate!({
    path: "../wit",
    world: "travel:pricing/client",
});

use travel::pricing::quote::get_quote;

/// What a client sends to book.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBooking {
    name: String,
    to: String,
    nights: u32,
}

/// A booking as stored and returned.
#[derive(Serialize, Deserialize)]
struct Booking {
    id: String,
    name: String,
    to: String,
    nights: u32,
    total_cents: u64,
}

fn handle(req: Request) -> Response {
    let path = req.path().trim_end_matches('/');
    match (req.method(), path) {
        ("GET", "/quote") => quote(&req),
        ("POST", "/bookings") => book(&req),
        ("GET", _) => match path.strip_prefix("/bookings/") {
            Some(id) if !id.contains('/') => show(&percent_decode(id)),
            _ => Response::not_found(),
        },
        (_, "/quote" | "/bookings") => Response::method_not_allowed(),
        _ => Response::not_found(),
    }
}

fn quote(req: &Request) -> Response {
    let to = req.query_param("to").unwrap_or_default();
    let Some(nights) = req
        .query_param("nights")
        .and_then(|n| n.parse::<u32>().ok())
    else {
        return Response::bad_request("expected ?to=DESTINATION&nights=N\n");
    };
    // A plain function call; the host runs it in the pricing component.
    match get_quote(&to, nights) {
        Ok(total_cents) => Response::json(
            200,
            &json!({ "to": to, "nights": nights, "total_cents": total_cents }),
        ),
        Err(why) => Response::json(422, &json!({ "error": why })),
    }
}

fn book(req: &Request) -> Response {
    let new: NewBooking = match req.json() {
        Ok(new) => new,
        Err(err) => {
            return Response::bad_request(format!(
                "invalid booking: {err}\nexpected JSON like {{\"name\": \"Ada\", \"to\": \"kyoto\", \"nights\": 3}}\n"
            ));
        }
    };
    let total_cents = match get_quote(&new.to, new.nights) {
        Ok(total) => total,
        Err(why) => return Response::json(422, &json!({ "error": why })),
    };
    let saved = Store::open("bookings").and_then(|store| {
        let id = format!("bk-{}", store.increment("next-id", 1)?);
        let booking = Booking {
            id,
            name: new.name,
            to: new.to,
            nights: new.nights,
            total_cents,
        };
        store.set_json(&booking.id, &booking)?;
        Ok(booking)
    });
    match saved {
        Ok(booking) => {
            Response::json(201, &booking).header("location", format!("/bookings/{}", booking.id))
        }
        Err(err) => Response::internal_error(format!("saving the booking: {err}\n")),
    }
}

fn show(id: &str) -> Response {
    match Store::open("bookings").and_then(|store| store.get_json::<Booking>(id)) {
        Ok(Some(booking)) => Response::json(200, &booking),
        Ok(None) => Response::not_found(),
        Err(err) => Response::internal_error(format!("reading the booking: {err}\n")),
    }
}

atoll_sdk::http_handler!(handle);
