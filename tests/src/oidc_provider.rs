//! A third-party OpenID Provider for interop tests of the BFF login: panva's certified
//! `oidc-provider` (Node.js, `tests/oidc-provider/server.mjs`) on a free loopback port
//! ([`OidcProvider`]), and a browser-less user agent for its login, consent and logout pages
//! ([`UserAgent`], [`login`]).
//!
//! Needs Node.js >= 20.19 and `tests/oidc-provider/node_modules`: run
//! `tests/oidc-provider/setup.sh` first (`scripts/test.sh` does). The harness installs nothing
//! itself, because test processes run in parallel and concurrent `npm ci` runs in one
//! directory corrupt each other; it panics with that instruction instead.
//!
//! The provider has one confidential client (see [`ProviderOptions`]), accounts `alice` and
//! `bob` whose passwords are their names (any other login ends the authorization with
//! `error=access_denied` at the redirect URI), PKCE S256 required, rotating refresh
//! tokens issued on every code exchange (with or without `offline_access`), RS256 ID tokens
//! carrying the profile and email claims, and access tokens that are RS256 JWTs for one API
//! (`aud` = [`ProviderOptions::api_audience`]) unless [`ProviderOptions::jwt_access_tokens`]
//! is off.
//!
//! The pages are parsed by hand: they are oidc-provider's own few small templates, and a
//! full HTML parser (html5ever) would be this crate's heaviest dependency for three forms.
//! Cookies are kept by hand too (one origin, the attributes oidc-provider sets), so the
//! user agent sees exactly which cookies it sends, without reqwest's `cookies` feature.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::Url;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::ports::free_port;
use crate::wait::POLL_INTERVAL;

/// How long `node server.mjs` may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request deadline of the user agent and of [`OidcProvider::discovery`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Redirects the user agent follows for one navigation before it gives up.
const MAX_REDIRECTS: usize = 20;
/// Forms the user agent submits in one [`UserAgent::login`] or [`UserAgent::logout`].
const MAX_FORMS: usize = 6;

/// Client id the provider registers unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "meshgate-bff";
/// Client secret the provider registers unless told otherwise.
pub const DEFAULT_CLIENT_SECRET: &str = "meshgate-bff-secret";
/// Resource indicator access tokens are issued for unless told otherwise.
pub const DEFAULT_API_RESOURCE: &str = "urn:meshgate:shop-api";
/// `aud` of the access tokens unless told otherwise.
pub const DEFAULT_API_AUDIENCE: &str = "shop-api";

/// Every variable `server.mjs` reads; the harness clears them all before it sets its own, so
/// nothing leaks in from the environment of the test run.
const SERVER_ENV: &[&str] = &[
    "PORT",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "REDIRECT_URIS",
    "POST_LOGOUT_REDIRECT_URIS",
    "BACKCHANNEL_LOGOUT_URI",
    "ACCESS_TTL",
    "ID_TOKEN_TTL",
    "REFRESH_TTL",
    "API_RESOURCE",
    "API_AUDIENCE",
    "ACCESS_TOKEN_FORMAT",
];

/// The provider's one client and the API its access tokens are for.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    pub client_id: String,
    /// Accepted with `client_secret_basic` and `client_secret_post`.
    pub client_secret: String,
    /// At least one.
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Where the provider POSTs `logout_token` (with `sid`) on logout.
    pub backchannel_logout_uri: Option<String>,
    /// Access token lifetime (whole seconds, at least 1): short values force refreshes.
    pub access_ttl: Duration,
    pub id_token_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Resource indicator (an absolute URI) every authorization request defaults to.
    pub api_resource: String,
    pub api_audience: String,
    /// RS256 JWT access tokens (`typ` `at+jwt`, `aud` = `api_audience`); opaque otherwise.
    pub jwt_access_tokens: bool,
}

impl ProviderOptions {
    /// The defaults above with one redirect URI: access tokens live 300 s, ID tokens 1 h,
    /// refresh tokens 1 day.
    pub fn new(redirect_uri: &str) -> ProviderOptions {
        ProviderOptions {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            redirect_uris: vec![redirect_uri.to_owned()],
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: None,
            access_ttl: Duration::from_secs(300),
            id_token_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(86_400),
            api_resource: DEFAULT_API_RESOURCE.to_owned(),
            api_audience: DEFAULT_API_AUDIENCE.to_owned(),
            jwt_access_tokens: true,
        }
    }

