//! End-to-end test harness for meshgate: real processes on loopback.
//!
//! Tests build what they need with small builders, in the spirit of
//! linkerd2-proxy's integration tests:
//!
//! ```no_run
//! # async fn demo() {
//! use meshgate_tests::{backend::Backend, ports::free_port, proc::Meshgate};
//! let b1 = Backend::builder().name("b1").start().await;
//! let (public, admin) = (free_port(), free_port());
//! let gw = Meshgate::start(&format!(
//!     "listeners: [{{ name: public, address: 127.0.0.1:{public} }}]\n\
//!      admin: {{ address: 127.0.0.1:{admin} }}\n\
//!      clusters: {{ c: {{ endpoints: [{}] }} }}\n\
//!      routes: [{{ name: all, match: {{ path_prefix: / }}, to: c }}]\n",
//!     b1.addr()
//! ))
//! .await;
//! # drop(gw);
//! # }
//! ```
//!
//! Nothing here sleeps to synchronise: everything that waits polls with a
//! deadline (see [`wait::until`]).

pub mod backend;
pub mod browser;
pub mod certs;
pub mod client;
pub mod config;
pub mod diag;
pub mod identity;
pub mod oidc_provider;
pub mod ports;
pub mod proc;
pub mod redis;
pub mod wait;
