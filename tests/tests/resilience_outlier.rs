//! Outlier ejection end to end: an endpoint answering 5xx `consecutive_5xx`
//! times in a row leaves load balancing, never more than
//! `max_ejection_percent` of the cluster, and comes back after
//! `base_ejection`.

use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{self, Reply};
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait::POLL_INTERVAL;

const BASE_EJECTION: Duration = Duration::from_secs(2);

fn served_by(r: &Reply) -> String {
    r.header("x-backend")
        .unwrap_or_else(|| format!("<no x-backend; status {} body {}>", r.status, r.text()))
}

async fn ejections(gw: &Meshgate, b: &Backend) -> f64 {
    let ep = b.addr().to_string();
    gw.metric(
        "meshgate_outlier_ejections_total",
        &[("cluster", "c"), ("endpoint", ep.as_str())],
    )
    .await
    .unwrap_or(0.0)
}

/// Three endpoints, two of them always answering 503. With 34% of 3
/// endpoints only one may be out at a time: the second failing endpoint
/// keeps its traffic. The ejected one returns after `base_ejection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_honours_the_cap_and_ends_after_base_ejection() {
    let bad1 = Backend::start("bad1").await;
    let bad2 = Backend::start("bad2").await;
    let good = Backend::start("good").await;
    let healthy = Backend::start("ok").await;
    bad1.set_always(Some(503));
    bad2.set_always(Some(503));
    let p = Ports::new();
    let yaml = format!(
        "{}clusters:\n\
         \x20 c:\n\
         \x20   endpoints: [{}, {}, {}]\n\
         \x20   load_balancing: round_robin\n\
         \x20   outlier_detection: {{ consecutive_5xx: 3, base_ejection: {}ms, max_ejection_percent: 34% }}\n\
         \x20 ok: {{ endpoints: [{}] }}\n\
         routes:\n\
         \x20 - {{ name: other, match: {{ path_prefix: /other }}, to: ok }}\n\
         \x20 - {{ name: r, match: {{ path_prefix: / }}, to: c }}\n",
        p.preamble(""),
        bad1.addr(),
        bad2.addr(),
        good.addr(),
        BASE_EJECTION.as_millis(),
        healthy.addr()
    );
    let mut gw = Meshgate::start(&yaml).await;
    let c = client::http1();
    let url = p.url("/x");

    // Until the first ejection: at most 3 rounds of round robin are needed.
    let mut ejected_no_earlier_than = None;
    for i in 0..12 {
        let sent = Instant::now();
        let r = client::get(&c, &url).await;
        assert!(
            r.status == 200 || r.status == 503,
            "request {i}: {}",
            r.text()
        );
        if ejections(&gw, &bad1).await + ejections(&gw, &bad2).await > 0.0 {
            ejected_no_earlier_than = Some(sent);
            break;
        }
    }
    let ejected_at = ejected_no_earlier_than.unwrap_or_else(|| {
        panic!(
            "no ejection after 12 requests; bad1 got {}, bad2 {}, good {}",
            bad1.request_count(),
            bad2.request_count(),
            good.request_count()
        )
    });
    let (e1, e2) = (ejections(&gw, &bad1).await, ejections(&gw, &bad2).await);
    let (ejected, kept) = match (e1, e2) {
        (1.0, 0.0) => (&bad1, &bad2),
        (0.0, 1.0) => (&bad2, &bad1),
        other => panic!("expected exactly one ejection, got (bad1, bad2) = {other:?}"),
    };
    assert_eq!(ejections(&gw, &good).await, 0.0, "good endpoint ejected");

    // While it is out: the ejected endpoint gets nothing, the other failing
    // endpoint still gets traffic (cap), and it is not ejected although its
    // streak is far past the threshold.
    ejected.clear_requests();
    kept.clear_requests();
    good.clear_requests();
    for i in 0..12 {
        let r = client::get(&c, &url).await;
        let by = served_by(&r);
        assert_ne!(
            by,
            ejected.name(),
            "request {i} reached the ejected endpoint"
        );
    }
    let checked = ejected_at.elapsed();
    assert!(
        checked < BASE_EJECTION,
        "the in-ejection checks took {checked:?}, longer than the ejection itself"
    );
    assert_eq!(ejected.request_count(), 0);
    assert!(
        kept.request_count() >= 4,
        "{} (failing, not ejectable under the 34% cap) got {} of 12 requests",
        kept.name(),
        kept.request_count()
    );
    assert!(
        good.request_count() >= 4,
        "good got {}",
        good.request_count()
    );
    assert_eq!(
        ejections(&gw, kept).await,
        0.0,
        "{} was ejected too: the 34% cap allows one of three",
        kept.name()
    );

    // It returns after base_ejection.
    let deadline = ejected_at + BASE_EJECTION + Duration::from_secs(2);
    let returned_after = loop {
        let r = client::get(&c, &url).await;
        if served_by(&r) == ejected.name() {
            break ejected_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{} still out {:?} after its ejection (base_ejection {BASE_EJECTION:?})",
            ejected.name(),
            ejected_at.elapsed()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    assert!(
        returned_after >= BASE_EJECTION,
        "{} returned {returned_after:?} after it was ejected; base_ejection is {BASE_EJECTION:?}",
        ejected.name()
    );
    let total = ejections(&gw, &bad1).await + ejections(&gw, &bad2).await;
    assert!(
        total <= 2.0,
        "{total} ejections in one ejection period plus its end"
    );

    let r = client::get(&c, &p.url("/other/check")).await;
    assert_eq!(r.status, 200, "other route: {}", r.text());
    assert!(gw.try_exit().is_none(), "meshgate exited");
}
