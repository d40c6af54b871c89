//! The `api_key` route filter: admit requests that carry a known API key, name the client for
//! rate limits and metrics, and keep the key away from the upstream.
//!
//! The keys file holds only SHA-256 hashes, so reading it (or `/config`, or a backup) reveals
//! no usable key; a key is high-entropy, so a fast unsalted hash is enough — there is no
//! dictionary to attack. The presented key is hashed once and compared with every stored
//! hash in constant time, without an early exit, so response timing says neither which
//! entry matched nor how close a guess came.
//!
//! Keys file (YAML), path relative to the config file's directory:
//!
//! ```yaml
//! - { name: client-a, sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae }
//! - { name: client-b, sha256: … }   # printf %s "$KEY" | sha256sum, or hash_api_key()
//! ```

use std::path::Path;
use std::sync::Arc;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{Action, ErrorKind, Filter, LocalResponse, RequestCtx, RequestView, SpecError, Step};

/// YAML: `api_key: { header: x-api-key, keys_file: config/api-keys.yaml }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// Request header carrying the key. Defaults to `x-api-key`.
    #[serde(default = "default_header")]
    pub header: String,
    /// YAML list of `{ name, sha256 }`, relative to the config file's directory.
    pub keys_file: String,
}

fn default_header() -> String {
    "x-api-key".to_string()
}

/// The lowercase hex SHA-256 of `key`, as stored in a keys file.
pub fn hash_api_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let [hi, lo] = *pair else {
            return None;
        };
        *o = (nibble(hi)? << 4) | nibble(lo)?;
    }
    Some(out)
}

#[derive(Debug)]
struct Client {
    name: Arc<str>,
    sha256: [u8; 32],
}

/// Compiled `api_key` filter: the header to read and the known clients.
#[derive(Debug)]
pub struct ApiKeyFilter {
    header: HeaderName,
    clients: Vec<Client>,
    challenge: HeaderValue,
}

impl ApiKeyFilter {
    /// Reads and checks the keys file (relative paths resolve against `base_dir`, the config
    /// file's directory). Reports every problem — unreadable file, malformed entry, bad or
    /// duplicate hash, duplicate name — with its path below the filter key; never echoes a
    /// hash. Each reload rereads the file, which is how keys are rotated.
    pub fn new(spec: &ApiKeySpec, base_dir: &Path) -> Result<Self, Vec<SpecError>> {
        let mut errors = Vec::new();
        let header = match HeaderName::from_bytes(spec.header.trim().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errors.push(SpecError::new(
                    "header",
                    format!("invalid header name {:?}", spec.header),
                ));
                None
            }
        };
        let path = base_dir.join(&spec.keys_file);
        let clients = match std::fs::read_to_string(&path) {
            Ok(text) => parse_keys(&text, &mut errors),
            Err(e) => {
                errors.push(SpecError::new(
                    "keys_file",
                    format!("cannot read {}: {e}", path.display()),
                ));
                Vec::new()
            }
        };
        let Some(header) = header else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        // RFC 9110 §11.6.1 lets a scheme carry parameters; naming the header tells a client
        // (and a human with curl) where the key goes. Header names are valid in a quoted
        // string, so this cannot fail.
        let challenge = HeaderValue::from_str(&format!("ApiKey header=\"{}\"", header.as_str()))
            .unwrap_or_else(|_| HeaderValue::from_static("ApiKey"));
        Ok(Self {
            header,
            clients,
            challenge,
        })
    }

    /// Number of keys loaded.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when the keys file lists no key (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client whose key hashes to `digest`, scanning all entries in constant time.
    fn lookup(&self, digest: &[u8; 32]) -> Option<&Arc<str>> {
        let mut found: Option<&Arc<str>> = None;
        for client in &self.clients {
            // `ct_eq` takes the same time whether 0 or 31 bytes match; the scan never stops
            // early. Names are unique and hashes distinct, so at most one entry matches.
            if bool::from(client.sha256.ct_eq(digest)) {
                found = Some(&client.name);
            }
        }
        found
    }

    fn unauthorized(&self) -> Action {
        Action::Respond(
            LocalResponse::error(ErrorKind::Unauthorized)
                .with_header(WWW_AUTHENTICATE, self.challenge.clone()),
        )
    }
}

