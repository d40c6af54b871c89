//! Client authentication at the token and revocation endpoints (RFC 6749 §2.3):
//! `client_secret_basic`, `client_secret_post`, or `none` for public clients.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::config::Client;
use crate::params::Params;
use crate::store::sha256;
use crate::{AppError, AppState};

pub fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Arc<Client>, AppError> {
    let basic = basic_credentials(headers)?;
    let body_id = params.get("client_id");
    let body_secret = params.get("client_secret");
    let (client_id, secret) = match basic {
        Some((id, secret)) => {
            if body_secret.is_some() {
                return Err(AppError::invalid_request(
                    "use exactly one client authentication method",
                ));
            }
            if body_id.is_some_and(|b| b != id) {
                return Err(AppError::invalid_request(
                    "client_id does not match the authenticated client",
                ));
            }
            (id, Some(secret))
        }
        None => {
            let id = body_id
                .ok_or_else(|| AppError::invalid_client("client authentication required"))?;
            (id.to_string(), body_secret.map(str::to_string))
        }
    };
    let client = state
        .clients
        .get(&client_id)
        .ok_or_else(|| AppError::invalid_client("client authentication failed"))?;
    match (&client.secret, secret) {
        (Some(expected), Some(given)) if secrets_match(expected, &given) => Ok(client.clone()),
        (None, None) => Ok(client.clone()),
        _ => Err(AppError::invalid_client("client authentication failed")),
    }
}

/// Compares digests so neither content nor length leaks through timing.
fn secrets_match(expected: &str, given: &str) -> bool {
    bool::from(sha256(expected).ct_eq(&sha256(given)))
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || AppError::invalid_client("malformed Basic credentials");
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((form_decode(id), form_decode(secret))))
}

fn form_decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}
