//! Exists to test memory limits. `?mb=N` allocates N MiB, 1 MiB at a time
//! with `try_reserve`, writing every page: 200 `allocated N MiB`, or 507
//! `allocation failed after K MiB` when the host refuses to grow memory.
//! `?abort&mb=N` allocates the same way with plain `vec!`, so running out of
//! memory aborts (a trap). `?grow&mb=N` asks for N MiB more with exactly one
//! `memory.grow`, past the allocator: 200 `grew N MiB`, or 507 `grow refused`.

use atoll_sdk::http::{Request, Response};

const MIB: usize = 1024 * 1024;
/// A wasm page.
const PAGE: usize = 64 * 1024;

fn handle(req: Request) -> Response {
    let Some(mb) = req
        .query_param("mb")
        .and_then(|mb| mb.parse::<usize>().ok())
    else {
        return Response::bad_request("usage: ?mb=N, ?abort&mb=N or ?grow&mb=N");
    };
    if req.query_param("grow").is_some() {
        let pages = mb * (MIB / PAGE);
        return match core::arch::wasm32::memory_grow::<0>(pages) {
            usize::MAX => Response::text(507, "grow refused"),
            _ => Response::text(200, format!("grew {mb} MiB")),
        };
    }
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    if req.query_param("abort").is_some() {
        for _ in 0..mb {
            chunks.push(std::hint::black_box(vec![0xA5; MIB]));
        }
    } else {
        if chunks.try_reserve_exact(mb).is_err() {
            return Response::text(507, "allocation failed after 0 MiB");
        }
        for done in 0..mb {
            let mut chunk: Vec<u8> = Vec::new();
            if chunk.try_reserve_exact(MIB).is_err() {
                return Response::text(507, format!("allocation failed after {done} MiB"));
            }
            // Writing every byte makes the pages real, not just reserved.
            chunk.resize(MIB, 0xA5);
            chunks.push(std::hint::black_box(chunk));
        }
    }
    std::hint::black_box(&chunks);
    Response::text(200, format!("allocated {mb} MiB"))
}

atoll_sdk::http_handler!(handle);
