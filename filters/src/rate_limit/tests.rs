//! Filter-level tests: what a request sees through `request_filter` and `response_filter`.

use std::net::IpAddr;
use std::time::Instant;

use pingora::http::RequestHeader;

use super::*;

fn spec(v: serde_json::Value) -> RateLimitSpec {
    serde_json::from_value(v).expect("spec shape")
}

fn memory() -> RateLimitStores {
    RateLimitStores::new(None).expect("memory store")
}

fn ctx(ip: &str) -> RequestCtx {
    RequestCtx {
        client_ip: ip.parse::<IpAddr>().expect("ip"),
        ..RequestCtx::default()
    }
}

fn view(header: &RequestHeader) -> RequestView<'_> {
    RequestView {
        header,
        path: "/",
        host: "",
        peer: None,
    }
}

/// Runs the request hook to completion (awaiting it when it waits on Redis).
async fn run(f: &RateLimitFilter, header: &RequestHeader, ctx: &mut RequestCtx) -> Action {
    match f.request_filter(view(header), ctx) {
        Step::Done(a) => a,
        Step::Wait(fut) => fut.await,
    }
}

fn run_sync(f: &RateLimitFilter, header: &RequestHeader, ctx: &mut RequestCtx) -> Action {
    match f.request_filter(view(header), ctx) {
        Step::Done(a) => a,
        Step::Wait(_) => panic!("a local limit must decide without waiting"),
    }
}

fn header<'a>(r: &'a LocalResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .and_then(|(_, v)| v.to_str().ok())
}

fn req() -> RequestHeader {
    RequestHeader::build("GET", b"/", None).expect("req")
}

#[test]
fn burst_then_one_more_is_refused_with_headers() {
    let stores = memory();
    // 1/min: nothing refills during the test, so the count is exact.
    let f = RateLimitFilter::new(
        &spec(serde_json::json!({ "key": "ip", "rate": "1/min", "burst": 5 })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    let r = req();
    let mut admitted = 0;
    for i in 0..5 {
        let mut c = ctx("192.0.2.1");
        assert!(
            matches!(run_sync(&f, &r, &mut c), Action::Continue),
            "request {i}"
        );
        admitted += 1;
        // headers: true by default → the admitted response carries the state.
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        f.response_filter(&mut resp, &mut c);
        let get = |n: &str| {
            resp.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(get("ratelimit-limit").as_deref(), Some("5"));
        assert_eq!(get("ratelimit-remaining"), Some((4 - i).to_string()));
        assert_eq!(get("ratelimit-reset"), Some((60 * (i + 1)).to_string()));
        assert!(get("retry-after").is_none());
    }
    assert_eq!(admitted, 5);
    let mut c = ctx("192.0.2.1");
    let Action::Respond(answer) = run_sync(&f, &r, &mut c) else {
        panic!("request 6 must be refused");
    };
    assert_eq!(answer.status.as_u16(), 429);
    assert_eq!(answer.error, Some(ErrorKind::RateLimited));
    assert!(!answer.close);
    assert_eq!(header(&answer, "ratelimit-limit"), Some("5"));
    assert_eq!(header(&answer, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&answer, "retry-after"), Some("60"));
    assert_eq!(header(&answer, "ratelimit-reset"), Some("300"));
    // The response hook (run by the single writer on the 429) writes the same values once.
    let mut resp = ResponseHeader::build(429, None).expect("resp");
    for (n, v) in &answer.headers {
        resp.append_header(n.clone(), v.clone()).expect("h");
    }
    f.response_filter(&mut resp, &mut c);
    assert_eq!(resp.headers.get_all("retry-after").iter().count(), 1);
    // Another client is unaffected.
    assert!(matches!(
        run_sync(&f, &r, &mut ctx("192.0.2.2")),
        Action::Continue
    ));
    let stats = stores.stats();
    assert_eq!((stats.allowed, stats.denied), (6, 1));
}

#[test]
fn tokens_refill_at_the_configured_rate() {
    let stores = memory();
    let f = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "20/s", "burst": 2 })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    let r = req();
    let mut c = ctx("192.0.2.1");
    let start = Instant::now();
    assert!(matches!(run_sync(&f, &r, &mut c), Action::Continue));
    assert!(matches!(run_sync(&f, &r, &mut c), Action::Continue));
    assert!(matches!(run_sync(&f, &r, &mut c), Action::Respond(_)));
    // Poll (with a deadline) until the next token: it must take one interval, 50 ms.
    let deadline = start + Duration::from_secs(5);
    loop {
        if matches!(run_sync(&f, &r, &mut c), Action::Continue) {
            break;
        }
        assert!(Instant::now() < deadline, "no token after 5 s");
        std::thread::yield_now();
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(45),
        "refilled too early: {waited:?}"
    );
    assert!(matches!(run_sync(&f, &r, &mut c), Action::Respond(_)));
}

#[test]
fn headers_false_keeps_admitted_responses_clean_but_not_refusals() {
    let stores = memory();
    let f = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "1/h", "headers": false })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    let r = req();
    let mut c = ctx("192.0.2.1");
    assert!(matches!(run_sync(&f, &r, &mut c), Action::Continue));
    let mut resp = ResponseHeader::build(200, None).expect("resp");
    f.response_filter(&mut resp, &mut c);
    assert!(resp.headers.get("ratelimit-remaining").is_none());
    let Action::Respond(answer) = run_sync(&f, &r, &mut ctx("192.0.2.1")) else {
        panic!("refused");
    };
    assert_eq!(header(&answer, "retry-after"), Some("3600"));
}

