//! Interop: the BFF against a certified OpenID Provider we did not write — the npm package
//! `oidc-provider` (panva), run locally with PKCE, rotating refresh tokens, RP-initiated
//! and back-channel logout. Login, API call with the session's token (checked by a `jwt`
//! filter), refresh, logout.

use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::browser::Browser;
use meshgate_tests::config::Ports;
use meshgate_tests::oidc_provider::{self, OidcProvider, ProviderOptions};
use meshgate_tests::proc::Meshgate;
use reqwest::Method;

const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_api_refresh_and_logout_against_oidc_provider() {
    let b = Backend::start("api").await;
    let p = Ports::new();
    let mut opts = ProviderOptions::new(&p.url("/auth/callback"));
    opts.post_logout_redirect_uris = vec![p.url("/")];
    opts.backchannel_logout_uri = Some(p.url("/auth/backchannel-logout"));
    // Fresh for 5 s: refreshed when under 60 s remain.
    opts.access_ttl = Duration::from_secs(65);
    let op = OidcProvider::start(opts).await;
    let yaml = format!(
        "{}providers:\n  main: {{ issuer: \"{}\", client_id: \"{}\", client_secret: \"{}\", \
         audience: shop-api, scopes: [openid, profile, email, offline_access] }}\n\
         bff: {{ provider: main, session_key: \"{KEY}\", session: {{ refresh_before: 60s }} }}\n\
         clusters:\n  api: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - name: api\n    match: {{ path_prefix: /api }}\n    to: api\n\
         \x20   filters: [ {{ bff: {{}} }}, {{ jwt: {{ provider: main }} }} ]\n",
        p.preamble(""),
        op.issuer(),
        op.client_id(),
        op.client_secret(),
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    let mut browser = Browser::new();

    let start = browser
        .get(&p.url("/auth/login?return_to=/shop"), &[])
        .await;
    assert_eq!(start.status, 302, "{}", start.body);
    let callback = oidc_provider::login(&start.location(), "alice", "alice").await;
    assert!(callback.contains("iss="), "{callback}");
    let done = browser.get(&callback, &[]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location(), "/shop");

    let r = browser.api(Method::GET, &p.url("/api/orders")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = b
        .last_request()
        .expect("upstream")
        .header("authorization")
        .expect("bearer");
    assert_eq!(
        b.last_request()
            .expect("upstream")
            .header("x-meshgate-sub")
            .as_deref(),
        Some("alice")
    );
    let user = browser.api(Method::GET, &p.url("/auth/user")).await.json();
    assert_eq!(user["sub"], "alice");
    assert!(
        user["name"].as_str().is_some_and(|n| !n.is_empty()),
        "{user}"
    );

    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = browser.api(Method::GET, &p.url("/api/orders")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let second = b
        .last_request()
        .expect("upstream")
        .header("authorization")
        .expect("bearer");
    assert_ne!(first, second, "the access token was refreshed");
    assert_eq!(
        gw.metric("meshgate_bff_refreshes_total", &[("outcome", "ok")])
            .await,
        Some(1.0)
    );

    let logout = user["logout_url"].as_str().expect("logout_url");
    let r = browser.get(&p.url(logout), &[]).await;
    assert_eq!(r.status, 302);
    let end = r.location();
    let end_session = op.endpoint("end_session_endpoint").await;
    assert!(end.starts_with(&end_session), "{end}");
    assert!(end.contains("id_token_hint="), "{end}");
    assert_eq!(
        browser.api(Method::GET, &p.url("/auth/user")).await.status,
        401
    );
}
