//! Free loopback ports for configs that need a fixed `address:`.

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago.
///
/// The kernel hands out ephemeral ports in a way that makes immediate reuse
/// unlikely, so the small window between dropping the probe socket and the
/// proxy binding the port is acceptable; [`crate::proc::Meshgate::start`]
/// retries once if the bind still loses the race.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of the probe socket")
        .port()
}
