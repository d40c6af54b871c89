//! The dev OpenID Provider (`backends/identity`) as a child process, registered for the
//! edges a test starts, and a browser-less login through its HTML form.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::wait;

/// The client secret of the `web` client in every test registration.
pub const CLIENT_SECRET: &str = "meshgate-test-web-secret";

/// A running identity provider; killed on drop.
pub struct Identity {
    child: Child,
    issuer: String,
    dir: tempfile::TempDir,
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `identity` binary next to the test executable (built by `cargo build -p identity`).
pub fn identity_bin() -> PathBuf {
    crate::proc::sibling_bin("identity", "cargo build -p identity`")
}

impl Identity {
    /// Starts a provider whose client `web` (secret [`CLIENT_SECRET`], audience
    /// `shop-api`) accepts `{edge}/auth/callback` and `{edge}/` for every base URL in
    /// `edges`, sends back-channel logouts to the first edge, and issues access tokens
    /// valid for `access_ttl`.
    pub async fn start(edges: &[String], access_ttl: &str) -> Identity {
        Self::start_on(
            free_port(),
            edges,
            access_ttl,
            tempfile::tempdir().expect("dir"),
        )
        .await
    }

    async fn start_on(
        port: u16,
        edges: &[String],
        access_ttl: &str,
        dir: tempfile::TempDir,
    ) -> Identity {
        let list = |suffix: &str| {
            edges
                .iter()
                .map(|e| format!("\"{e}{suffix}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let clients = format!(
            "clients:\n  - client_id: web\n    client_secret: {CLIENT_SECRET}\n\
             \x20   redirect_uris: [{}]\n    post_logout_redirect_uris: [{}]\n\
             \x20   backchannel_logout_uri: \"{}/auth/backchannel-logout\"\n\
             \x20   audience: shop-api\n\
             \x20   scopes: [openid, profile, email, offline_access, \"orders:read\", \"orders:write\"]\n\
             \x20   signing_alg: RS256\n",
            list("/auth/callback"),
            list("/"),
            edges.first().map_or("http://127.0.0.1:9", String::as_str),
        );
        std::fs::write(dir.path().join("clients.yaml"), clients).expect("write clients");
        let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../backends/identity/demo");
        let log = std::fs::File::create(dir.path().join("identity.log")).expect("log file");
        let child = Command::new(identity_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--users")
            .arg(demo.join("users.yaml"))
            .arg("--clients")
            .arg(dir.path().join("clients.yaml"))
            .args(["--access-token-ttl", access_ttl])
            .stdout(Stdio::null())
            .stderr(log)
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
        Identity { child, issuer, dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The provider's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("identity.log")).unwrap_or_default()
    }

    /// How many log lines contain `needle` (e.g. `tokens issued (refresh_token)`).
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Stops the provider (it can be started again on the same port with [`Self::restart`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The directory holding its data, clients file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Logs `user` in on the provider's form, starting from the authorization URL the browser
/// was redirected to, and returns the redirect back to the client (with `code`, `state`
/// and `iss`) without following it.
pub async fn login(authorize_url: &str, user: &str, password: &str) -> String {
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let html = c
        .get(authorize_url)
        .send()
        .await
        .expect("authorize")
        .text()
        .await
        .expect("form");
    let marker = "name=\"auth_request\" value=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no login form in: {html}"))
        + marker.len();
    let auth_request = &html[start..start + html[start..].find('"').expect("end of value")];
    let login_url = reqwest::Url::parse(authorize_url)
        .and_then(|u| u.join("/login"))
        .expect("authorize url");
    let answer = c
        .post(login_url)
        .form(&[
            ("auth_request", auth_request),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .expect("login");
    answer
        .headers()
        .get("location")
        .unwrap_or_else(|| panic!("login answered {} without a redirect", answer.status()))
        .to_str()
        .expect("location")
        .to_string()
}

/// An access token for `user` from the provider at `issuer`, the way a relying party gets
/// one: the code flow with PKCE through the login form, then the code exchange as client
/// `web` with `client_secret` and the registered `redirect_uri`.
pub async fn access_token(
    issuer: &str,
    client_secret: &str,
    redirect_uri: &str,
    user: &str,
    scope: &str,
) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let verifier = "a-pkce-verifier-that-is-long-enough-for-rfc-7636-0123456789";
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
    let mut authorize = reqwest::Url::parse(&format!("{issuer}/authorize")).expect("issuer url");
    authorize
        .query_pairs_mut()
        .append_pair("client_id", "web")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("scope", scope)
        .append_pair("state", "st")
        .append_pair("nonce", "no")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = login(authorize.as_str(), user, user).await;
    let code = reqwest::Url::parse(&back)
        .expect("redirect url")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {back}"));
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth("web", Some(client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
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
        .unwrap_or_else(|| panic!("no access_token in {token}"))
        .to_string()
}
