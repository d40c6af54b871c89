//! The `fault` filter: inject aborts and delays into a share of requests, to test how
//! clients and the rest of the mesh cope. It is active only on routes that list it.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::units::{HumanDuration, Percent};
use crate::{Action, Filter, LocalResponse, RequestCtx, RequestView, SpecError, Step};

/// YAML: `fault: { abort: { status: 503, percent: 10 }, delay: { duration: 200ms, percent: 5 } }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Answer with `status` instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
    /// Wait `duration` before going on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
}

/// `fault.abort`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AbortSpec {
    /// Status of the injected answer (400–599).
    pub status: u16,
    /// Share of requests aborted.
    pub percent: Percent,
}

/// `fault.delay`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    /// How long to hold the request.
    pub duration: HumanDuration,
    /// Share of requests delayed.
    pub percent: Percent,
}

/// Compiled `fault` filter. Delays come before aborts, as in Envoy, so a request can be
/// both slowed and then failed.
#[derive(Debug)]
pub struct FaultFilter {
    abort: Option<(StatusCode, f64)>,
    delay: Option<(Duration, f64)>,
}

impl FaultFilter {
    /// Compiles the spec; the abort status must be an error status.
    pub fn new(spec: &FaultSpec) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        if spec.abort.is_none() && spec.delay.is_none() {
            errors.push(SpecError::new("", "set `abort`, `delay` or both"));
        }
        let abort = spec
            .abort
            .as_ref()
            .and_then(|a| match StatusCode::from_u16(a.status) {
                Ok(s) if (400..600).contains(&a.status) => Some((s, a.percent.fraction())),
                _ => {
                    errors.push(SpecError::new(
                        "abort.status",
                        "must be between 400 and 599",
                    ));
                    None
                }
            });
        let delay = spec
            .delay
            .as_ref()
            .map(|d| (d.duration.get(), d.percent.fraction()));
        if errors.is_empty() {
            Ok(Self { abort, delay })
        } else {
            Err(errors)
        }
    }

    fn abort_answer(status: StatusCode, request_id: &str) -> Action {
        Action::Respond(LocalResponse {
            status,
            error: None,
            headers: vec![(
                http::HeaderName::from_static("x-meshgate-fault"),
                HeaderValue::from_static("abort"),
            )],
            body: Some((
                HeaderValue::from_static("application/json"),
                LocalResponse::json_error_body("fault_injected", request_id),
            )),
            close: false,
        })
    }
}

fn hit(fraction: f64) -> bool {
    fraction > 0.0 && fastrand::f64() < fraction
}

impl Filter for FaultFilter {
    fn name(&self) -> &'static str {
        "fault"
    }

    fn request_filter<'a>(&'a self, _req: RequestView<'a>, ctx: &'a mut RequestCtx) -> Step<'a> {
        let abort = self.abort.filter(|(_, p)| hit(*p)).map(|(s, _)| s);
        match self.delay.filter(|(_, p)| hit(*p)) {
            Some((d, _)) => Step::Wait(Box::pin(async move {
                tokio::time::sleep(d).await;
                match abort {
                    Some(s) => Self::abort_answer(s, &ctx.request_id),
                    None => Action::Continue,
                }
            })),
            None => Step::Done(match abort {
                Some(s) => Self::abort_answer(s, &ctx.request_id),
                None => Action::Continue,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn filter(json: serde_json::Value) -> FaultFilter {
        FaultFilter::new(&serde_json::from_value(json).expect("spec")).expect("valid")
    }

    fn run(f: &FaultFilter) -> Action {
        let req = RequestHeader::build("GET", b"/", None).expect("req");
        let view = RequestView {
            header: &req,
            path: "/",
            host: "",
            peer: None,
        };
        let mut ctx = RequestCtx::default();
        let action = match f.request_filter(view, &mut ctx) {
            Step::Done(a) => a,
            Step::Wait(_) => panic!("no delay configured"),
        };
        action
    }

    #[test]
    fn abort_rate_is_close_to_configured() {
        let f = filter(serde_json::json!({ "abort": { "status": 503, "percent": "10%" } }));
        let aborted = (0..20_000)
            .filter(|_| matches!(run(&f), Action::Respond(r) if r.status.as_u16() == 503))
            .count();
        assert!(
            (1_600..=2_400).contains(&aborted),
            "aborted {aborted} of 20000"
        );
    }

    #[test]
    fn full_and_zero_percent_are_exact() {
        let all = filter(serde_json::json!({ "abort": { "status": 500, "percent": 100 } }));
        assert!((0..100).all(|_| matches!(run(&all), Action::Respond(_))));
        let none = filter(serde_json::json!({ "abort": { "status": 500, "percent": 0 } }));
        assert!((0..100).all(|_| matches!(run(&none), Action::Continue)));
    }

    #[test]
    fn invalid_specs_are_rejected() {
        assert!(FaultFilter::new(&FaultSpec::default()).is_err());
        let bad: FaultSpec =
            serde_json::from_value(serde_json::json!({ "abort": { "status": 200, "percent": 5 } }))
                .expect("spec");
        assert!(FaultFilter::new(&bad).is_err());
    }

    #[tokio::test]
    async fn delay_waits_then_continues() {
        let f = filter(serde_json::json!({ "delay": { "duration": "50ms", "percent": 100 } }));
        let req = RequestHeader::build("GET", b"/", None).expect("req");
        let view = RequestView {
            header: &req,
            path: "/",
            host: "",
            peer: None,
        };
        let mut ctx = RequestCtx::default();
        let start = std::time::Instant::now();
        let action = match f.request_filter(view, &mut ctx) {
            Step::Wait(fut) => fut.await,
            Step::Done(_) => panic!("expected a delay"),
        };
        assert!(matches!(action, Action::Continue));
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
