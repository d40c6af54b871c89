//! Token revocation (RFC 7009). Refresh tokens revoke their whole family;
//! access tokens are revoked by `jti` (honoured by `/userinfo`; resource servers
//! that validate JWTs locally keep accepting them until they expire, which is
//! why access tokens are short-lived). Unknown tokens answer 200 like known ones.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

use crate::claims::{AccessClaims, TYP_ACCESS};
use crate::client_auth::authenticate;
use crate::params::{is_form, Params};
use crate::{AppError, AppState};

pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    if !is_form(&headers) {
        return Err(AppError::invalid_request(
            "the revocation request must be application/x-www-form-urlencoded",
        ));
    }
    let params = Params::parse(&body).map_err(AppError::invalid_request)?;
    let client = authenticate(&state, &headers, &params)?;
    let token = params
        .get("token")
        .ok_or_else(|| AppError::invalid_request("token is required"))?;

    let mut store = state.store();
    if let Some((family_id, family)) = store.refresh_token_family(token) {
        // A client may only revoke its own tokens (RFC 7009 §2.1); others are ignored.
        if family.client_id == client.client_id {
            store.revoke_family(&family_id);
            tracing::info!(client_id = %client.client_id, "refresh token family revoked");
        }
        return Ok(StatusCode::OK);
    }
    drop(store);
    if let Ok(claims) =
        state
            .keys
            .verify::<AccessClaims>(token, &state.settings.issuer, false, Some(TYP_ACCESS))
    {
        if claims.client_id == client.client_id {
            state.store().revoke_jti(&claims.jti, claims.exp);
            tracing::info!(client_id = %client.client_id, "access token revoked");
        }
    }
    Ok(StatusCode::OK)
}