    fn env(&self, port: u16) -> Vec<(&'static str, String)> {
        let secs = |d: Duration| d.as_secs().max(1).to_string();
        let mut env = vec![
            ("PORT", port.to_string()),
            ("CLIENT_ID", self.client_id.clone()),
            ("CLIENT_SECRET", self.client_secret.clone()),
            ("REDIRECT_URIS", self.redirect_uris.join(" ")),
            (
                "POST_LOGOUT_REDIRECT_URIS",
                self.post_logout_redirect_uris.join(" "),
            ),
            ("ACCESS_TTL", secs(self.access_ttl)),
            ("ID_TOKEN_TTL", secs(self.id_token_ttl)),
            ("REFRESH_TTL", secs(self.refresh_ttl)),
            ("API_RESOURCE", self.api_resource.clone()),
            ("API_AUDIENCE", self.api_audience.clone()),
            (
                "ACCESS_TOKEN_FORMAT",
                if self.jwt_access_tokens {
                    "jwt"
                } else {
                    "opaque"
                }
                .to_owned(),
            ),
        ];
        if let Some(uri) = &self.backchannel_logout_uri {
            env.push(("BACKCHANNEL_LOGOUT_URI", uri.clone()));
        }
        env
    }
}

/// `tests/oidc-provider`: `server.mjs`, `setup.sh` and the installed packages.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

/// Panics, telling to run `setup.sh`, unless `node_modules` was installed from the current
/// `package-lock.json` (the stamp `setup.sh` writes).
fn check_installed(dir: &Path) {
    let hint = format!("run {}/setup.sh (scripts/test.sh does)", dir.display());
    let lock = std::fs::read(dir.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("read {}/package-lock.json: {e}", dir.display()));
    let want: String = Sha256::digest(&lock)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stamp =
        std::fs::read_to_string(dir.join("node_modules/.meshgate-lock.sha256")).unwrap_or_default();
    assert!(
        dir.join("node_modules/oidc-provider/package.json").exists(),
        "oidc-provider is not installed: {hint}"
    );
    assert!(
        stamp.trim() == want,
        "tests/oidc-provider/node_modules is stale (installed from another package-lock.json): {hint}"
    );
}

/// `node server.mjs` on a free loopback port; issuer `http://127.0.0.1:PORT`. Killed on drop
/// (its output is printed then if the test is failing).
pub struct OidcProvider {
    child: Child,
    exit: Option<ExitStatus>,
    port: u16,
    options: ProviderOptions,
    logs: TempDir,
}

impl OidcProvider {
    /// Starts the provider and waits (polling, [`READY_TIMEOUT`]) for its ready line; panics
    /// with its output if it does not come.
    pub async fn start(options: ProviderOptions) -> OidcProvider {
        match Self::try_start(options).await {
            Ok(op) => op,
            Err(e) => panic!("oidc-provider did not start: {e}"),
        }
    }

    /// Like [`OidcProvider::start`] but returns the failure; tries another port once when
    /// the first was taken in the meantime.
    pub async fn try_start(options: ProviderOptions) -> Result<OidcProvider, String> {
        let dir = provider_dir();
        check_installed(&dir);
        match Self::start_once(&dir, options.clone()).await {
            Err((e, true)) => Self::start_once(&dir, options)
                .await
                .map_err(|(e2, _)| format!("{e}\n--- and on a second port ---\n{e2}")),
            other => other.map_err(|(e, _)| e),
        }
    }

