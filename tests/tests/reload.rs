//! Hot reload: on file change and SIGHUP, under steady load, with zero failed
//! requests; an invalid file is rejected whole, counted, and the old config
//! keeps serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshgate_tests::backend::Backend;
use meshgate_tests::client;
use meshgate_tests::config::Ports;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

struct Files {
    a: String,
    b: String,
    invalid: String,
}

/// File A routes `/load` and `/only-a` to `blue`; file B routes `/load` and
/// `/only-b` to `green`; the invalid file references an unknown cluster.
fn files(p: &Ports, blue: &Backend, green: &Backend) -> Files {
    let clusters = format!(
        "clusters:\n  blue: {{ endpoints: [{}] }}\n  green: {{ endpoints: [{}] }}\n",
        blue.addr(),
        green.addr()
    );
    let pre = p.preamble("");
    Files {
        a: format!(
            "{pre}{clusters}routes:\n  - {{ name: only-a, match: {{ path_prefix: /only-a }}, to: blue }}\n  - {{ name: load, match: {{ path_prefix: /load }}, to: blue }}\n"
        ),
        b: format!(
            "{pre}{clusters}routes:\n  - {{ name: only-b, match: {{ path_prefix: /only-b }}, to: green }}\n  - {{ name: load, match: {{ path_prefix: /load }}, to: green }}\n"
        ),
        invalid: format!(
            "{pre}{clusters}routes:\n  - {{ name: load, match: {{ path_prefix: /load }}, to: purple }}\n"
        ),
    }
}

/// Which config is serving: `Some("a")`/`Some("b")` when `/load`, `/only-a`
/// and `/only-b` all agree with one file, else `None`.
async fn serving(c: &reqwest::Client, p: &Ports) -> Option<&'static str> {
    let load = client::get(c, &p.url("/load/probe")).await;
    let only_a = client::get(c, &p.url("/only-a")).await.status;
    let only_b = client::get(c, &p.url("/only-b")).await.status;
    match (load.header("x-backend").as_deref(), only_a, only_b) {
        (Some("blue"), 200, 404) => Some("a"),
        (Some("green"), 404, 200) => Some("b"),
        _ => None,
    }
}

#[derive(Default)]
struct LoadStats {
    ok: usize,
    failures: Vec<String>,
}

