//! Cost of the per-request resilience decisions on a healthy path: choosing an endpoint
//! with and without a circuit breaker, recording the outcome, and retry-budget accounting.
//! Run: `cargo bench -p meshgate --bench decision`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use meshgate::config::spec::ClusterSpec;
use meshgate::runtime::cluster::{Cluster, EndpointRegistry, Outcome, Pick};
use meshgate::runtime::resilience::budget::RetryBudget;

fn cluster(extra: serde_json::Value) -> Cluster {
    let mut spec = serde_json::json!({
        "endpoints": ["127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"],
        "load_balancing": "round_robin",
    });
    if let (Some(map), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        map.extend(extra.clone());
    }
    let spec: ClusterSpec = serde_json::from_value(spec).expect("spec");
    Cluster::compile("bench", &spec, &EndpointRegistry::default()).expect("cluster")
}

fn decide(c: &Cluster) {
    let now = Instant::now();
    if let Pick::Endpoint { index, probe } = c.choose(&[], now, |_| None) {
        c.record(index, Outcome::Status(200), probe, now);
        black_box(index);
    }
}

fn bench(crit: &mut Criterion) {
    let plain = cluster(serde_json::json!({}));
    crit.bench_function("choose+record, no breaker", |b| b.iter(|| decide(&plain)));

    let guarded = cluster(serde_json::json!({
        "circuit_breaker": { "consecutive_failures": 5, "failure_rate": "50%", "min_requests": 20 },
        "outlier_detection": { "consecutive_5xx": 5 },
    }));
    crit.bench_function("choose+record, breaker+outlier", |b| {
        b.iter(|| decide(&guarded))
    });

    let budget = Arc::new(RetryBudget::default());
    crit.bench_function("retry budget: record request", |b| {
        b.iter(|| budget.record_request(black_box(Instant::now())))
    });
    crit.bench_function("retry budget: try retry", |b| {
        b.iter(|| black_box(budget.try_retry(0.2, Instant::now())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
