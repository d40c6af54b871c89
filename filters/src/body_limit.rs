//! The `body_limit` filter: refuse request bodies above a size with 413.
//!
//! Checked twice because either alone is bypassable: `Content-Length` up front (so a large
//! upload is refused before any byte goes upstream) and the running count of a streamed or
//! chunked body (which declares no length).

use bytes::Bytes;
use http::header::CONTENT_LENGTH;

use crate::units::ByteSize;
use crate::{Action, ErrorKind, Filter, LocalResponse, RequestCtx, RequestView, Step};

/// Compiled `body_limit: 10MB` filter.
#[derive(Debug)]
pub struct BodyLimitFilter {
    limit: u64,
}

impl BodyLimitFilter {
    /// A filter admitting bodies of at most `limit` bytes.
    pub fn new(limit: ByteSize) -> Self {
        Self {
            limit: limit.bytes(),
        }
    }

    fn too_large() -> Action {
        Action::Respond(LocalResponse::error(ErrorKind::PayloadTooLarge))
    }
}

impl Filter for BodyLimitFilter {
    fn name(&self) -> &'static str {
        "body_limit"
    }

    fn request_filter<'a>(&'a self, req: RequestView<'a>, _ctx: &'a mut RequestCtx) -> Step<'a> {
        let declared = req
            .header
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(len) if len > self.limit => Step::Done(Self::too_large()),
            _ => Step::Done(Action::Continue),
        }
    }

    fn request_body_filter(
        &self,
        _chunk: Option<&Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Action {
        if ctx.request_body_bytes > self.limit {
            Self::too_large()
        } else {
            Action::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn view(header: &RequestHeader) -> RequestView<'_> {
        RequestView {
            header,
            path: "/",
            host: "",
            peer: None,
        }
    }

    #[test]
    fn declared_length_over_limit_is_refused_up_front() {
        let f = BodyLimitFilter::new(ByteSize(10));
        let mut req = RequestHeader::build("POST", b"/", None).expect("req");
        req.insert_header("content-length", "11").expect("h");
        let mut ctx = RequestCtx::default();
        assert!(matches!(
            f.request_filter(view(&req), &mut ctx),
            Step::Done(Action::Respond(r)) if r.status.as_u16() == 413
        ));
        req.insert_header("content-length", "10").expect("h");
        assert!(matches!(
            f.request_filter(view(&req), &mut ctx),
            Step::Done(Action::Continue)
        ));
    }

    #[test]
    fn streamed_body_is_counted() {
        let f = BodyLimitFilter::new(ByteSize(10));
        let mut ctx = RequestCtx {
            request_body_bytes: 10,
            ..RequestCtx::default()
        };
        assert!(matches!(
            f.request_body_filter(None, false, &mut ctx),
            Action::Continue
        ));
        ctx.request_body_bytes = 11;
        assert!(matches!(
            f.request_body_filter(None, false, &mut ctx),
            Action::Respond(_)
        ));
    }
}