    /// The error and whether the port was taken.
    async fn start_once(
        dir: &Path,
        options: ProviderOptions,
    ) -> Result<OidcProvider, (String, bool)> {
        let port = free_port();
        let logs = tempfile::Builder::new()
            .prefix("meshgate-oidc-provider-")
            .tempdir()
            .expect("create temp dir for oidc-provider output");
        let stdout = File::create(logs.path().join("stdout.log")).expect("create stdout.log");
        let stderr = File::create(logs.path().join("stderr.log")).expect("create stderr.log");
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for key in SERVER_ENV {
            cmd.env_remove(key);
        }
        for (key, value) in options.env(port) {
            cmd.env(key, value);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): run {}/setup.sh", dir.display()));
        let mut op = OidcProvider {
            child,
            exit: None,
            port,
            options,
            logs,
        };
        let ready = format!("listening on {}", op.issuer());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if op.stdout().lines().any(|l| l.trim() == ready) {
                return Ok(op);
            }
            if let Some(status) = op.try_exit() {
                let logs = op.logs();
                let taken = logs.contains("EADDRINUSE");
                return Err((
                    format!("node server.mjs exited with {status} before it was ready\n{logs}"),
                    taken,
                ));
            }
            if Instant::now() >= deadline {
                return Err((
                    format!("no {ready:?} line within {READY_TIMEOUT:?}\n{}", op.logs()),
                    false,
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `http://127.0.0.1:PORT`, exactly as in the discovery document and tokens.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The options it was started with.
    pub fn options(&self) -> &ProviderOptions {
        &self.options
    }

    pub fn client_id(&self) -> &str {
        &self.options.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.options.client_secret
    }

    /// `ISSUER/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    /// The discovery document; panics if it cannot be fetched.
    pub async fn discovery(&self) -> serde_json::Value {
        let url = self.discovery_url();
        let resp = http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.logs()));
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("discovery document is not JSON: {e}"))
    }

    /// Endpoint `name` (e.g. `"token_endpoint"`) of the discovery document; panics when
    /// the document has none.
    pub async fn endpoint(&self, name: &str) -> String {
        let doc = self.discovery().await;
        doc[name]
            .as_str()
            .unwrap_or_else(|| panic!("discovery document has no {name}: {doc:#}"))
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr.log")).unwrap_or_default()
    }

    /// Everything the process wrote so far: stdout, then stderr.
    pub fn logs(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let what = format!(
                "oidc-provider output (pid {}, {})",
                self.child.id(),
                self.issuer()
            );
            crate::proc::print_tail(&what, &self.logs(), 40);
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build HTTP client")
}

/// Starting from the provider's authorization URL (where the relying party redirected the
/// browser), logs `username` in with a fresh [`UserAgent`] and returns the URL the provider
/// finally redirects to: the client's `redirect_uri` with `code`, `state` and `iss`, or with
/// `error` (`access_denied` for an unknown account or a wrong password). That URL is not
/// fetched.
pub async fn login(authorize_url: &str, username: &str, password: &str) -> String {
    UserAgent::new()
        .login(authorize_url, username, password)
        .await
}

/// A browser on the provider's pages only: follows its redirects, keeps its cookies (so a
/// second login is single sign-on) and submits its forms. Any redirect off the provider's
/// origin ends a navigation and is handed back unfetched.
pub struct UserAgent {
    http: reqwest::Client,
    cookies: Vec<Cookie>,
    /// The requests of the last navigation, for failure messages.
    trail: Vec<String>,
}

#[derive(Clone, Debug)]
struct Cookie {
    name: String,
    value: String,
    path: String,
}

/// Where a navigation stopped.
enum Landing {
    /// A redirect to another origin (not followed).
    Away(String),
    /// A page on the provider.
    Page { url: Url, status: u16, body: String },
}

impl Default for UserAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl UserAgent {
    /// A user agent without cookies.
    pub fn new() -> UserAgent {
        UserAgent {
            http: http_client(),
            cookies: Vec::new(),
            trail: Vec::new(),
        }
    }

    /// Like [`login`], keeping this agent's provider cookies: when the provider already has
    /// a session for it, no login form appears and `username`/`password` go unused. Fills
    /// the login form and approves the consent form whenever the provider shows them;
    /// panics on any other page (an error page's text is in the message).
    pub async fn login(&mut self, authorize_url: &str, username: &str, password: &str) -> String {
        self.trail.clear();
        let start = parse_url(authorize_url);
        let mut landing = self.navigate(start, None).await;
        for _ in 0..MAX_FORMS {
            let (url, status, body) = match landing {
                Landing::Away(to) => return to,
                Landing::Page { url, status, body } => (url, status, body),
            };
            let form = forms(&body)
                .into_iter()
                .find(|f| f.field("prompt").is_some())
                .unwrap_or_else(|| {
                    panic!(
                        "provider answered {status} at {url} with no login or consent form: {}\n{}",
                        page_text(&body),
                        self.trail()
                    )
                });
            let mut fields = form.fields.clone();
            match form.field("prompt") {
                Some("login") => {
                    set_field(&mut fields, "login", username);
                    set_field(&mut fields, "password", password);
                }
                Some("consent") => {}
                other => panic!(
                    "unexpected interaction form (prompt {other:?}) at {url}\n{}",
                    self.trail()
                ),
            }
            let action = url
                .join(&form.action)
                .unwrap_or_else(|e| panic!("form action {:?}: {e}", form.action));
            landing = self.navigate(action, Some(fields)).await;
        }
        panic!(
            "login did not finish after {MAX_FORMS} forms\n{}",
            self.trail()
        )
    }

    /// RP-initiated logout: from the provider's `end_session_endpoint` URL (with
    /// `id_token_hint`, `post_logout_redirect_uri`, `state` as the relying party chose),
    /// confirms "Yes, sign me out" and returns where the provider sends the browser: the
    /// `post_logout_redirect_uri` (with `state`), unfetched, or else the URL of the
    /// provider's own sign-out success page. The provider has sent its back-channel logout
    /// requests by the time it answers the confirmation.
    pub async fn logout(&mut self, end_session_url: &str) -> String {
        self.trail.clear();
        let start = parse_url(end_session_url);
        let mut landing = self.navigate(start, None).await;
        for _ in 0..MAX_FORMS {
            let (url, status, body) = match landing {
                Landing::Away(to) => return to,
                Landing::Page { url, status, body } => (url, status, body),
            };
            let found = forms(&body);
            let Some(form) = found.iter().find(|f| f.field("xsrf").is_some()) else {
                assert!(
                    status == 200 && found.is_empty(),
                    "provider answered {status} at {url} during logout: {}\n{}",
                    page_text(&body),
                    self.trail()
                );
                return url.to_string();
            };
            let action = url
                .join(&form.action)
                .unwrap_or_else(|e| panic!("form action {:?}: {e}", form.action));
            landing = self.navigate(action, Some(form.submitted())).await;
        }
        panic!(
            "logout did not finish after {MAX_FORMS} forms\n{}",
            self.trail()
        )
    }

    /// Names of the cookies the agent holds for the provider (e.g. `_session`).
    pub fn cookie_names(&self) -> Vec<String> {
        self.cookies.iter().map(|c| c.name.clone()).collect()
    }

    /// Forgets every provider cookie (a new browser, same agent).
    pub fn clear_cookies(&mut self) {
        self.cookies.clear();
    }

    fn trail(&self) -> String {
        format!("--- requests ---\n{}", self.trail.join("\n"))
    }

    /// GET `url` (or POST `form` to it) and follow redirects on the same origin.
    async fn navigate(&mut self, mut url: Url, mut form: Option<Vec<(String, String)>>) -> Landing {
        let origin = url.origin();
        for _ in 0..MAX_REDIRECTS {
            let mut req = match &form {
                Some(fields) => self.http.post(url.clone()).form(fields),
                None => self.http.get(url.clone()),
            };
            if let Some(cookie) = self.cookie_header(&url) {
                req = req.header(http::header::COOKIE, cookie);
            }
            let method = if form.is_some() { "POST" } else { "GET" };
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}\n{}", self.trail()));
            let status = resp.status().as_u16();
            self.store_cookies(&url, resp.headers());
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            self.trail.push(format!(
                "{method} {url} -> {status}{}",
                location
                    .as_deref()
                    .map(|l| format!(" {l}"))
                    .unwrap_or_default()
            ));
            let Some(location) = location.filter(|_| (300..400).contains(&status)) else {
                let body = resp.text().await.unwrap_or_default();
                return Landing::Page { url, status, body };
            };
            let next = url
                .join(&location)
                .unwrap_or_else(|e| panic!("Location {location:?} from {url}: {e}"));
            if next.origin() != origin {
                return Landing::Away(next.to_string());
            }
            // 307/308 repeat the request; the rest become a GET, as in browsers.
            if !matches!(status, 307 | 308) {
                form = None;
            }
            url = next;
        }
        panic!("more than {MAX_REDIRECTS} redirects\n{}", self.trail())
    }

    fn cookie_header(&self, url: &Url) -> Option<String> {
        let mut matching: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|c| path_matches(url.path(), &c.path))
            .collect();
        // Longer paths first, as browsers order them (RFC 6265 §5.4).
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        let pairs: Vec<String> = matching
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    fn store_cookies(&mut self, url: &Url, headers: &http::HeaderMap) {
        for value in headers.get_all(http::header::SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let mut parts = text.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
            let mut path = default_path(url.path());
            let mut expired = value.is_empty();
            for attr in parts {
                let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
                let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
                match key.as_str() {
                    "path" if val.starts_with('/') => path = val.to_owned(),
                    "max-age" => expired |= val.parse::<i64>().is_ok_and(|s| s <= 0),
                    // koa's `cookies` deletes by expiring at the epoch.
                    "expires" => expired |= val.contains("1970"),
                    _ => {}
                }
            }
            self.cookies.retain(|c| !(c.name == name && c.path == path));
            if !expired {
                self.cookies.push(Cookie { name, value, path });
            }
        }
    }
}

fn parse_url(url: &str) -> Url {
    Url::parse(url).unwrap_or_else(|e| panic!("not a URL: {url:?}: {e}"))
}

fn set_field(fields: &mut Vec<(String, String)>, name: &str, value: &str) {
    match fields.iter_mut().find(|(n, _)| n == name) {
        Some(field) => field.1 = value.to_owned(),
        None => fields.push((name.to_owned(), value.to_owned())),
    }
}

/// RFC 6265 §5.1.4 path-match.
fn path_matches(request_path: &str, cookie_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

/// RFC 6265 §5.1.4 default-path: the request path up to its last `/`.
fn default_path(request_path: &str) -> String {
    match request_path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => request_path[..i].to_owned(),
    }
}

/// One `<form>` of a page, with what a browser would submit.
#[derive(Clone, Debug, PartialEq)]
struct Form {
    id: Option<String>,
    action: String,
    /// Named `<input>`s (not buttons), in document order, values as in the page.
    fields: Vec<(String, String)>,
    /// The first named submit button of the form, inside it or tied to it by `form=ID`:
    /// the one a user presses.
    button: Option<(String, String)>,
}

impl Form {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The fields plus the pressed button.
    fn submitted(&self) -> Vec<(String, String)> {
        self.fields.iter().chain(&self.button).cloned().collect()
    }
}

/// A start or end tag.
struct Tag {
    name: String,
    end: bool,
    attrs: Vec<(String, String)>,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The tags of `html`, skipping comments, doctype and the contents of `<style>` and
/// `<script>`.
fn tags(html: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        if let Some(after) = rest.strip_prefix("!--") {
            rest = after.find("-->").map_or("", |i| &after[i + 3..]);
            continue;
        }
        if rest.starts_with('!') || rest.starts_with('?') {
            rest = rest.find('>').map_or("", |i| &rest[i + 1..]);
            continue;
        }
        let end = rest.starts_with('/');
        let body = if end { &rest[1..] } else { rest };
        let name_len = body
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(body.len());
        let name = body[..name_len].to_ascii_lowercase();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let (attrs, consumed) = parse_attrs(&body[name_len..]);
        rest = &body[name_len + consumed..];
        if !end && (name == "style" || name == "script") {
            let close = format!("</{name}");
            rest = rest
                .to_ascii_lowercase()
                .find(&close)
                .map_or("", |i| &rest[i..]);
        }
        out.push(Tag { name, end, attrs });
    }
    out
}

/// Attributes up to the closing `>`; returns them and the bytes consumed (including `>`).
fn parse_attrs(s: &str) -> (Vec<(String, String)>, usize) {
    let bytes = s.as_bytes();
    let mut attrs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'>' {
            return (attrs, i + 1);
        }
        if c.is_ascii_whitespace() || c == b'/' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !b"=>/".contains(&bytes[i]) {
            i += 1;
        }
        let name = s[start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let quote = bytes[i];
                let vstart = i + 1;
                let vend = s[vstart..]
                    .bytes()
                    .position(|b| b == quote)
                    .map_or(s.len(), |p| vstart + p);
                value = decode_entities(&s[vstart..vend]);
                i = (vend + 1).min(s.len());
            } else {
                let vstart = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                    i += 1;
                }
                value = decode_entities(&s[vstart..i]);
            }
        }
        attrs.push((name, value));
    }
    (attrs, s.len())
}

