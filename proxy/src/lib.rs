//! meshgate: a Pingora-based edge gateway and sidecar proxy configured by one YAML file.
//!
//! The crate is organised along the request's life: [`config`] turns YAML into a validated
//! spec, [`runtime`] compiles it into an immutable route table and clusters, [`proxy`] is the
//! one Pingora `ProxyHttp` implementation that runs filters and forwards, [`conn`] guards
//! downstream connections, and [`admin`], [`metrics`], [`reload`] and [`lifecycle`] operate
//! the process. The binary's commands live in [`cli`].

pub mod access_log;
pub mod admin;
pub mod certs;
pub mod cli;
pub mod config;
pub mod conn;
pub mod explain;
pub mod forwarding;
pub mod idle;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod normalize;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod up;
