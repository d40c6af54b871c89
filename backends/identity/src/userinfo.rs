//! The UserInfo endpoint (OIDC Core §5.3): claims about the user an access
//! token was issued for, released by scope, plus `roles`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use crate::claims::{AccessClaims, ProfileClaims, TYP_ACCESS};
use crate::{AppError, AppState};

pub async fn userinfo(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let invalid = |description| AppError::Bearer {
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_token",
        description,
    };
    let token =
        bearer_token(&headers).ok_or_else(|| invalid("a bearer access token is required"))?;
    let claims: AccessClaims = state
        .keys
        .verify(token, &state.settings.issuer, true, Some(TYP_ACCESS))
        .map_err(|_| invalid("the access token is invalid or expired"))?;
    if state.store().is_jti_revoked(&claims.jti) {
        return Err(invalid("the access token has been revoked"));
    }
    let scope: Vec<String> = claims.scope.split(' ').map(str::to_string).collect();
    if !scope.iter().any(|s| s == "openid") {
        return Err(AppError::Bearer {
            status: StatusCode::FORBIDDEN,
            code: "insufficient_scope",
            description: "the openid scope is required",
        });
    }
    let user = state
        .users
        .by_sub(&claims.sub)
        .ok_or_else(|| invalid("the user no longer exists"))?;
    let mut body = serde_json::to_value(ProfileClaims::for_scopes(user, &scope))
        .map_err(AppError::internal)?;
    if let Value::Object(map) = &mut body {
        map.insert("sub".into(), json!(user.sub));
        map.insert("roles".into(), json!(user.roles));
    }
    Ok(Json(body))
}

/// `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