fn parse_keys(text: &str, errors: &mut Vec<SpecError>) -> Vec<Client> {
    let docs = match YamlLoader::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => {
            // The scanner's message has the position but never the scalar's text.
            errors.push(SpecError::new("keys_file", format!("invalid YAML: {e}")));
            return Vec::new();
        }
    };
    let entries = match docs.first() {
        None | Some(Yaml::Null) => return Vec::new(),
        Some(Yaml::Array(entries)) => entries,
        Some(_) => {
            errors.push(SpecError::new(
                "keys_file",
                "must be a YAML list of { name, sha256 } entries",
            ));
            return Vec::new();
        }
    };
    let mut clients: Vec<Client> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = |msg: &str| SpecError::new("keys_file", format!("entry {i}: {msg}"));
        let Yaml::Hash(map) = entry else {
            errors.push(at("must be a map { name, sha256 }"));
            continue;
        };
        let mut name = None;
        let mut hash = None;
        let mut ok = true;
        for (k, v) in map {
            match (k.as_str(), v.as_str()) {
                (Some("name"), Some(n)) if !n.trim().is_empty() => name = Some(n.trim()),
                (Some("sha256"), Some(h)) => match parse_hex32(h.trim()) {
                    Some(bytes) => hash = Some(bytes),
                    None => {
                        errors.push(at("sha256 must be 64 hex digits (the hash, never the key)"));
                        ok = false;
                    }
                },
                (Some("name"), _) => {
                    errors.push(at("name must be a non-empty string"));
                    ok = false;
                }
                (Some("sha256"), _) => {
                    errors.push(at("sha256 must be a string of 64 hex digits"));
                    ok = false;
                }
                (Some(other), _) => {
                    errors.push(at(&format!("unknown field {other:?}")));
                    ok = false;
                }
                (None, _) => {
                    errors.push(at("field names must be strings"));
                    ok = false;
                }
            }
        }
        match (name, hash) {
            (Some(name), Some(sha256)) if ok => {
                if clients.iter().any(|c| &*c.name == name) {
                    errors.push(at(&format!("duplicate name {name:?}")));
                } else if clients.iter().any(|c| c.sha256 == sha256) {
                    errors.push(at("the same key hash is listed twice"));
                } else {
                    clients.push(Client {
                        name: Arc::from(name),
                        sha256,
                    });
                }
            }
            _ if ok => errors.push(at("needs both name and sha256")),
            _ => {}
        }
    }
    clients
}