#[test]
fn the_tightest_of_several_limits_is_advertised() {
    let stores = memory();
    let loose = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "100/min" })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    let tight = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "3/min" })),
        "api",
        1,
        &stores,
    )
    .expect("valid");
    let r = req();
    let mut c = ctx("192.0.2.1");
    assert!(matches!(run_sync(&loose, &r, &mut c), Action::Continue));
    assert!(matches!(run_sync(&tight, &r, &mut c), Action::Continue));
    let mut resp = ResponseHeader::build(200, None).expect("resp");
    tight.response_filter(&mut resp, &mut c);
    loose.response_filter(&mut resp, &mut c);
    assert_eq!(
        resp.headers
            .get("ratelimit-remaining")
            .map(|v| v.as_bytes()),
        Some(&b"2"[..])
    );
    assert_eq!(
        resp.headers.get("ratelimit-limit").map(|v| v.as_bytes()),
        Some(&b"3"[..])
    );
}

#[test]
fn a_reload_with_the_same_limit_keeps_its_buckets() {
    let stores = memory();
    let s = spec(serde_json::json!({ "rate": "2/min" }));
    let old = RateLimitFilter::new(&s, "api", 0, &stores).expect("valid");
    let r = req();
    for _ in 0..2 {
        assert!(matches!(
            run_sync(&old, &r, &mut ctx("192.0.2.1")),
            Action::Continue
        ));
    }
    // The new generation is built while the old one still serves.
    let new = RateLimitFilter::new(&s, "api", 0, &stores).expect("valid");
    drop(old);
    assert!(matches!(
        run_sync(&new, &r, &mut ctx("192.0.2.1")),
        Action::Respond(_)
    ));
    // A changed limit is a new limiter with fresh buckets.
    let changed = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "3/min" })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    assert!(matches!(
        run_sync(&changed, &r, &mut ctx("192.0.2.1")),
        Action::Continue
    ));
}