/// The character references oidc-provider's templates produce.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').and_then(|semi| {
            let entity = &rest[1..semi];
            let ch = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .map(|hex| u32::from_str_radix(hex, 16))
                    .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            ch.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The forms of a page.
fn forms(html: &str) -> Vec<Form> {
    let mut forms: Vec<Form> = Vec::new();
    let mut open: Option<usize> = None;
    // (form id it names, or the enclosing form's index; name; value)
    let mut buttons: Vec<(Result<String, usize>, String, String)> = Vec::new();
    for tag in tags(html) {
        match (tag.name.as_str(), tag.end) {
            ("form", false) => {
                forms.push(Form {
                    id: tag.attr("id").map(str::to_owned),
                    action: tag.attr("action").unwrap_or_default().to_owned(),
                    fields: Vec::new(),
                    button: None,
                });
                open = Some(forms.len() - 1);
            }
            ("form", true) => open = None,
            ("input", false) => {
                let kind = tag.attr("type").unwrap_or("text").to_ascii_lowercase();
                let (Some(i), Some(name)) = (open, tag.attr("name")) else {
                    continue;
                };
                if !matches!(kind.as_str(), "submit" | "button" | "image" | "reset") {
                    let value = tag.attr("value").unwrap_or_default().to_owned();
                    forms[i].fields.push((name.to_owned(), value));
                }
            }
            ("button", false) => {
                let kind = tag.attr("type").unwrap_or("submit").to_ascii_lowercase();
                let Some(name) = tag.attr("name") else {
                    continue;
                };
                if kind != "submit" {
                    continue;
                }
                let owner = match (tag.attr("form"), open) {
                    (Some(id), _) => Ok(id.to_owned()),
                    (None, Some(i)) => Err(i),
                    (None, None) => continue,
                };
                let value = tag.attr("value").unwrap_or_default().to_owned();
                buttons.push((owner, name.to_owned(), value));
            }
            _ => {}
        }
    }
    for (owner, name, value) in buttons {
        let index = match owner {
            Err(i) => Some(i),
            Ok(id) => forms
                .iter()
                .position(|f| f.id.as_deref() == Some(id.as_str())),
        };
        if let Some(form) = index.and_then(|i| forms.get_mut(i)) {
            form.button.get_or_insert((name, value));
        }
    }
    forms
}

