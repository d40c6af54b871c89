//! The JWTs this provider issues: access tokens (RFC 9068 shape), ID tokens
//! (OpenID Connect Core §2) and logout tokens (Back-Channel Logout 1.0 §2.4).

use serde::{Deserialize, Serialize};

use crate::config::User;

pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// `typ` header values (RFC 9068 §2.1, Back-Channel Logout §2.4).
pub const TYP_ACCESS: &str = "at+jwt";
pub const TYP_ID: &str = "JWT";
pub const TYP_LOGOUT: &str = "logout+jwt";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    /// Space-separated, as in RFC 6749 and RFC 9068.
    pub scope: String,
    pub roles: Vec<String>,
    pub sid: String,
    pub client_id: String,
    pub azp: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub auth_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    pub sid: String,
    pub azp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_hash: Option<String>,
    #[serde(flatten)]
    pub profile: ProfileClaims,
}

/// User claims, released according to the granted scopes (OIDC Core §5.4).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProfileClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

impl ProfileClaims {
    pub fn for_scopes(user: &User, scope: &[String]) -> Self {
        let has = |s: &str| scope.iter().any(|g| g == s);
        let mut claims = ProfileClaims::default();
        if has("profile") {
            claims.name = user.name.clone();
            claims.preferred_username = Some(user.username.clone());
        }
        if has("email") && user.email.is_some() {
            claims.email = user.email.clone();
            claims.email_verified = Some(user.email_verified);
        }
        claims
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogoutClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub events: serde_json::Value,
    pub sid: String,
}

/// `at_hash`: base64url of the left half of SHA-256 of the access token
/// (OIDC Core §3.1.3.6; SHA-256 for both RS256 and ES256).
pub fn at_hash(access_token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let digest = crate::store::sha256(access_token);
    URL_SAFE_NO_PAD.encode(&digest[..16])
}