#[test]
fn user_keys_follow_the_user_across_addresses() {
    let stores = memory();
    let f = RateLimitFilter::new(
        &spec(serde_json::json!({ "key": "user", "rate": "1/min" })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    let r = req();
    let mut alice = ctx("192.0.2.1");
    alice.user = Some(Arc::from("alice"));
    assert!(matches!(run_sync(&f, &r, &mut alice), Action::Continue));
    let mut alice_elsewhere = ctx("198.51.100.9");
    alice_elsewhere.user = Some(Arc::from("alice"));
    assert!(matches!(
        run_sync(&f, &r, &mut alice_elsewhere),
        Action::Respond(_)
    ));
    // An anonymous request from alice's first address is limited per address, separately.
    assert!(matches!(
        run_sync(&f, &r, &mut ctx("192.0.2.1")),
        Action::Continue
    ));
}

#[test]
fn spec_errors_are_all_reported_with_paths() {
    let stores = memory();
    let errors = RateLimitFilter::new(
        &spec(serde_json::json!({
            "key": ["ip", "cookie"], "rate": "10/fortnight", "burst": 0, "scope": "global"
        })),
        "api",
        0,
        &stores,
    )
    .expect_err("invalid");
    let got: Vec<(String, String)> = errors.into_iter().map(|e| (e.path, e.message)).collect();
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["key[1]", "rate", "burst", "scope"], "{got:?}");
    assert!(got[1].1.starts_with("invalid rate \"10/fortnight\""));
    let huge = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "1/d", "burst": 4_000_000_000u32 })),
        "api",
        0,
        &stores,
    )
    .expect_err("a window of millions of years");
    assert_eq!(huge[0].path, "burst");
    assert!(serde_json::from_value::<RateLimitSpec>(
        serde_json::json!({ "rate": "1/s", "per": 2 })
    )
    .is_err());
}

fn unreachable_redis(on_error: &str, timeout: &str) -> RateLimitStores {
    let spec: RateLimitStoreSpec = serde_json::from_value(serde_json::json!({
        // Port 1 on loopback refuses at once: a Redis that is down.
        "backend": "redis", "url": "redis://127.0.0.1:1", "on_error": on_error, "timeout": timeout
    }))
    .expect("shape");
    RateLimitStores::new(Some(&spec)).expect("valid")
}

#[tokio::test]
async fn redis_down_with_allow_still_enforces_the_local_limit() {
    let stores = unreachable_redis("allow", "50ms");
    let f = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "1/min", "burst": 3, "scope": "global" })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    let r = req();
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let a = run(&f, &r, &mut ctx("192.0.2.1")).await;
        assert!(
            start.elapsed() < Duration::from_millis(50 + 200),
            "bounded by the timeout"
        );
        outcomes.push(matches!(a, Action::Continue));
    }
    assert_eq!(outcomes, [true, true, true, false, false]);
    let stats = stores.stats();
    assert_eq!(stats.fallback_decisions, 5);
    assert_eq!(stats.global_decisions, 0);
    assert!(stats.redis_connect_failures >= 1);
    assert!(!stats.redis_connected);
}

#[tokio::test]
async fn redis_down_with_deny_refuses() {
    let stores = unreachable_redis("deny", "50ms");
    let f = RateLimitFilter::new(
        &spec(serde_json::json!({ "rate": "100/s", "scope": "global" })),
        "api",
        0,
        &stores,
    )
    .expect("valid");
    let r = req();
    for _ in 0..3 {
        let Action::Respond(answer) = run(&f, &r, &mut ctx("192.0.2.1")).await else {
            panic!("on_error: deny refuses while Redis is down");
        };
        assert_eq!(answer.status.as_u16(), 429);
        assert_eq!(header(&answer, "retry-after"), Some("1"));
    }
}

#[test]
fn process_counters_never_go_down_when_a_reload_retires_a_limiter() {
    let stores = RateLimitStores::new(None).expect("stores");
    let spec: RateLimitSpec =
        serde_json::from_value(serde_json::json!({ "key": "route", "rate": "2/s", "burst": 2 }))
            .expect("spec");
    let filter = RateLimitFilter::new(&spec, "r", 0, &stores).expect("filter");
    let req = pingora::http::RequestHeader::build("GET", b"/", None).expect("req");
    for _ in 0..3 {
        let view = crate::RequestView {
            header: &req,
            path: "/",
            host: "",
            peer: None,
        };
        let mut ctx = crate::RequestCtx::default();
        let _ = crate::Filter::request_filter(&filter, view, &mut ctx);
    }
    let before = stores.stats();
    assert_eq!((before.allowed, before.denied), (2, 1));
    drop(filter);
    let after = stores.stats();
    assert_eq!(
        (after.allowed, after.denied),
        (2, 1),
        "counts of a retired limiter are kept"
    );
    assert_eq!(after.limiters, 0);
}
