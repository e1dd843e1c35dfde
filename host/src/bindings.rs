//! Host bindings for the capabilities Atoll implements itself (the
//! `atoll:service/host-capabilities` world in wit/).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "atoll:service/host-capabilities",
    imports: { default: trappable },
    with: {
        "wasi:keyvalue/store.bucket": crate::kv::Bucket,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => crate::kv::KvError,
    },
});