impl Filter for ApiKeyFilter {
    fn name(&self) -> &'static str {
        "api_key"
    }

    fn request_filter<'a>(&'a self, req: RequestView<'a>, ctx: &'a mut RequestCtx) -> Step<'a> {
        let mut values = req.header.headers.get_all(&self.header).iter();
        // Exactly one non-empty value: with two, which one an upstream or a log would
        // believe is ambiguous.
        let (Some(value), None) = (values.next(), values.next()) else {
            return Step::Done(self.unauthorized());
        };
        let key = value.as_bytes();
        if key.is_empty() {
            return Step::Done(self.unauthorized());
        }
        let digest: [u8; 32] = Sha256::digest(key).into();
        match self.lookup(&digest) {
            Some(name) => {
                ctx.api_client = Some(name.clone());
                Step::Done(Action::Continue)
            }
            None => Step::Done(self.unauthorized()),
        }
    }

    fn upstream_request_filter(&self, upstream: &mut RequestHeader, _ctx: &mut RequestCtx) {
        // The key authenticates the client to the gateway only; the service behind it sees
        // the client's name (via later filters) but never the secret.
        upstream.remove_header(&self.header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "meshgate-apikey-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn filter_with(tag: &str, file: &str) -> Result<ApiKeyFilter, Vec<SpecError>> {
        let dir = TempDir::new(tag);
        std::fs::write(dir.0.join("keys.yaml"), file).expect("write");
        ApiKeyFilter::new(
            &ApiKeySpec {
                header: "x-api-key".into(),
                keys_file: "keys.yaml".into(),
            },
            &dir.0,
        )
    }

    fn keys_file() -> String {
        format!(
            "# only hashes on disk\n- {{ name: client-a, sha256: {} }}\n- name: client-b\n  sha256: {}\n",
            hash_api_key("key-a-0123456789"),
            hash_api_key("key-b-0123456789").to_uppercase()
        )
    }

    fn check(f: &ApiKeyFilter, key: Option<&str>) -> (Action, RequestCtx) {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        if let Some(k) = key {
            req.insert_header("x-api-key", k).expect("h");
        }
        let mut ctx = RequestCtx::default();
        let view = RequestView {
            header: &req,
            path: "/",
            host: "",
            peer: None,
        };
        let Step::Done(action) = f.request_filter(view, &mut ctx) else {
            panic!("api_key decides without waiting");
        };
        (action, ctx)
    }

    #[test]
    fn hash_matches_a_known_vector() {
        assert_eq!(
            hash_api_key("foo"),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }

    #[test]
    fn right_key_names_the_client() {
        let f = filter_with("right", &keys_file()).expect("valid");
        assert_eq!(f.len(), 2);
        let (action, ctx) = check(&f, Some("key-a-0123456789"));
        assert!(matches!(action, Action::Continue));
        assert_eq!(ctx.api_client.as_deref(), Some("client-a"));
        let (action, ctx) = check(&f, Some("key-b-0123456789"));
        assert!(
            matches!(action, Action::Continue),
            "uppercase hex is accepted"
        );
        assert_eq!(ctx.api_client.as_deref(), Some("client-b"));
    }

    #[test]
    fn wrong_or_missing_key_is_401_with_a_challenge() {
        let f = filter_with("wrong", &keys_file()).expect("valid");
        for key in [
            None,
            Some(""),
            Some("key-a-012345678"),
            Some(hash_api_key("key-a-0123456789").as_str()),
        ] {
            let (action, ctx) = check(&f, key);
            let Action::Respond(answer) = action else {
                panic!("{key:?} must be refused");
            };
            assert_eq!(answer.status.as_u16(), 401);
            assert_eq!(answer.error, Some(ErrorKind::Unauthorized));
            let challenge = answer
                .headers
                .iter()
                .find(|(n, _)| n == WWW_AUTHENTICATE)
                .map(|(_, v)| v.to_str().unwrap_or_default().to_string());
            assert_eq!(challenge.as_deref(), Some("ApiKey header=\"x-api-key\""));
            assert!(ctx.api_client.is_none());
        }
    }

    #[test]
    fn two_key_headers_are_refused() {
        let f = filter_with("two", &keys_file()).expect("valid");
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.append_header("x-api-key", "nope").expect("h");
        req.append_header("x-api-key", "key-a-0123456789")
            .expect("h");
        let view = RequestView {
            header: &req,
            path: "/",
            host: "",
            peer: None,
        };
        assert!(matches!(
            f.request_filter(view, &mut RequestCtx::default()),
            Step::Done(Action::Respond(_))
        ));
    }

    #[test]
    fn the_key_never_reaches_the_upstream() {
        let f = filter_with("strip", &keys_file()).expect("valid");
        let mut up = RequestHeader::build("GET", b"/", None).expect("req");
        up.insert_header("x-api-key", "key-a-0123456789")
            .expect("h");
        f.upstream_request_filter(&mut up, &mut RequestCtx::default());
        assert!(up.headers.get("x-api-key").is_none());
    }

    #[test]
    fn bad_files_report_every_entry_without_secrets() {
        let secretish = "a".repeat(63);
        let text = format!(
            "- {{ name: a, sha256: {secretish} }}\n- {{ name: b }}\n- {{ name: c, sha256: {h}, extra: 1 }}\n- {{ name: d, sha256: {h} }}\n- {{ name: d, sha256: {h2} }}\n- just-a-string\n",
            h = hash_api_key("k1"),
            h2 = hash_api_key("k2"),
        );
        let errors = filter_with("bad", &text).expect_err("invalid");
        let messages: Vec<_> = errors.iter().map(|e| e.message.as_str()).collect();
        assert!(
            messages.iter().all(|m| !m.contains(&secretish)),
            "{messages:?}"
        );
        for expected in [
            "entry 0: sha256",
            "entry 1: needs both",
            "entry 2: unknown field",
            "entry 4: duplicate name",
            "entry 5: must be a map",
        ] {
            assert!(
                messages.iter().any(|m| m.starts_with(expected)),
                "{expected}: {messages:?}"
            );
        }
        assert!(errors.iter().all(|e| e.path == "keys_file"));
        let missing = ApiKeyFilter::new(
            &ApiKeySpec {
                header: "bad header".into(),
                keys_file: "does-not-exist.yaml".into(),
            },
            Path::new("/nonexistent"),
        )
        .expect_err("invalid");
        let paths: Vec<_> = missing.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["header", "keys_file"]);
    }

    #[test]
    fn spec_rejects_unknown_fields_and_defaults_the_header() {
        let spec: ApiKeySpec =
            serde_json::from_value(serde_json::json!({ "keys_file": "k.yaml" })).expect("shape");
        assert_eq!(spec.header, "x-api-key");
        assert!(serde_json::from_value::<ApiKeySpec>(
            serde_json::json!({ "keys_file": "k.yaml", "keys": [] })
        )
        .is_err());
    }
}
