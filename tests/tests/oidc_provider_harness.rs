//! Self-test of the `oidc-provider` harness: a hand-built authorization code + PKCE flow
//! against panva's certified OpenID Provider, with refresh-token rotation, PKCE refusal,
//! failed logins, revocation and RP-initiated logout with a back-channel logout token. What
//! these tests pin down (offline_access only with prompt=consent, replayed refresh tokens
//! revoking the grant, JWT access tokens that cannot be revoked...) is what the BFF may rely
//! on.

use std::collections::HashMap;
use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::client::{send, Reply};
use meshgate_tests::oidc_provider::{
    jwt_claims, jwt_header, login, random_token, OidcProvider, Pkce, ProviderOptions, UserAgent,
    DEFAULT_API_AUDIENCE,
};
use meshgate_tests::ports::free_port;
use meshgate_tests::wait::until;
use reqwest::Url;

const SCOPE: &str = "openid profile email offline_access";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build HTTP client")
}

/// One authorization request's secrets and the URL the browser is sent to.
struct AuthRequest {
    url: String,
    state: String,
    nonce: String,
    pkce: Pkce,
}

fn auth_request(authorization_endpoint: &str, op: &OidcProvider) -> AuthRequest {
    let (state, nonce, pkce) = (random_token(), random_token(), Pkce::new());
    let mut url = Url::parse(authorization_endpoint).expect("authorization_endpoint is a URL");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", op.client_id())
        .append_pair("redirect_uri", &op.options().redirect_uris[0])
        .append_pair("scope", SCOPE)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    AuthRequest {
        url: url.to_string(),
        state,
        nonce,
        pkce,
    }
}

