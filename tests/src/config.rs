//! The parts of a test config every runtime test repeats: fresh ports, the
//! listener, admin and runtime sections.

use std::net::SocketAddr;

use crate::ports::free_port;

/// Fresh ports for one proxy: the public listener and the admin listener.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub public: u16,
    pub admin: u16,
}

impl Ports {
    pub fn new() -> Ports {
        Ports {
            public: free_port(),
            admin: free_port(),
        }
    }

    pub fn public_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.public))
    }

    /// `http://127.0.0.1:PUBLIC{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public)
    }

    /// `mode`, `service`, one plain `public` listener, `admin` and a lean
    /// `runtime`. `runtime_extra` is appended inside the runtime mapping
    /// (e.g. `"header_read_timeout: 1s"`).
    pub fn preamble(&self, runtime_extra: &str) -> String {
        let extra = if runtime_extra.is_empty() {
            String::new()
        } else {
            format!(", {runtime_extra}")
        };
        format!(
            "mode: edge\n\
             service: edge\n\
             listeners:\n  - name: public\n    address: 127.0.0.1:{public}\n\
             admin: {{ address: 127.0.0.1:{admin} }}\n\
             runtime: {{ threads: 1, work_stealing: false, grace_period: 5s{extra} }}\n",
            public = self.public,
            admin = self.admin,
        )
    }
}

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}
