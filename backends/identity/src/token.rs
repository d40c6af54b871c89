//! The token endpoint: `authorization_code` (with PKCE) and `refresh_token`
//! (with rotation and reuse detection) grants.
//!
//! Store bookkeeping happens under one lock before any signing, so that a code
//! replay or refresh-token reuse racing with the first use still finds the
//! tokens it must revoke.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::claims::{at_hash, AccessClaims, IdClaims, ProfileClaims, TYP_ACCESS, TYP_ID};
use crate::client_auth::authenticate;
use crate::config::{Client, User};
use crate::params::{is_form, Params};
use crate::store::{now, random_token, CodeRedemption, RefreshUse};
use crate::{AppError, AppState};

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    id_token: String,
    scope: String,
}

pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    if !is_form(&headers) {
        return Err(AppError::invalid_request(
            "the token request must be application/x-www-form-urlencoded",
        ));
    }
    let params = Params::parse(&body).map_err(AppError::invalid_request)?;
    let client = authenticate(&state, &headers, &params)?;
    let issued = match params.get("grant_type") {
        Some("authorization_code") => authorization_code(&state, &client, &params)?,
        Some("refresh_token") => refresh_token(&state, &client, &params)?,
        Some(_) => {
            return Err(AppError::oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "supported grant types: authorization_code, refresh_token",
            ))
        }
        None => return Err(AppError::invalid_request("grant_type is required")),
    };
    let response = mint(&state, &client, issued)?;
    let mut response = Json(response).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Everything decided under the store lock; signing happens after.
struct Issue {
    user: std::sync::Arc<User>,
    sid: String,
    scope: Vec<String>,
    auth_time: u64,
    nonce: Option<String>,
    jti: String,
    iat: u64,
    refresh_token: Option<String>,
}

