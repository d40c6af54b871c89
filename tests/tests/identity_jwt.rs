//! The `jwt` filter against the dev OpenID Provider (`backends/identity`) as real processes:
//! a user logs in with Authorization Code + PKCE, and the access token opens exactly the
//! routes its scopes and roles allow; the upstream gets the verified identity only.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshgate_tests::backend::Backend;
use meshgate_tests::config::Ports;
use meshgate_tests::ports::free_port;
use meshgate_tests::proc::Meshgate;
use meshgate_tests::wait;

const SECRET: &str = "meshgate-dev-web-secret";
const REDIRECT: &str = "http://127.0.0.1:3000/auth/callback";

struct Identity {
    child: Child,
    issuer: String,
    _data: tempfile::TempDir,
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn identity_bin() -> PathBuf {
    let mut dir = std::env::current_exe().expect("test exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("identity");
    assert!(
        bin.exists(),
        "identity binary not found at {}: run `cargo build -p identity`",
        bin.display()
    );
    bin
}

async fn start_identity() -> Identity {
    let port = free_port();
    let data = tempfile::tempdir().expect("data dir");
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../backends/identity/demo");
    let child = Command::new(identity_bin())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--users")
        .arg(demo.join("users.yaml"))
        .arg("--clients")
        .arg(demo.join("clients.yaml"))
        .env_remove("OIDC_CLIENT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start identity");
    let issuer = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    let health = format!("{issuer}/healthz");
    let up = wait::until(Duration::from_secs(30), || async {
        c.get(&health)
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
    assert!(up.is_some(), "identity did not become healthy at {issuer}");
    Identity {
        child,
        issuer,
        _data: data,
    }
}

/// Logs `user` in through the code flow with PKCE and returns the access token.
async fn access_token(issuer: &str, user: &str, scope: &str) -> String {
    let verifier = "a-pkce-verifier-that-is-long-enough-for-rfc-7636-0123456789";
    let challenge = {
        use sha2::{Digest, Sha256};
        base64_url(&Sha256::digest(verifier.as_bytes()))
    };
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let html = c
        .get(format!("{issuer}/authorize"))
        .query(&[
            ("client_id", "web"),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", scope),
            ("state", "st"),
            ("nonce", "no"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .expect("authorize")
        .text()
        .await
        .expect("form");
    let marker = "name=\"auth_request\" value=\"";
    let start = html.find(marker).expect("login form") + marker.len();
    let auth_request = &html[start..start + html[start..].find('"').expect("end of value")];
    let login = c
        .post(format!("{issuer}/login"))
        .form(&[
            ("auth_request", auth_request),
            ("username", user),
            ("password", user),
        ])
        .send()
        .await
        .expect("login");
    let location = login.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let url = reqwest::Url::parse(&location).expect("redirect url");
    let code = url
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code in redirect");
    let token: serde_json::Value = c
        .post(format!("{issuer}/token"))
        .basic_auth("web", Some(SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    token["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn base64_url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_dev_provider_open_exactly_the_allowed_routes() {
    let idp = start_identity().await;
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
        idp.issuer,
        b.addr()
    );
    let gw = Meshgate::start(&yaml).await;
    let alice = access_token(&idp.issuer, "alice", "openid profile orders:write").await;
    let admin = access_token(&idp.issuer, "admin", "openid profile").await;
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