fn query(url: &str) -> HashMap<String, String> {
    Url::parse(url)
        .unwrap_or_else(|e| panic!("{url:?}: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// Asserts `landed` is the client's redirect URI with the request's `state` and the
/// provider's `iss`; returns the code.
fn code_from(landed: &str, op: &OidcProvider, req: &AuthRequest) -> String {
    let redirect_uri = &op.options().redirect_uris[0];
    assert!(
        landed.starts_with(&format!("{redirect_uri}?")),
        "login ended at {landed}, not at {redirect_uri}"
    );
    let q = query(landed);
    assert_eq!(q.get("state"), Some(&req.state), "{landed}");
    assert_eq!(q.get("iss"), Some(&op.issuer()), "{landed}");
    assert!(!q.contains_key("error"), "{landed}");
    q.get("code")
        .unwrap_or_else(|| panic!("no code in {landed}"))
        .clone()
}

/// Code exchange with client_secret_basic.
async fn exchange(token_endpoint: &str, op: &OidcProvider, code: &str, verifier: &str) -> Reply {
    send(
        http()
            .post(token_endpoint)
            .basic_auth(op.client_id(), Some(op.client_secret()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", op.options().redirect_uris[0].as_str()),
                ("code_verifier", verifier),
            ]),
    )
    .await
}

/// Refresh with client_secret_post.
async fn refresh(token_endpoint: &str, op: &OidcProvider, refresh_token: &str) -> Reply {
    send(http().post(token_endpoint).form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", op.client_id()),
        ("client_secret", op.client_secret()),
    ]))
    .await
}

fn token<'a>(body: &'a serde_json::Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("no {name} in token response {body:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_with_pkce_refresh_rotation_and_wrong_verifier() {
    let redirect_uri = format!("http://127.0.0.1:{}/auth/callback", free_port());
    let op = OidcProvider::start(ProviderOptions {
        access_ttl: Duration::from_secs(120),
        ..ProviderOptions::new(&redirect_uri)
    })
    .await;

    let doc = op.discovery().await;
    assert_eq!(doc["issuer"], op.issuer());
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    for name in ["end_session_endpoint", "revocation_endpoint", "jwks_uri"] {
        assert!(doc[name].is_string(), "no {name} in {doc:#}");
    }
    assert_eq!(doc["backchannel_logout_supported"], true);
    let authorization_endpoint = doc["authorization_endpoint"].as_str().expect("authz");
    let token_endpoint = doc["token_endpoint"].as_str().expect("token_endpoint");

    // Login with the dev forms, then the code exchange.
    let req = auth_request(authorization_endpoint, &op);
    let mut ua = UserAgent::new();
    let landed = ua.login(&req.url, "alice", "alice").await;
    let code = code_from(&landed, &op, &req);
    assert!(
        ua.cookie_names().iter().any(|n| n == "_session"),
        "no provider session cookie: {:?}",
        ua.cookie_names()
    );

    let reply = exchange(token_endpoint, &op, &code, &req.pkce.verifier).await;
    assert_eq!(reply.status, 200, "code exchange: {}", reply.text());
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    // offline_access is dropped: oidc-provider keeps it only with prompt=consent.
    assert_eq!(body["scope"], "openid profile email");
    let expires_in = body["expires_in"].as_u64().expect("expires_in");
    assert!((100..=120).contains(&expires_in), "expires_in {expires_in}");
    let id_token = token(&body, "id_token");
    let access_token = token(&body, "access_token");
    let refresh_token = token(&body, "refresh_token");

    assert_eq!(jwt_header(id_token)["alg"], "RS256");
    let id = jwt_claims(id_token);
    assert_eq!(id["iss"], op.issuer());
    assert_eq!(id["aud"], op.client_id());
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["nonce"], req.nonce.as_str());
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["name"], "Alice Example");
    // `sid` only for clients with backchannel_logout_session_required (see below).
    assert!(id.get("sid").is_none(), "{id:#}");

    assert_eq!(jwt_header(access_token)["typ"], "at+jwt");
    let at = jwt_claims(access_token);
    assert_eq!(at["aud"], DEFAULT_API_AUDIENCE);
    assert_eq!(at["iss"], op.issuer());
    assert_eq!(at["sub"], "alice");
    assert_eq!(at["client_id"], op.client_id());
    assert_eq!(at["scope"], "openid profile email");

    // Refresh (client_secret_post): new tokens, the refresh token rotates.
    let reply = refresh(token_endpoint, &op, refresh_token).await;
    assert_eq!(reply.status, 200, "refresh: {}", reply.text());
    let refreshed = reply.json();
    assert_eq!(refreshed["scope"], "openid profile email");
    // The API's JWT access token is not for userinfo, and oidc-provider neither
    // introspects nor revokes structured tokens (RFC 7009 unsupported_token_type).
    let userinfo = doc["userinfo_endpoint"]
        .as_str()
        .expect("userinfo_endpoint");
    let info = send(http().get(userinfo).bearer_auth(access_token)).await;
    assert_eq!(info.status, 401, "{}", info.text());
    let revocation = doc["revocation_endpoint"]
        .as_str()
        .expect("revocation_endpoint");
    let revoked = send(
        http()
            .post(revocation)
            .basic_auth(op.client_id(), Some(op.client_secret()))
            .form(&[("token", access_token)]),
    )
    .await;
    assert_eq!(revoked.status, 400, "{}", revoked.text());
    assert_eq!(revoked.json()["error"], "unsupported_token_type");
    let access_token_2 = token(&refreshed, "access_token");
    let refresh_token_2 = token(&refreshed, "refresh_token");
    assert_ne!(access_token_2, access_token);
    assert_ne!(
        refresh_token_2, refresh_token,
        "refresh token did not rotate"
    );
    let id_2 = jwt_claims(token(&refreshed, "id_token"));
    assert_eq!(id_2["sub"], "alice");
    assert_eq!(jwt_claims(access_token_2)["aud"], DEFAULT_API_AUDIENCE);

    // Second login on the same user agent: single sign-on, no forms; a wrong
    // code_verifier is refused.
    let req2 = auth_request(authorization_endpoint, &op);
    let landed = ua.login(&req2.url, "unused", "unused").await;
    let code2 = code_from(&landed, &op, &req2);
    let wrong = exchange(token_endpoint, &op, &code2, &Pkce::new().verifier).await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert_eq!(wrong.json()["error"], "invalid_grant");
    let no_verifier = send(
        http()
            .post(token_endpoint)
            .basic_auth(op.client_id(), Some(op.client_secret()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code2.as_str()),
                ("redirect_uri", redirect_uri.as_str()),
            ]),
    )
    .await;
    assert_eq!(no_verifier.status, 400, "{}", no_verifier.text());
    // A refused attempt does not use the code up.
    let right = exchange(token_endpoint, &op, &code2, &req2.pkce.verifier).await;
    assert_eq!(right.status, 200, "{}", right.text());

    // Replaying a rotated refresh token is treated as theft: the whole grant is revoked,
    // so the current refresh token dies too (a BFF must not refresh concurrently).
    let stale = refresh(token_endpoint, &op, refresh_token).await;
    assert_eq!(stale.status, 400, "{}", stale.text());
    assert_eq!(stale.json()["error"], "invalid_grant");
    let after = refresh(token_endpoint, &op, refresh_token_2).await;
    assert_eq!(after.status, 400, "{}", after.text());
    assert_eq!(after.json()["error"], "invalid_grant");

    // A code is single-use.
    let replay = exchange(token_endpoint, &op, &code, &req.pkce.verifier).await;
    assert_eq!(replay.status, 400, "{}", replay.text());
    assert_eq!(replay.json()["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_is_required() {
    let redirect_uri = format!("http://127.0.0.1:{}/cb", free_port());
    let op = OidcProvider::start(ProviderOptions::new(&redirect_uri)).await;
    let authorization_endpoint = op.endpoint("authorization_endpoint").await;
    let mut url = Url::parse(&authorization_endpoint).expect("URL");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", op.client_id())
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", SCOPE)
        .append_pair("state", "s");
    let landed = UserAgent::new().login(url.as_str(), "alice", "x").await;
    let q = query(&landed);
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("invalid_request"),
        "{landed}"
    );
    assert_eq!(q.get("state").map(String::as_str), Some("s"), "{landed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_initiated_logout_posts_a_backchannel_logout_token() {
    let receiver = Backend::start("backchannel").await;
    let redirect_uri = format!("http://127.0.0.1:{}/auth/callback", free_port());
    let logged_out = format!("http://127.0.0.1:{}/logged-out", free_port());
    let op = OidcProvider::start(ProviderOptions {
        post_logout_redirect_uris: vec![logged_out.clone()],
        backchannel_logout_uri: Some(format!(
            "http://{}/auth/backchannel-logout",
            receiver.addr()
        )),
        ..ProviderOptions::new(&redirect_uri)
    })
    .await;
    let doc = op.discovery().await;
    let token_endpoint = doc["token_endpoint"].as_str().expect("token_endpoint");
    let end_session = doc["end_session_endpoint"].as_str().expect("end_session");

    let req = auth_request(doc["authorization_endpoint"].as_str().expect("authz"), &op);
    let mut ua = UserAgent::new();
    let code = code_from(&ua.login(&req.url, "bob", "bob").await, &op, &req);
    let reply = exchange(token_endpoint, &op, &code, &req.pkce.verifier).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let id_token = token(&body, "id_token");
    let refresh_token = token(&body, "refresh_token").to_owned();
    let sid = jwt_claims(id_token)["sid"].clone();
    assert!(
        sid.is_string(),
        "no sid in ID token {:#}",
        jwt_claims(id_token)
    );

    let state = random_token();
    let mut url = Url::parse(end_session).expect("URL");
    url.query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair("post_logout_redirect_uri", &logged_out)
        .append_pair("state", &state);
    let landed = ua.logout(url.as_str()).await;
    assert!(landed.starts_with(&logged_out), "logout ended at {landed}");
    assert_eq!(query(&landed).get("state"), Some(&state), "{landed}");
    assert!(
        !ua.cookie_names().iter().any(|n| n == "_session"),
        "session cookie survived logout: {:?}",
        ua.cookie_names()
    );

    let posted = until(Duration::from_secs(10), || async {
        receiver
            .requests()
            .into_iter()
            .find(|r| r.path == "/auth/backchannel-logout")
    })
    .await
    .expect("no back-channel logout request");
    assert_eq!(posted.method, "POST");
    let form: HashMap<String, String> = url_form(&posted.body);
    let logout_token = form
        .get("logout_token")
        .unwrap_or_else(|| panic!("no logout_token in {form:?}"));
    let claims = jwt_claims(logout_token);
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], op.client_id());
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["sid"], sid);
    assert!(
        claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object(),
        "{claims:#}"
    );
    assert!(claims.get("nonce").is_none(), "{claims:#}");

    // Logout revokes the grant: its refresh token is dead.
    let after = refresh(token_endpoint, &op, &refresh_token).await;
    assert_eq!(after.status, 400, "{}", after.text());
    assert_eq!(after.json()["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_offline_access_and_revocation() {
    let redirect_uri = format!("http://127.0.0.1:{}/cb", free_port());
    let op = OidcProvider::start(ProviderOptions {
        jwt_access_tokens: false,
        ..ProviderOptions::new(&redirect_uri)
    })
    .await;
    let doc = op.discovery().await;
    let mut req = auth_request(doc["authorization_endpoint"].as_str().expect("authz"), &op);
    req.url.push_str("&prompt=consent");
    let code = code_from(&login(&req.url, "alice", "alice").await, &op, &req);
    let token_endpoint = doc["token_endpoint"].as_str().expect("token_endpoint");
    let reply = exchange(token_endpoint, &op, &code, &req.pkce.verifier).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(token(&body, "access_token").split('.').count(), 1);
    token(&body, "refresh_token");
    // With prompt=consent, offline_access survives.
    assert_eq!(body["scope"], "openid profile email offline_access");

    // Revocation: opaque access tokens and refresh tokens (what a BFF does on logout).
    let revocation = doc["revocation_endpoint"]
        .as_str()
        .expect("revocation_endpoint");
    for (name, hint) in [
        ("access_token", "access_token"),
        ("refresh_token", "refresh_token"),
    ] {
        let revoked = send(
            http()
                .post(revocation)
                .basic_auth(op.client_id(), Some(op.client_secret()))
                .form(&[("token", token(&body, name)), ("token_type_hint", hint)]),
        )
        .await;
        assert_eq!(revoked.status, 200, "revoke {name}: {}", revoked.text());
    }
    let after = refresh(token_endpoint, &op, token(&body, "refresh_token")).await;
    assert_eq!(after.status, 400, "{}", after.text());
    assert_eq!(after.json()["error"], "invalid_grant");
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(body)))
        .expect("form body")
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_end_with_access_denied() {
    let redirect_uri = format!("http://127.0.0.1:{}/cb", free_port());
    let op = OidcProvider::start(ProviderOptions::new(&redirect_uri)).await;
    let authorization_endpoint = op.endpoint("authorization_endpoint").await;
    for (user, password) in [("mallory", "mallory"), ("alice", "wrong")] {
        let req = auth_request(&authorization_endpoint, &op);
        let landed = login(&req.url, user, password).await;
        assert!(landed.starts_with(&redirect_uri), "{landed}");
        let q = query(&landed);
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("access_denied"),
            "{landed}"
        );
        assert_eq!(q.get("state"), Some(&req.state), "{landed}");
        assert!(!q.contains_key("code"), "{landed}");
    }
}