fn spawn_load(
    p: Ports,
    workers: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (stop, stats) = (stop.clone(), stats.clone());
            tokio::spawn(async move {
                let c = client::http1();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let outcome = match c.get(p.url(&format!("/load/{w}/{i}"))).send().await {
                        Ok(resp) => match client::Reply::try_read(resp).await {
                            Ok(r) if r.status == 200 => Ok(()),
                            Ok(r) => Err(format!("status {} body {}", r.status, r.text())),
                            Err(e) => Err(format!("body: {e}")),
                        },
                        Err(e) => Err(format!("transport: {e:?}")),
                    };
                    {
                        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                        match outcome {
                            Ok(()) => s.ok += 1,
                            Err(e) => s.failures.push(e),
                        }
                    }
                    // Pacing: steady load without starving the proxy of CPU.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_every_second_under_load_loses_no_request() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let p = Ports::new();
    let f = files(&p, &blue, &green);
    let gw = Meshgate::start(&f.a).await;
    let probe = client::http1();
    assert_eq!(
        serving(&probe, &p).await,
        Some("a"),
        "file A serves at start"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let workers = spawn_load(p, 4, stop.clone(), stats.clone());

    let started = Instant::now();
    let mut not_applied = Vec::new();
    for i in 0..10u32 {
        let tick = started + Duration::from_secs(u64::from(i));
        tokio::time::sleep_until(tick.into()).await;
        let (yaml, want) = if i % 2 == 0 { (&f.b, "b") } else { (&f.a, "a") };
        gw.rewrite_config(yaml);
        // Odd reloads also send SIGHUP; even ones rely on the file watcher.
        if i % 2 == 1 {
            gw.sighup();
        }
        let applied = wait::until(Duration::from_millis(950), || async {
            (serving(&probe, &p).await == Some(want)).then_some(())
        })
        .await;
        if applied.is_none() {
            not_applied.push(format!(
                "reload {i} to file {want} not serving within 950ms"
            ));
        }
    }

    tokio::time::sleep_until((started + Duration::from_secs(10)).into()).await;
    let failures_before = gw
        .metric("meshgate_config_reloads_total", &[("result", "failure")])
        .await
        .unwrap_or(0.0);
    gw.rewrite_config(&f.invalid);
    gw.sighup();
    wait::assert_eventually(
        Duration::from_secs(5),
        "meshgate_config_reloads_total{result=\"failure\"} to increase after an invalid file",
        || async {
            gw.metric("meshgate_config_reloads_total", &[("result", "failure")])
                .await
                .unwrap_or(0.0)
                > failures_before
        },
    )
    .await;
    // The last valid file (A, after 10 alternations) keeps serving.
    assert_eq!(
        serving(&probe, &p).await,
        Some("a"),
        "old config keeps serving after an invalid file"
    );
    let keep_going = Instant::now() + Duration::from_secs(1);
    tokio::time::sleep_until(keep_going.into()).await;

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("load worker");
    }
    let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(
        stats.failures.is_empty(),
        "{} of {} requests failed during reloads; first ones: {:#?}",
        stats.failures.len(),
        stats.failures.len() + stats.ok,
        &stats.failures[..stats.failures.len().min(5)]
    );
    assert!(
        stats.ok >= 500,
        "load too thin to mean anything: {} requests",
        stats.ok
    );
    assert!(
        not_applied.is_empty(),
        "routes did not follow the files: {not_applied:#?}"
    );

    let successes = gw
        .metric("meshgate_config_reloads_total", &[("result", "success")])
        .await
        .unwrap_or(0.0);
    assert!(
        successes >= 10.0,
        "reloads_total{{result=\"success\"}} = {successes}, want >= 10"
    );
    let generation = gw
        .metric("meshgate_config_generation", &[])
        .await
        .unwrap_or(0.0);
    assert!(
        generation >= 11.0,
        "config generation {generation}, want >= 11 after 10 reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_alone_triggers_reload() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let p = Ports::new();
    let f = files(&p, &blue, &green);
    let gw = Meshgate::start(&f.a).await;
    let c = client::http1();
    gw.rewrite_config(&f.b);
    let applied = wait::until(Duration::from_secs(5), || async {
        (serving(&c, &p).await == Some("b")).then_some(())
    })
    .await;
    assert!(
        applied.is_some(),
        "config file changed (no signal), new routes not serving within 5s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_counts_even_without_a_change() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let p = Ports::new();
    let f = files(&p, &blue, &green);
    let gw = Meshgate::start(&f.a).await;
    let before = gw
        .metric("meshgate_config_reloads_total", &[("result", "success")])
        .await
        .unwrap_or(0.0);
    gw.sighup();
    wait::assert_eventually(
        Duration::from_secs(5),
        "reloads_total{result=\"success\"} after SIGHUP",
        || async {
            gw.metric("meshgate_config_reloads_total", &[("result", "success")])
                .await
                .unwrap_or(0.0)
                > before
        },
    )
    .await;
    assert_eq!(serving(&client::http1(), &p).await, Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_is_rejected_whole_and_logged() {
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let p = Ports::new();
    let f = files(&p, &blue, &green);
    let gw = Meshgate::start(&f.a).await;
    let generation = gw.metric("meshgate_config_generation", &[]).await;
    // Valid routes for B plus one bad reference: nothing of it may apply.
    let half_bad = f.b.replace(
        "routes:\n",
        "routes:\n  - { name: bad, match: { path_prefix: /bad }, to: purple }\n",
    );
    gw.rewrite_config(&half_bad);
    gw.sighup();
    wait::assert_eventually(
        Duration::from_secs(5),
        "reloads_total{result=\"failure\"} >= 1",
        || async {
            gw.metric("meshgate_config_reloads_total", &[("result", "failure")])
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    assert_eq!(
        serving(&client::http1(), &p).await,
        Some("a"),
        "no part of the invalid file applied"
    );
    assert_eq!(
        gw.metric("meshgate_config_generation", &[]).await,
        generation,
        "generation unchanged"
    );
    assert!(
        gw.logs().contains("purple"),
        "the rejection is logged with its reason:\n{}",
        gw.logs()
    );
}
