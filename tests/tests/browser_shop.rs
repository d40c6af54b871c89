//! The demo shop in a real browser: `meshgate up` on fresh ports, then
//! `tests/browser/shop.mjs` (playwright-core driving the system Chromium) logs in at the
//! dev provider, buys something and logs out; then, with payments held down through
//! `meshgate up`'s down file (the process is really stopped and not restarted), an order
//! fails with `payment_unavailable` and the page says nothing was charged.
//!
//! Needs, besides the binaries (`cargo build -p meshgate -p identity -p catalog
//! -p inventory -p payments -p orders`): Chromium at /usr/bin/chromium (or `$CHROMIUM`),
//! Node.js, and `npm ci --prefix tests/browser`. Without them the test fails and says
//! what to install. Screenshots go to `target/browser-artifacts/`.

mod up_harness;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshgate_tests::wait;
use up_harness::{healthy, repo, target_dir, UpMesh};

/// The longest one scenario may run (shop.mjs has its own 180 s deadline).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

const SETUP: &str = "apt-get install -y chromium nodejs npm && npm ci --prefix tests/browser";

/// Chromium, Node.js and playwright-core, or a panic naming the setup command.
fn prerequisites() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "browser test setup missing: no Chromium at {} (set $CHROMIUM or install it: {SETUP})",
        chromium.display()
    );
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        node.is_ok_and(|s| s.success()),
        "browser test setup missing: `node` is not on PATH (install it: {SETUP})"
    );
    let playwright = repo().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "browser test setup missing: {} not found (run: npm ci --prefix tests/browser)",
        playwright.display()
    );
    chromium
}

/// Runs one scenario of shop.mjs against the mesh; panics with its output on failure.
async fn scenario(mesh: &UpMesh, chromium: &PathBuf, name: &str) {
    let artifacts = target_dir().join("browser-artifacts");
    let out_file = artifacts.join(format!("{name}.out"));
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let mut cmd = Command::new("node");
    cmd.arg("tests/browser/shop.mjs")
        .current_dir(repo())
        .env("BASE_URL", mesh.url(""))
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium)
        .env_remove("MOCK")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("output file"))
        .stderr(std::fs::File::create(artifacts.join(format!("{name}.err"))).expect("err file"));
    if name == "happy" {
        cmd.env_remove("FAILURE_SCENARIO");
    } else {
        cmd.env("FAILURE_SCENARIO", name);
    }
    let begun = Instant::now();
    let mut child = cmd.spawn().expect("spawn node");
    let status = wait::until(SCENARIO_TIMEOUT, || {
        let exited = child.try_wait().expect("wait for node");
        async move { exited }
    })
    .await;
    let output = format!(
        "{}{}",
        std::fs::read_to_string(&out_file).unwrap_or_default(),
        std::fs::read_to_string(artifacts.join(format!("{name}.err"))).unwrap_or_default()
    );
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("scenario {name} still running after {SCENARIO_TIMEOUT:?}; killed:\n{output}");
    };
    assert!(
        status.success(),
        "scenario {name} failed ({status}); screenshots in {}:\n{output}",
        artifacts.display()
    );
    eprintln!(
        "scenario {name} passed in {:?}; screenshots in {}\n{output}",
        begun.elapsed(),
        artifacts.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_works_in_a_browser_and_says_so_when_payments_is_down() {
    let chromium = prerequisites();
    let mut mesh = UpMesh::new();
    mesh.start().await;

    scenario(&mesh, &chromium, "happy").await;

    // Payments really stops: `meshgate up` terminates it and keeps it down while the
    // file exists. Its sidecar stays up and answers 502/503 for it, as in production.
    let payments = mesh.ports.service("payments");
    std::fs::write(mesh.state().join("down/payments"), "").expect("down file");
    wait::assert_eventually(Duration::from_secs(20), "payments stopped", || async {
        mesh.pid_of("payments").is_none() && !healthy(payments.app, "/healthz").await
    })
    .await;
    scenario(&mesh, &chromium, "payments_down").await;
    assert!(
        mesh.pid_of("payments").is_none(),
        "payments stayed down for the whole scenario"
    );

    assert!(mesh.stop().await.success());
}