/// The visible text of a page, whitespace collapsed and cut at 2000 characters (for
/// failure messages).
fn page_text(html: &str) -> String {
    let mut text = String::new();
    let mut rest = html;
    // Drop style blocks, then all tags.
    while let Some(start) = rest.find("<style") {
        text.push_str(&rest[..start]);
        rest = rest[start..]
            .find("</style>")
            .map_or("", |end| &rest[start + end + 8..]);
    }
    text.push_str(rest);
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                plain.push(' ');
            }
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    let collapsed = decode_entities(&plain)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    collapsed.chars().take(2000).collect()
}

/// A PKCE pair (RFC 7636, method S256).
#[derive(Clone, Debug)]
pub struct Pkce {
    /// 43 characters of base64url: 256 bits.
    pub verifier: String,
    /// `BASE64URL(SHA256(verifier))`.
    pub challenge: String,
}

impl Pkce {
    /// A fresh random verifier and its challenge.
    pub fn new() -> Pkce {
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// 256 random bits as 43 characters of base64url, for `state`, `nonce` and PKCE
/// verifiers. Unpredictable enough for tests (std's randomly keyed SipHash), not a CSPRNG.
pub fn random_token() -> String {
    let mut bytes = Vec::with_capacity(32);
    for i in 0u64..4 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(i);
        bytes.extend_from_slice(&h.finish().to_le_bytes());
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The header of a compact JWS, decoded but NOT verified; panics if it is not one.
pub fn jwt_header(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 0)
}

/// The claims of a compact JWS, decoded but NOT verified; panics if it is not one.
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 1)
}

