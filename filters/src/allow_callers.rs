//! The `allow_callers` filter: only the listed mesh identities may use the route.
//!
//! The identity comes from the caller's mTLS client certificate (its SPIFFE ID), verified
//! against the mesh CA during the handshake — never from a header, which any caller could
//! set. A request without a verified identity is refused like an unlisted one.

use std::sync::Arc;

use crate::{Action, ErrorKind, Filter, LocalResponse, RequestCtx, RequestView, SpecError, Step};

/// Compiled `allow_callers: [edge, orders]`.
#[derive(Debug)]
pub struct AllowCallersFilter {
    allowed: Vec<Arc<str>>,
}

impl AllowCallersFilter {
    /// Service names (SPIFFE ID last segments); at least one, each 1–63 of `[a-z0-9-]`.
    pub fn new(names: &[String]) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        if names.is_empty() {
            errors.push(SpecError::new("", "list at least one caller"));
        }
        for (i, n) in names.iter().enumerate() {
            let ok = (1..=63).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                errors.push(SpecError::new(
                    format!("[{i}]"),
                    format!("invalid service name {n:?} (1-63 of a-z, 0-9, -)"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(Self {
                allowed: names.iter().map(|n| Arc::from(n.as_str())).collect(),
            })
        } else {
            Err(errors)
        }
    }
}

impl Filter for AllowCallersFilter {
    fn name(&self) -> &'static str {
        "allow_callers"
    }

    fn request_filter<'a>(&'a self, _req: RequestView<'a>, ctx: &'a mut RequestCtx) -> Step<'a> {
        let allowed = ctx
            .caller
            .as_ref()
            .is_some_and(|c| self.allowed.iter().any(|a| a == c));
        Step::Done(if allowed {
            Action::Continue
        } else {
            Action::Respond(LocalResponse::error(ErrorKind::Forbidden))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn decide(f: &AllowCallersFilter, caller: Option<&str>) -> bool {
        let req = RequestHeader::build("GET", b"/", None).expect("req");
        let view = RequestView {
            header: &req,
            path: "/",
            host: "",
            peer: None,
        };
        let mut ctx = RequestCtx {
            caller: caller.map(Arc::from),
            ..RequestCtx::default()
        };
        let step = f.request_filter(view, &mut ctx);
        matches!(step, Step::Done(Action::Continue))
    }

    #[test]
    fn only_listed_verified_callers_pass() {
        let f = AllowCallersFilter::new(&["edge".into(), "orders".into()]).expect("valid");
        assert!(decide(&f, Some("orders")));
        assert!(decide(&f, Some("edge")));
        assert!(!decide(&f, Some("catalog")));
        assert!(!decide(&f, None), "no verified identity, no entry");
    }

    #[test]
    fn bad_lists_are_rejected() {
        assert!(AllowCallersFilter::new(&[]).is_err());
        let errs = AllowCallersFilter::new(&["ok".into(), "Bad_Name".into()]).expect_err("invalid");
        assert_eq!(errs[0].path, "[1]");
    }
}
