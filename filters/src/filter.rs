//! The [`Filter`] trait: hooks named after Pingora's phases, and what each return value means.
//!
//! Request hooks run in route order; response hooks run in reverse order, and only for the
//! filters whose request hook was entered — so a filter that answered 401 still sees its own
//! answer (and an outer CORS filter can decorate it), while filters after it never run.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::{LocalResponse, RequestCtx};

/// What a request hook decided.
#[derive(Debug)]
pub enum Action {
    /// Go on with the next filter, then the upstream.
    Continue,
    /// Stop here and send this answer; the upstream is not contacted (or, in the body phase,
    /// the exchange is abandoned).
    Respond(LocalResponse),
}

/// A request hook's result: most filters decide without I/O and return [`Step::Done`], which
/// costs no allocation; filters that must wait (a session store, a key fetch) box a future.
pub enum Step<'a> {
    /// Decided synchronously.
    Done(Action),
    /// Decided once the future completes.
    Wait(Pin<Box<dyn Future<Output = Action> + Send + 'a>>),
}

/// Read-only view of the downstream request given to request hooks.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request header as received (the engine has not rewritten it yet).
    pub header: &'a RequestHeader,
    /// The normalized path the route matched (no query string).
    pub path: &'a str,
    /// The host the route matched, without port, lowercased.
    pub host: &'a str,
    /// The TCP peer, when known.
    pub peer: Option<SocketAddr>,
}

/// A route filter. One instance per route and config generation, shared by all requests on
/// that route, so any per-request state belongs in [`RequestCtx`] and any state that must
/// survive a reload belongs in a store outside the filter.
pub trait Filter: Send + Sync + 'static {
    /// The filter's YAML name, as shown by `meshgate explain` and `/routes`.
    fn name(&self) -> &'static str;

    /// Runs after routing, before any upstream is chosen (Pingora `request_filter`).
    /// `Respond` stops the chain and answers; the response hooks of this filter and of the
    /// filters before it still run on that answer.
    fn request_filter<'a>(&'a self, _req: RequestView<'a>, _ctx: &'a mut RequestCtx) -> Step<'a> {
        Step::Done(Action::Continue)
    }

    /// Runs for each request body chunk before it is sent upstream (Pingora
    /// `request_body_filter`); `ctx.request_body_bytes` already counts this chunk.
    /// `Respond` abandons the exchange with that answer if no response has started yet.
    fn request_body_filter(
        &self,
        _chunk: Option<&Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Action {
        Action::Continue
    }

    /// Edits the request about to be sent upstream (Pingora `upstream_request_filter`); runs
    /// once per attempt, after the engine set the path and forwarding headers.
    fn upstream_request_filter(&self, _upstream: &mut RequestHeader, _ctx: &mut RequestCtx) {}

    /// Edits the response header before it goes downstream (Pingora `response_filter`).
    /// Also runs on answers produced locally by this or a later filter, or by the engine.
    fn response_filter(&self, _response: &mut ResponseHeader, _ctx: &mut RequestCtx) {}

    /// Called once per request after the response is finished or the request failed
    /// (Pingora `logging`), with the final status (0 when nothing could be sent).
    fn logging(&self, _ctx: &RequestCtx, _status: u16) {}
}

/// The ordered filters of one route.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Arc<[Arc<dyn Filter>]>,
}

impl FilterChain {
    /// A chain running `filters` in this order on requests and in reverse on responses.
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        Self {
            filters: filters.into(),
        }
    }

    /// The filters in request order.
    pub fn filters(&self) -> &[Arc<dyn Filter>] {
        &self.filters
    }

    /// The filter at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&Arc<dyn Filter>> {
        self.filters.get(index)
    }

    /// Number of filters.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// True when the route has no filters.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The YAML names in order, for `explain` and `/routes`.
    pub fn names(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.name()).collect()
    }
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
