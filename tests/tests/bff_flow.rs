//! The browser BFF end to end, against the dev OpenID Provider (`backends/identity`) as a
//! real process: login with Authorization Code + PKCE, API calls with the session cookie,
//! refresh, logout — on the memory store and on Redis — plus two replicas sharing Redis
//! (one refresh for 50 concurrent calls), a Redis dump without tokens, and Redis down
//! failing closed.

use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::browser::{Browser, Page};
use meshgate_tests::config::Ports;
use meshgate_tests::identity::{self, Identity, CLIENT_SECRET};
use meshgate_tests::proc::Meshgate;
use meshgate_tests::redis::{Redis, RedisCluster};
use reqwest::Method;

const KEY: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
const COOKIE: &str = "__Host-meshgate";
/// Access tokens live 65 s and are refreshed when under 60 s remain: fresh for 5 s.
const ACCESS_TTL: &str = "65s";
const REFRESH_BEFORE: &str = "60s";

fn edge_yaml(p: &Ports, issuer: &str, backend: &Backend, sessions: &str) -> String {
    format!(
        "{}stores:\n  sessions: {sessions}\n\
         providers:\n  main: {{ issuer: \"{issuer}\", client_id: web, client_secret: \"${{OIDC_CLIENT_SECRET}}\", \
         audience: shop-api, scopes: [openid, profile, email, offline_access, \"orders:read\"] }}\n\
         bff:\n  provider: main\n  session_key: ${{MESHGATE_SESSION_KEY}}\n  session: {{ refresh_before: {REFRESH_BEFORE} }}\n\
         clusters:\n  api: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - name: api\n    match: {{ path_prefix: /api }}\n    to: api\n\
         \x20   filters: [ {{ bff: {{ require_login: true }} }}, {{ jwt: {{ provider: main }} }} ]\n\
         \x20 - name: public\n    match: {{ path_prefix: /public }}\n    to: api\n\
         \x20   filters: [ {{ bff: {{ require_login: false }} }} ]\n",
        p.preamble(""),
        backend.addr()
    )
}

async fn start_edge(yaml: &str) -> Meshgate {
    Meshgate::start_with_env(
        yaml,
        &[
            ("OIDC_CLIENT_SECRET", CLIENT_SECRET),
            ("MESHGATE_SESSION_KEY", KEY),
        ],
    )
    .await
}

/// Runs the whole login through the edge at `base` and the provider's form; returns the
/// callback's answer.
async fn log_in(browser: &mut Browser, base: &str, return_to: &str) -> Page {
    let start = browser
        .get(&format!("{base}/auth/login?return_to={return_to}"), &[])
        .await;
    assert_eq!(start.status, 302, "login redirects to the provider");
    let authorize = start.location();
    assert!(
        authorize.contains("code_challenge_method=S256") && authorize.contains("nonce="),
        "{authorize}"
    );
    let callback = identity::login(&authorize, "alice", "alice").await;
    assert!(
        callback.starts_with(&format!("{base}/auth/callback?")),
        "{callback}"
    );
    assert!(
        callback.contains("iss="),
        "RFC 9207 iss parameter: {callback}"
    );
    browser.get(&callback, &[]).await
}

fn bearer_sub(authorization: &str) -> String {
    use base64::Engine as _;
    let token = authorization.strip_prefix("Bearer ").expect("bearer");
    let payload = token.split('.').nth(1).expect("jwt payload");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("claims");
    claims["sub"].as_str().expect("sub").to_string()
}

