//! Free loopback ports for configs that need a fixed `address:`.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// Ports this test process has handed out already.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago, and never one this process returned
/// before.
///
/// The kernel may give a just-closed probe port out again, so two calls in a row could
/// otherwise return the same port, and a config using it twice is refused (CI saw
/// `meshgate up` refuse "port … is used twice"). The small window between dropping the
/// probe socket and the proxy binding the port remains; [`crate::proc::Meshgate::start`]
/// retries once if the bind still loses the race.
pub fn free_port() -> u16 {
    loop {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local address of the probe socket")
            .port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..2000).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
