//! Exists to test config and the sandbox's defaults:
//!
//! - `.../config/<key>` (any route prefix): 200 with the value of config key `<key>`
//!   (percent-decoded), 404 when unset, 500 `config error: ...` on error.
//! - `/sandbox`: 200 JSON `{"env": n, "args": n, "read_root": bool,
//!   "read_etc": bool, "tcp": bool}`: how many environment variables and
//!   arguments it sees, whether it could list `/`, read `/etc/passwd`, and
//!   open a TCP connection to 127.0.0.1:1, plus `"tcp_error"`: the
//!   wasi:sockets error code that stopped it (e.g. `access-denied`, or
//!   `connection-refused` when the network is granted). A host granting
//!   nothing gives zeros, falses and `access-denied`.
//!
//! TCP goes through wasi:sockets directly: `std::net` needs the wasip2
//! wasi-libc, which the offline toolchain (Debian's wasi-libc) does not have.

use atoll_sdk::http::{Request, Response, percent_decode};
use serde_json::json;

mod sockets {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package atoll-test:sandbox;

            world sockets {
                import wasi:sockets/instance-network@0.2.12;
                import wasi:sockets/tcp-create-socket@0.2.12;
                import wasi:sockets/tcp@0.2.12;
            }
        ",
        features: ["clocks-timezone"],
        generate_all,
    });
}

/// Connects to 127.0.0.1:1; `Err` carries the error code's name.
fn tcp_connect() -> Result<(), String> {
    use sockets::wasi::sockets::network::{
        ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress,
    };
    use sockets::wasi::sockets::{instance_network, tcp_create_socket};

    let name = |code: ErrorCode| code.name().to_string();
    let network = instance_network::instance_network();
    let socket = tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4).map_err(name)?;
    let address = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port: 1,
        address: (127, 0, 0, 1),
    });
    socket.start_connect(&network, address).map_err(name)?;
    let ready = socket.subscribe();
    loop {
        match socket.finish_connect() {
            Ok(_streams) => return Ok(()),
            Err(ErrorCode::WouldBlock) => ready.block(),
            Err(code) => return Err(name(code)),
        }
    }
}

fn sandbox() -> Response {
    let tcp = tcp_connect();
    Response::json(
        200,
        &json!({
            "env": std::env::vars_os().count(),
            "args": std::env::args_os().count(),
            "read_root": std::fs::read_dir("/").is_ok(),
            "read_etc": std::fs::read("/etc/passwd").is_ok(),
            "tcp": tcp.is_ok(),
            "tcp_error": tcp.err(),
        }),
    )
}

fn handle(req: Request) -> Response {
    let path = req.path();
    if path.ends_with("/sandbox") {
        return sandbox();
    }
    // Any route prefix may come before `/config/<key>`.
    let Some(key) = path.find("/config/").map(|i| &path[i + "/config/".len()..]) else {
        return Response::not_found();
    };
    match atoll_sdk::config::get(&percent_decode(key)) {
        Ok(Some(value)) => Response::text(200, value),
        Ok(None) => Response::not_found(),
        Err(err) => Response::text(500, format!("config error: {err}")),
    }
}

atoll_sdk::http_handler!(handle);
