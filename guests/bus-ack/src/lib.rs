//! Exists to measure delivery: it acks every message and does nothing else
//! (no host calls), so the bus bench sees the cost of the bus and of a fresh
//! instance per message, not of a handler. Its HTTP side answers 404.

use atoll_sdk::bus::{Disposition, Message};

fn on_message(_msg: Message) -> Disposition {
    Disposition::Ack
}

atoll_sdk::message_handler!(on_message);
