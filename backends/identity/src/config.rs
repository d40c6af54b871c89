//! The users and clients YAML files: their on-disk shape (spec structs) and the
//! validated runtime model the handlers use.
//!
//! Loading collects every problem with its YAML path (`clients[0].redirect_uris[1]: ...`)
//! before failing, so one run shows everything that is wrong with a file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::PasswordHash;
use serde::Deserialize;

/// Token signing algorithms this provider offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum SigningAlg {
    RS256,
    ES256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::ES256 => "ES256",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", problems.join("; "))]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(path: &Path, problem: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            problems: vec![problem.into()],
        }
    }
}

// ---------------------------------------------------------------- users

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<UserSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    username: String,
    /// Argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    password_hash: String,
    /// Stable subject identifier; defaults to the username.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default = "default_true")]
    email_verified: bool,
    #[serde(default)]
    roles: Vec<String>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone)]
pub struct User {
    pub sub: String,
    pub username: String,
    pub password_hash: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Users {
    by_username: HashMap<String, Arc<User>>,
    by_sub: HashMap<String, Arc<User>>,
    /// A real hash to verify against when the username is unknown, so that an
    /// unknown user costs the same time as a wrong password.
    decoy_hash: Option<String>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(path, format!("cannot read: {e}")))?;
        Self::from_yaml(&text).map_err(|problems| ConfigError {
            path: path.display().to_string(),
            problems,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, Vec<String>> {
        let file: UsersFile = serde_yaml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let mut users = Users::default();
        for (i, spec) in file.users.into_iter().enumerate() {
            let at = format!("users[{i}]");
            if spec.username.trim().is_empty() || spec.username.len() > 256 {
                problems.push(format!("{at}.username: must be 1 to 256 characters"));
            }
            match PasswordHash::new(&spec.password_hash) {
                Ok(hash) if hash.algorithm.as_str().starts_with("argon2") => {}
                Ok(_) => problems.push(format!("{at}.password_hash: not an argon2 hash")),
                Err(e) => problems.push(format!("{at}.password_hash: not a PHC string: {e}")),
            }
            let sub = spec.sub.unwrap_or_else(|| spec.username.clone());
            if sub.is_empty() {
                problems.push(format!("{at}.sub: must not be empty"));
            }
            let user = Arc::new(User {
                sub: sub.clone(),
                username: spec.username.clone(),
                password_hash: spec.password_hash,
                name: spec.name,
                email: spec.email,
                email_verified: spec.email_verified,
                roles: spec.roles,
            });
            if users
                .by_username
                .insert(spec.username.clone(), user.clone())
                .is_some()
            {
                problems.push(format!("{at}.username: duplicate '{}'", spec.username));
            }
            if users.by_sub.insert(sub.clone(), user.clone()).is_some() {
                problems.push(format!("{at}.sub: duplicate '{sub}'"));
            }
            if users.decoy_hash.is_none() {
                users.decoy_hash = Some(user.password_hash.clone());
            }
        }
        if problems.is_empty() {
            Ok(users)
        } else {
            Err(problems)
        }
    }

    pub fn by_username(&self, username: &str) -> Option<&Arc<User>> {
        self.by_username.get(username)
    }

    pub fn by_sub(&self, sub: &str) -> Option<&Arc<User>> {
        self.by_sub.get(sub)
    }

    pub fn decoy_hash(&self) -> Option<&str> {
        self.decoy_hash.as_deref()
    }
}

// ---------------------------------------------------------------- clients

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    clients: Vec<ClientSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSpec {
    client_id: String,
    /// Confidential clients only. `${NAME}` reads an environment variable,
    /// `${NAME:-fallback}` uses `fallback` when it is unset.
    #[serde(default)]
    client_secret: Option<String>,
    /// A public client (SPA, native app) has no secret and authenticates with
    /// PKCE alone.
    #[serde(default)]
    public: bool,
    redirect_uris: Vec<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    backchannel_logout_uri: Option<String>,
    /// `aud` of the access tokens issued to this client; defaults to the client id.
    #[serde(default)]
    audience: Option<String>,
    /// Scopes this client may be granted.
    scopes: Vec<String>,
    /// Algorithm for this client's ID, access and logout tokens.
    #[serde(default = "default_alg")]
    signing_alg: SigningAlg,
}

fn default_alg() -> SigningAlg {
    SigningAlg::RS256
}

#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    /// `None` for public clients.
    pub secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub audience: String,
    pub scopes: Vec<String>,
    pub signing_alg: SigningAlg,
}

#[derive(Debug, Clone, Default)]
pub struct Clients {
    by_id: HashMap<String, Arc<Client>>,
}

impl Clients {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one(path, format!("cannot read: {e}")))?;
        Self::from_yaml(&text, |name| std::env::var(name).ok()).map_err(|problems| ConfigError {
            path: path.display().to_string(),
            problems,
        })
    }

    /// `env` resolves `${NAME}` references; tests pass their own.
    pub fn from_yaml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        let file: ClientsFile = serde_yaml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let mut clients = Clients::default();
        for (i, spec) in file.clients.into_iter().enumerate() {
            let at = format!("clients[{i}]");
            if spec.client_id.is_empty() || spec.client_id.len() > 256 {
                problems.push(format!("{at}.client_id: must be 1 to 256 characters"));
            }
            let secret = match (&spec.client_secret, spec.public) {
                (Some(_), true) => {
                    problems.push(format!(
                        "{at}.client_secret: a public client must not have a secret"
                    ));
                    None
                }
                (None, false) => {
                    problems.push(format!(
                        "{at}.client_secret: required for a confidential client (or set public: true)"
                    ));
                    None
                }
                (None, true) => None,
                (Some(raw), false) => match expand_env(raw, &env) {
                    Ok(s) if s.is_empty() => {
                        problems.push(format!("{at}.client_secret: empty"));
                        None
                    }
                    Ok(s) => Some(s),
                    Err(e) => {
                        problems.push(format!("{at}.client_secret: {e}"));
                        None
                    }
                },
            };
            if spec.redirect_uris.is_empty() {
                problems.push(format!("{at}.redirect_uris: at least one is required"));
            }
            for (j, uri) in spec.redirect_uris.iter().enumerate() {
                if let Err(e) = check_uri(uri) {
                    problems.push(format!("{at}.redirect_uris[{j}]: {e}"));
                }
            }
            for (j, uri) in spec.post_logout_redirect_uris.iter().enumerate() {
                if let Err(e) = check_uri(uri) {
                    problems.push(format!("{at}.post_logout_redirect_uris[{j}]: {e}"));
                }
            }
            if let Some(uri) = &spec.backchannel_logout_uri {
                if let Err(e) = check_uri(uri) {
                    problems.push(format!("{at}.backchannel_logout_uri: {e}"));
                }
            }
            if !spec.scopes.iter().any(|s| s == "openid") {
                problems.push(format!("{at}.scopes: must include openid"));
            }
            if let Some(bad) = spec.scopes.iter().find(|s| !is_scope_token(s)) {
                problems.push(format!("{at}.scopes: '{bad}' is not a valid scope token"));
            }
            let client = Client {
                audience: spec.audience.unwrap_or_else(|| spec.client_id.clone()),
                client_id: spec.client_id.clone(),
                secret,
                redirect_uris: spec.redirect_uris,
                post_logout_redirect_uris: spec.post_logout_redirect_uris,
                backchannel_logout_uri: spec.backchannel_logout_uri,
                scopes: spec.scopes,
                signing_alg: spec.signing_alg,
            };
            if clients
                .by_id
                .insert(spec.client_id.clone(), Arc::new(client))
                .is_some()
            {
                problems.push(format!("{at}.client_id: duplicate '{}'", spec.client_id));
            }
        }
        if problems.is_empty() {
            Ok(clients)
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, client_id: &str) -> Option<&Arc<Client>> {
        self.by_id.get(client_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.by_id.values()
    }
}

/// RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// Registered URIs must be absolute and fragment-free (RFC 6749 §3.1.2).
fn check_uri(uri: &str) -> Result<(), String> {
    let parsed =
        url::Url::parse(uri).map_err(|e| format!("'{uri}' is not an absolute URL: {e}"))?;
    if parsed.fragment().is_some() {
        return Err(format!("'{uri}' must not have a fragment"));
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("'{uri}' must be http or https"));
    }
    Ok(())
}

/// Replaces every `${NAME}` / `${NAME:-fallback}` in `raw`.
fn expand_env(raw: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${...} reference".to_string())?;
        let inner = &after[..end];
        let (name, fallback) = match inner.split_once(":-") {
            Some((name, fallback)) => (name, Some(fallback)),
            None => (inner, None),
        };
        match (env(name), fallback) {
            (Some(value), _) if !value.is_empty() => out.push_str(&value),
            (_, Some(fallback)) => out.push_str(fallback),
            _ => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_expand_with_fallbacks() {
        let env = |name: &str| (name == "SET").then(|| "value".to_string());
        assert_eq!(expand_env("${SET}", &env).as_deref(), Ok("value"));
        assert_eq!(
            expand_env("a-${UNSET:-dev}-b", &env).as_deref(),
            Ok("a-dev-b")
        );
        assert!(expand_env("${UNSET}", &env).is_err());
        assert!(expand_env("${SET", &env).is_err());
    }

    #[test]
    fn client_problems_are_collected_with_paths() {
        let yaml = r#"
clients:
  - client_id: a
    redirect_uris: ["not a url", "http://x/cb#frag"]
    scopes: [profile]
"#;
        let problems = Clients::from_yaml(yaml, |_| None).expect_err("invalid file");
        let all = problems.join("\n");
        assert!(all.contains("clients[0].client_secret"), "{all}");
        assert!(all.contains("clients[0].redirect_uris[0]"), "{all}");
        assert!(all.contains("clients[0].redirect_uris[1]"), "{all}");
        assert!(all.contains("clients[0].scopes"), "{all}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let yaml = "users:\n  - username: a\n    password_hash: x\n    colour: red\n";
        assert!(Users::from_yaml(yaml).is_err());
    }

    #[test]
    fn demo_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
        let users = Users::load(&dir.join("users.yaml")).expect("demo users load");
        assert!(users.by_username("alice").is_some());
        assert_eq!(
            users.by_username("admin").map(|u| u.roles.clone()),
            Some(vec!["customer".to_string(), "admin".to_string()])
        );
        let text = std::fs::read_to_string(dir.join("clients.yaml")).expect("demo clients");
        let clients = Clients::from_yaml(&text, |_| None).expect("demo clients load");
        let web = clients.get("web").expect("client web");
        assert_eq!(web.audience, "shop-api");
        assert!(web.secret.is_some());
    }

    #[test]
    fn demo_passwords_match_their_hashes() {
        use argon2::password_hash::PasswordVerifier;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
        let users = Users::load(&dir.join("users.yaml")).expect("demo users load");
        for name in ["alice", "admin"] {
            let user = users.by_username(name).expect("demo user");
            let hash = PasswordHash::new(&user.password_hash).expect("phc");
            assert!(argon2::Argon2::default()
                .verify_password(name.as_bytes(), &hash)
                .is_ok());
        }
    }
}
