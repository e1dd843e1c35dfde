//! Host bindings for the capabilities Atoll implements itself (the
//! `atoll:service/host-capabilities` world in wit/) and for the exports it
//! calls besides `wasi:http` (the `atoll:service/message-handler` world).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "atoll:service/host-capabilities",
    imports: {
        // Commit waits for the group commit that makes it durable.
        "atoll:bus/outbox.[method]transaction.commit": async | trappable,
        default: trappable,
    },
    with: {
        "wasi:keyvalue/store.bucket": crate::kv::Bucket,
        "atoll:bus/outbox.transaction": crate::bus::Transaction,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => crate::kv::KvError,
    },
});

/// The `atoll:bus/handler` export of a subscribed component.
pub mod handler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "atoll:service/message-handler",
        exports: { default: async },
        with: {
            "atoll:bus/types": crate::bindings::atoll::bus::types,
        },
    });
}