/// The browser journey every store must support.
async fn full_flow(sessions: &str, redis: Option<&Redis>) {
    let b = Backend::start("api").await;
    let p = Ports::new();
    let base = p.url("");
    let idp = Identity::start(std::slice::from_ref(&base), ACCESS_TTL).await;
    let gw = start_edge(&edge_yaml(&p, idp.issuer(), &b, sessions)).await;
    let mut browser = Browser::new();

    // Anonymous: API calls get 401 JSON, never a redirect; without X-CSRF, 401 too.
    let r = browser.api(Method::GET, &p.url("/api/orders")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let r = browser.get(&p.url("/api/orders"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "csrf_required");
    // A top-level navigation is sent to login instead.
    let r = browser
        .get(&p.url("/api/orders?x=1"), &[("sec-fetch-mode", "navigate")])
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.location(),
        "/auth/login?return_to=%2Fapi%2Forders%3Fx%3D1"
    );
    assert_eq!(b.request_count(), 0, "nothing reached the upstream");

    // Login.
    let done = log_in(&mut browser, &base, "/orders").await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location(), "/orders");
    let set = browser
        .set_cookies
        .iter()
        .find(|c| c.starts_with(&format!("{COOKIE}=")) && !c.contains("Max-Age=0"))
        .expect("session cookie set");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    assert!(
        browser.cookie(&format!("{COOKIE}-login")).is_none(),
        "pre-login cookie cleared"
    );
    let first_cookie = browser.cookie(COOKIE).expect("cookie").to_string();

    // An API call: the upstream gets a bearer token (verified by the jwt filter against
    // the provider's JWKS) and no session cookie; other cookies pass.
    browser.set_cookie("theme", Some("dark"));
    let r = browser
        .send(
            Method::GET,
            &p.url("/api/orders"),
            &[("x-csrf", "1"), ("authorization", "Bearer forged")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = b.last_request().expect("upstream request");
    let auth1 = seen.header("authorization").expect("bearer sent upstream");
    assert_eq!(bearer_sub(&auth1), "alice");
    assert_ne!(auth1, "Bearer forged");
    assert_eq!(seen.header("cookie").as_deref(), Some("theme=dark"));
    assert_eq!(seen.header("x-meshgate-sub").as_deref(), Some("alice"));

    // /auth/user: claims, session expiry and the logout URL; needs X-CSRF.
    let r = browser.get(&p.url("/auth/user"), &[]).await;
    assert_eq!(r.status, 401);
    let user = browser.api(Method::GET, &p.url("/auth/user")).await;
    assert_eq!(user.status, 200, "{}", user.body);
    let user = user.json();
    assert_eq!(user["sub"], "alice");
    assert!(user["session_expires_at"].as_u64().is_some());
    let logout_url = user["logout_url"].as_str().expect("logout_url").to_string();
    assert!(
        !user.to_string().contains("eyJ"),
        "no token reaches JavaScript: {user}"
    );

    if let Some(redis) = redis {
        // A dump of Redis holds no token and nothing readable about the user.
        let mut dump = String::new();
        for key in redis.cli(&["--scan"]).lines() {
            dump.push_str(key);
            dump.push('\n');
            dump.push_str(&redis.cli(&["GET", key]));
            dump.push_str(&redis.cli(&["SMEMBERS", key]));
        }
        assert!(dump.contains("mg:s:"), "sessions are in Redis: {dump}");
        let token = auth1.trim_start_matches("Bearer ");
        for secret in [
            token,
            "eyJ",
            "alice",
            &first_cookie[first_cookie.len() - 20..],
        ] {
            assert!(!dump.contains(secret), "{secret:?} found in the Redis dump");
        }
    }

    // Refresh: once the access token is due, the next call refreshes it (once).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = browser.api(Method::GET, &p.url("/api/orders")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let auth2 = b
        .last_request()
        .expect("request")
        .header("authorization")
        .expect("bearer");
    assert_ne!(auth1, auth2, "a refreshed token was sent");
    assert_eq!(idp.count("tokens issued (refresh_token)"), 1);
    let r = browser.api(Method::GET, &p.url("/api/orders")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        idp.count("tokens issued (refresh_token)"),
        1,
        "fresh tokens are reused"
    );
    assert_eq!(
        gw.metric("meshgate_bff_refreshes_total", &[("outcome", "ok")])
            .await,
        Some(1.0)
    );

    // Logout: needs the CSRF proof; ends the session and goes to the provider.
    let r = browser.get(&p.url("/auth/logout"), &[]).await;
    assert_eq!(r.status, 401, "logout without a CSRF proof");
    assert!(browser.cookie(COOKIE).is_some());
    let r = browser.get(&p.url(&logout_url), &[]).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let end = r.location();
    assert!(
        end.starts_with(&format!("{}/logout?", idp.issuer())),
        "{end}"
    );
    assert!(end.contains("id_token_hint=eyJ"), "{end}");
    assert!(browser.cookie(COOKIE).is_none(), "session cookie cleared");
    let r = browser.api(Method::GET, &p.url("/auth/user")).await;
    assert_eq!(r.status, 401);
    // The old cookie is dead on the server too.
    browser.set_cookie(COOKIE, Some(&first_cookie));
    let r = browser.api(Method::GET, &p.url("/api/orders")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.metric("meshgate_bff_sessions_ended_total", &[("reason", "logout")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric("meshgate_bff_callbacks_total", &[("outcome", "ok")])
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_api_refresh_logout_on_the_memory_store() {
    full_flow("{ backend: memory }", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_api_refresh_logout_on_redis_with_no_token_in_the_dump() {
    let redis = Redis::start();
    let sessions = format!("{{ backend: redis, url: \"{}\" }}", redis.url());
    full_flow(&sessions, Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_sessions_and_refresh_once_for_fifty_concurrent_calls() {
    let redis = Redis::start();
    let b = Backend::start("api").await;
    let (pa, pb) = (Ports::new(), Ports::new());
    let (base_a, base_b) = (pa.url(""), pb.url(""));
    let idp = Identity::start(&[base_a.clone(), base_b.clone()], ACCESS_TTL).await;
    let sessions = format!("{{ backend: redis, url: \"{}\" }}", redis.url());
    let a = start_edge(&edge_yaml(&pa, idp.issuer(), &b, &sessions)).await;
    let bb = start_edge(&edge_yaml(&pb, idp.issuer(), &b, &sessions)).await;

    let mut browser = Browser::new();
    let done = log_in(&mut browser, &base_a, "/").await;
    assert_eq!(done.status, 303, "{}", done.body);
    // The session made on A works on B.
    let r = browser.api(Method::GET, &pb.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);

    tokio::time::sleep(Duration::from_secs(6)).await;
    let cookie = format!("{COOKIE}={}", browser.cookie(COOKIE).expect("cookie"));
    let client = reqwest::Client::new();
    let calls = (0..50).map(|i| {
        let url = if i % 2 == 0 {
            pa.url("/api/x")
        } else {
            pb.url("/api/x")
        };
        let req = client
            .get(url)
            .header("cookie", cookie.clone())
            .header("x-csrf", "1");
        async move { req.send().await.map(|r| r.status().as_u16()) }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
    assert_eq!(ok, 50, "{statuses:?}");
    assert_eq!(
        idp.count("tokens issued (refresh_token)"),
        1,
        "exactly one refresh at the provider"
    );
    let refreshed = [&a, &bb];
    let mut total = 0.0;
    for gw in refreshed {
        total += gw
            .metric("meshgate_bff_refreshes_total", &[("outcome", "ok")])
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(total, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_and_never_passes_anonymously() {
    let mut redis = Redis::start();
    let b = Backend::start("api").await;
    let p = Ports::new();
    let base = p.url("");
    let idp = Identity::start(std::slice::from_ref(&base), "5m").await;
    let sessions = format!(
        "{{ backend: redis, url: \"{}\", timeout: 100ms }}",
        redis.url()
    );
    let _gw = start_edge(&edge_yaml(&p, idp.issuer(), &b, &sessions)).await;
    let mut browser = Browser::new();
    assert_eq!(log_in(&mut browser, &base, "/").await.status, 303);
    assert_eq!(browser.api(Method::GET, &p.url("/api/x")).await.status, 200);
    let before = b.request_count();

    redis.kill();
    for path in ["/api/x", "/public/x"] {
        let r = browser.api(Method::GET, &p.url(path)).await;
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "auth_unavailable");
    }
    assert_eq!(
        b.request_count(),
        before,
        "nothing passed while Redis was down"
    );
    let r = browser.get(&p.url("/auth/login"), &[]).await;
    assert_eq!(r.status, 503, "no login without a store");

    redis.restart();
    // Sessions are gone with the killed Redis (no persistence): the user is anonymous,
    // cleanly, once Redis answers again.
    let back = meshgate_tests::wait::until(Duration::from_secs(10), || {
        let c = reqwest::Client::new();
        let cookie = format!("{COOKIE}={}", browser.cookie(COOKIE).unwrap_or_default());
        let url = p.url("/api/x");
        async move {
            let r = c
                .get(url)
                .header("cookie", cookie)
                .header("x-csrf", "1")
                .send()
                .await
                .ok()?;
            (r.status() == 401).then_some(())
        }
    })
    .await;
    assert!(back.is_some(), "decisions resume after Redis returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_work_on_a_redis_cluster() {
    let rc = RedisCluster::start(3);
    let nodes = rc
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let b = Backend::start("api").await;
    let p = Ports::new();
    let base = p.url("");
    let idp = Identity::start(std::slice::from_ref(&base), "5m").await;
    let sessions = format!("{{ backend: redis, cluster: [{nodes}] }}");
    let _gw = start_edge(&edge_yaml(&p, idp.issuer(), &b, &sessions)).await;
    let mut browser = Browser::new();
    assert_eq!(log_in(&mut browser, &base, "/").await.status, 303);
    let r = browser.api(Method::GET, &p.url("/api/x")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        rc.dbsizes().iter().sum::<u64>() >= 2,
        "the session and its indexes are in the cluster: {:?}",
        rc.dbsizes()
    );
    let user = browser.api(Method::GET, &p.url("/auth/user")).await.json();
    let logout = user["logout_url"].as_str().expect("logout_url").to_string();
    assert_eq!(browser.get(&p.url(&logout), &[]).await.status, 302);
    browser.set_cookie(COOKIE, None);
    assert_eq!(browser.api(Method::GET, &p.url("/api/x")).await.status, 401);
}
