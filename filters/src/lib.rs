//! meshgate's filter contract: the [`Filter`] trait every route filter implements, the
//! per-request [`RequestCtx`] they share, the [`LocalResponse`] they answer with, and the
//! built-in filters, one module each.
//!
//! Filters never touch the downstream session: a request hook returns
//! [`Action::Respond`] and the proxy's single response writer sends the answer, runs the
//! response hooks of the filters already entered and closes or drains the connection. That
//! keeps error bodies, CORS headers and request ids consistent however a request ends.

pub mod allow_callers;
pub mod api_key;
pub mod bff;
pub mod body_limit;
pub mod cors;
mod ctx;
mod error;
pub mod fault;
mod filter;
pub mod headers;
pub mod jwt;
pub mod rate_limit;
mod redis_conn;
pub mod units;

pub use ctx::RequestCtx;
pub use error::{ErrorKind, LocalResponse, SpecError};
pub use filter::{Action, Filter, FilterChain, RequestView, Step};
