//! OpenID Provider metadata (OpenID Connect Discovery 1.0 §3) and the JWKS.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::AppState;

pub const SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

pub async fn openid_configuration(State(state): State<AppState>) -> Response {
    let mut scopes: Vec<String> = SCOPES.iter().map(|s| s.to_string()).collect();
    let extra: std::collections::BTreeSet<&String> = state
        .clients
        .all()
        .flat_map(|c| c.scopes.iter())
        .filter(|s| !SCOPES.contains(&s.as_str()))
        .collect();
    scopes.extend(extra.into_iter().cloned());
    let metadata = json!({
        "issuer": state.settings.issuer,
        "authorization_endpoint": state.endpoint("/authorize"),
        "token_endpoint": state.endpoint("/token"),
        "userinfo_endpoint": state.endpoint("/userinfo"),
        "jwks_uri": state.endpoint("/jwks"),
        "revocation_endpoint": state.endpoint("/revoke"),
        "end_session_endpoint": state.endpoint("/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": scopes,
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid", "azp", "at_hash",
            "name", "preferred_username", "email", "email_verified", "roles"
        ],
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "frontchannel_logout_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
        "prompt_values_supported": ["none", "login"],
    });
    cacheable(Json(metadata).into_response())
}

pub async fn jwks(State(state): State<AppState>) -> Response {
    cacheable(Json(state.keys.jwks()).into_response())
}

/// Public metadata may be cached briefly; keys change only at a restart.
fn cacheable(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}