fn authorization_code(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<Issue, AppError> {
    let code = params
        .get("code")
        .ok_or_else(|| AppError::invalid_request("code is required"))?;
    let verifier = params
        .get("code_verifier")
        .ok_or_else(|| AppError::invalid_request("code_verifier is required (PKCE)"))?;
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| AppError::invalid_request("redirect_uri is required"))?;
    let iat = now();
    let access_exp = iat + state.settings.access_token_ttl.as_secs();
    let jti = random_token(16);

    let mut store = state.store();
    let grant = match store.redeem_code(code) {
        CodeRedemption::Fresh(grant) => grant,
        CodeRedemption::Unknown | CodeRedemption::Expired => {
            return Err(AppError::invalid_grant(
                "authorization code is invalid or expired",
            ))
        }
        CodeRedemption::Replayed => {
            tracing::warn!(client_id = %client.client_id, "authorization code replayed; revoking its tokens");
            return Err(AppError::invalid_grant(
                "authorization code was already used; tokens issued from it are revoked",
            ));
        }
    };
    if grant.client_id != client.client_id {
        return Err(AppError::invalid_grant(
            "authorization code was issued to another client",
        ));
    }
    if grant.redirect_uri != redirect_uri {
        return Err(AppError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    if !pkce_matches(verifier, &grant.code_challenge) {
        return Err(AppError::invalid_grant("PKCE verification failed"));
    }
    let user = state
        .users
        .by_sub(&grant.sub)
        .cloned()
        .ok_or_else(|| AppError::invalid_grant("user no longer exists"))?;
    if !store.session_is_active(&grant.sid) {
        return Err(AppError::invalid_grant("the session has ended"));
    }
    let family = store.create_family(&grant);
    let refresh = store.add_refresh_token(&family, state.settings.refresh_token_ttl.as_secs());
    store.record_access_token(&grant.sid, Some(&family), &jti, access_exp);
    store.bind_code_tokens(code, Some(&family), &jti, access_exp);
    drop(store);
    tracing::info!(client_id = %client.client_id, sub = %user.sub, "tokens issued (authorization_code)");
    Ok(Issue {
        user,
        sid: grant.sid,
        scope: grant.scope,
        auth_time: grant.auth_time,
        nonce: grant.nonce,
        jti,
        iat,
        refresh_token: Some(refresh),
    })
}

fn refresh_token(state: &AppState, client: &Client, params: &Params) -> Result<Issue, AppError> {
    let token = params
        .get("refresh_token")
        .ok_or_else(|| AppError::invalid_request("refresh_token is required"))?;
    let iat = now();
    let access_exp = iat + state.settings.access_token_ttl.as_secs();
    let jti = random_token(16);

    let mut store = state.store();
    // Checks that must not burn the token: another client, or a bad scope.
    let original_scope = match store.refresh_token_family(token) {
        Some((_, family)) if family.client_id != client.client_id => {
            return Err(AppError::invalid_grant("refresh token is invalid"))
        }
        Some((_, family)) => family.scope.clone(),
        None => return Err(AppError::invalid_grant("refresh token is invalid")),
    };
    let scope = match params.get("scope") {
        None => original_scope,
        Some(requested) => {
            let requested: Vec<String> = requested
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if requested.iter().any(|s| !original_scope.contains(s)) {
                return Err(AppError::oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "requested scope exceeds the original grant",
                ));
            }
            requested
        }
    };
    let (family_id, family) = match store.use_refresh_token(token) {
        RefreshUse::Valid { family_id, family } => (family_id, family),
        RefreshUse::Unknown => return Err(AppError::invalid_grant("refresh token is invalid")),
        RefreshUse::Revoked => {
            tracing::warn!(client_id = %client.client_id, "refresh token reused or revoked; family revoked");
            return Err(AppError::invalid_grant(
                "refresh token is no longer valid; its token family is revoked",
            ));
        }
    };
    let user = state
        .users
        .by_sub(&family.sub)
        .cloned()
        .ok_or_else(|| AppError::invalid_grant("user no longer exists"))?;
    let refresh = store.add_refresh_token(&family_id, state.settings.refresh_token_ttl.as_secs());
    store.record_access_token(&family.sid, Some(&family_id), &jti, access_exp);
    drop(store);
    tracing::info!(client_id = %client.client_id, sub = %user.sub, "tokens issued (refresh_token)");
    Ok(Issue {
        user,
        sid: family.sid,
        scope,
        auth_time: family.auth_time,
        // OIDC Core §12.2: a refreshed ID token should not carry the nonce.
        nonce: None,
        jti,
        iat,
        refresh_token: Some(refresh),
    })
}

fn mint(state: &AppState, client: &Client, issue: Issue) -> Result<TokenResponse, AppError> {
    let settings = &state.settings;
    let ttl = settings.access_token_ttl.as_secs();
    let scope = issue.scope.join(" ");
    let access = AccessClaims {
        iss: settings.issuer.clone(),
        sub: issue.user.sub.clone(),
        aud: client.audience.clone(),
        exp: issue.iat + ttl,
        iat: issue.iat,
        nbf: issue.iat,
        jti: issue.jti,
        scope: scope.clone(),
        roles: issue.user.roles.clone(),
        sid: issue.sid.clone(),
        client_id: client.client_id.clone(),
        azp: client.client_id.clone(),
    };
    let access_token = state
        .keys
        .sign(client.signing_alg, TYP_ACCESS, &access)
        .map_err(AppError::internal)?;
    let id = IdClaims {
        iss: settings.issuer.clone(),
        sub: issue.user.sub.clone(),
        aud: client.client_id.clone(),
        exp: issue.iat + ttl,
        iat: issue.iat,
        auth_time: issue.auth_time,
        nonce: issue.nonce,
        sid: issue.sid,
        azp: client.client_id.clone(),
        at_hash: Some(at_hash(&access_token)),
        profile: ProfileClaims::for_scopes(&issue.user, &issue.scope),
    };
    let id_token = state
        .keys
        .sign(client.signing_alg, TYP_ID, &id)
        .map_err(AppError::internal)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        refresh_token: issue.refresh_token,
        id_token,
        scope,
    })
}

/// RFC 7636 §4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx",
            challenge
        ));
        assert!(!pkce_matches("short", challenge));
    }
}
