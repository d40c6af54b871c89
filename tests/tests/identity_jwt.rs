//! The `jwt` filter against the dev OpenID Provider (`backends/identity`) as real processes:
//! a user logs in with Authorization Code + PKCE, and the access token opens exactly the
//! routes its scopes and roles allow; the upstream gets the verified identity only.

use meshgate_tests::backend::Backend;
use meshgate_tests::config::Ports;
use meshgate_tests::identity::{access_token, Identity, CLIENT_SECRET};
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;
use std::time::Duration;

/// The callback the test client is registered with (nothing needs to listen there: the
/// code is taken from the redirect).
const REDIRECT: &str = "http://127.0.0.1:3000/auth/callback";

async fn token(issuer: &str, user: &str, scope: &str) -> String {
    access_token(issuer, CLIENT_SECRET, REDIRECT, user, scope).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_dev_provider_open_exactly_the_allowed_routes() {
    let idp = Identity::start(&["http://127.0.0.1:3000".to_string()], "5m").await;
    let b = Backend::start("b").await;
    let p = Ports::new();
    let yaml = format!(
        "{}providers:\n  main: {{ issuer: \"{}\", audience: shop-api }}\n\
         clusters:\n  c: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - name: orders\n    match: {{ path_prefix: /orders }}\n    to: c\n\
         \x20   filters: [ {{ jwt: {{ provider: main, scopes: [\"orders:write\"], roles: [customer] }} }} ]\n\
         \x20 - name: admin\n    match: {{ path_prefix: /admin }}\n    to: c\n\
         \x20   filters: [ {{ jwt: {{ provider: main, roles: [admin] }} }} ]\n",
        p.preamble(""),
        idp.issuer(),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    let alice = token(idp.issuer(), "alice", "openid profile orders:write").await;
    let admin = token(idp.issuer(), "admin", "openid profile").await;
    let c = reqwest::Client::new();
    let call = |path: &str, token: Option<&str>| {
        let mut req = c.get(p.url(path)).header("x-meshgate-sub", "spoofed");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };

    let r = call("/orders/1", Some(&alice)).await.expect("send");
    assert_eq!(r.status(), 200);
    let seen = b.last_request().expect("forwarded");
    assert_eq!(
        seen.header("x-meshgate-sub").as_deref(),
        Some("alice"),
        "verified sub, not the client's copy"
    );
    assert_eq!(seen.header("x-meshgate-roles").as_deref(), Some("customer"));

    let r = call("/admin/x", Some(&alice)).await.expect("send");
    assert_eq!(r.status(), 403);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap_or("")
        .contains("insufficient_scope"));

    // admin has the admin role but did not ask for orders:write.
    let r = call("/admin/x", Some(&admin)).await.expect("send");
    assert_eq!(r.status(), 200);
    let r = call("/orders/1", Some(&admin)).await.expect("send");
    assert_eq!(r.status(), 403);

    let before = b.request_count();
    let r = call("/orders/1", None).await.expect("send");
    assert_eq!(r.status(), 401);
    let tampered = format!("{}x", &alice[..alice.len() - 1]);
    let r = call("/orders/1", Some(&tampered)).await.expect("send");
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap_or("")
        .contains("invalid_token"));
    assert_eq!(
        b.request_count(),
        before,
        "refused requests never reach the upstream"
    );

    let fetched = gw
        .metric(
            "meshgate_jwks_fetches_total",
            &[("provider", "main"), ("outcome", "ok")],
        )
        .await
        .unwrap_or(0.0);
    assert!(fetched >= 1.0, "keys were fetched from the provider");
    let logged = wait::until(Duration::from_secs(5), || async {
        gw.access_log()
            .iter()
            .any(|l| l["route"] == "orders" && l["status"] == 200 && l["user"] == "alice")
            .then_some(())
    })
    .await;
    assert!(logged.is_some(), "the access log names the verified user");
}