fn jwt_part(jwt: &str, index: usize) -> serde_json::Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {jwt:?}");
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[index])
        .unwrap_or_else(|e| panic!("JWS part {index} is not base64url ({e}): {jwt:?}"));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("JWS part {index} is not JSON ({e}): {jwt:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_forms_hidden_inputs_and_detached_buttons() {
        let html = r#"<!DOCTYPE html><html><head><style>li > pre { x: "<form>" }</style></head>
            <body><!-- <form action="/nope"> -->
            <form autocomplete="off" action="http://op/interaction/a&amp;b/login" method="post">
              <input type="hidden" name="prompt" value="login"/>
              <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
              <input required type="password" name="password">
              <button type="submit" class="login login-submit">Sign-in</button>
            </form>
            <form id="op.logoutForm" method="post" action="/session/end/confirm"><input type="hidden" name="xsrf" value="x&#39;y"/></form>
            <button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes</button>
            <button type="submit" form="op.logoutForm">No</button></body></html>"#;
        let found = forms(html);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].action, "http://op/interaction/a&b/login");
        assert_eq!(found[0].field("prompt"), Some("login"));
        assert_eq!(found[0].field("login"), Some(""));
        assert_eq!(found[0].button, None);
        assert_eq!(found[1].id.as_deref(), Some("op.logoutForm"));
        assert_eq!(
            found[1].submitted(),
            vec![
                ("xsrf".to_owned(), "x'y".to_owned()),
                ("logout".to_owned(), "yes".to_owned())
            ]
        );
    }

    #[test]
    fn cookie_paths_match_like_a_browser() {
        assert!(path_matches("/interaction/abc", "/interaction/abc"));
        assert!(path_matches("/interaction/abc/login", "/interaction/abc"));
        assert!(!path_matches("/interaction/abcd", "/interaction/abc"));
        assert!(path_matches("/anything", "/"));
        assert_eq!(default_path("/auth"), "/");
        assert_eq!(default_path("/a/b/c"), "/a/b");
    }

    #[test]
    fn set_cookie_replaces_and_deletes() {
        let mut ua = UserAgent::new();
        let url = parse_url("http://127.0.0.1:1/auth/x");
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::SET_COOKIE,
            http::HeaderValue::from_static("_session=s1; path=/; samesite=lax; httponly"),
        );
        headers.append(
            http::header::SET_COOKIE,
            http::HeaderValue::from_static("_interaction_resume=r; path=/auth/x; httponly"),
        );
        ua.store_cookies(&url, &headers);
        assert_eq!(
            ua.cookie_header(&url).as_deref(),
            Some("_interaction_resume=r; _session=s1")
        );
        assert_eq!(
            ua.cookie_header(&parse_url("http://127.0.0.1:1/me"))
                .as_deref(),
            Some("_session=s1")
        );
        let mut deletion = http::HeaderMap::new();
        deletion.append(
            http::header::SET_COOKIE,
            http::HeaderValue::from_static(
                "_interaction_resume=; path=/auth/x; expires=Thu, 01 Jan 1970 00:00:00 GMT",
            ),
        );
        ua.store_cookies(&url, &deletion);
        assert_eq!(ua.cookie_header(&url).as_deref(), Some("_session=s1"));
    }

    #[test]
    fn pkce_challenge_is_the_rfc_7636_transform() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let pkce = Pkce::new();
        assert_eq!(pkce.verifier.len(), 43);
        assert_ne!(pkce.verifier, Pkce::new().verifier);
    }
}
