//! The authorization endpoint and the login form behind it.
//!
//! `GET|POST /authorize` validates the request and shows the login form; the form
//! posts to `/login`, which checks the password and redirects back to the client
//! with a one-time code. Until `client_id` and `redirect_uri` are known to match a
//! registration, errors are shown as a page: redirecting to an unverified URI
//! would make this an open redirector (RFC 6749 §4.1.2.1).
//!
//! The request itself stays server-side, bound to an unguessable id that is the
//! form's only hidden field, so a forged POST cannot change what is authorized.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::config::{is_scope_token, Client};
use crate::params::{is_form, Params};
use crate::store::{now, CodeGrant, PendingAuth, PENDING_TTL};
use crate::{html, AppError, AppState};

const MAX_STATE: usize = 1024;
const MAX_NONCE: usize = 512;
const MAX_HINT: usize = 256;
const MAX_USERNAME: usize = 256;
const MAX_PASSWORD: usize = 1024;
/// Same text for an unknown user and a wrong password: no user enumeration.
pub const LOGIN_FAILED: &str = "Invalid username or password.";

pub async fn authorize_get(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = Params::parse(query.unwrap_or_default().as_bytes())
        .map_err(|e| AppError::page(StatusCode::BAD_REQUEST, "Invalid request", e))?;
    authorize(&state, &params)
}

/// OIDC Core §3.1.2.1: the authorization endpoint must also accept a form POST.
pub async fn authorize_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    if !is_form(&headers) {
        return Err(AppError::page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Invalid request",
            "The authorization request must be a form.",
        ));
    }
    let params = Params::parse(&body)
        .map_err(|e| AppError::page(StatusCode::BAD_REQUEST, "Invalid request", e))?;
    authorize(&state, &params)
}

fn authorize(state: &AppState, params: &Params) -> Result<Response, AppError> {
    let client = params
        .get("client_id")
        .and_then(|id| state.clients.get(id))
        .ok_or_else(|| {
            AppError::page(
                StatusCode::BAD_REQUEST,
                "Unknown application",
                "The application that sent you here is not registered with this provider.",
            )
        })?
        .clone();
    let redirect_uri = params
        .get("redirect_uri")
        .filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
        .ok_or_else(|| {
            AppError::page(
                StatusCode::BAD_REQUEST,
                "Invalid redirect",
                "The application asked to return to an address it has not registered.",
            )
        })?
        .to_string();

    // From here on the client is trusted to receive errors at its redirect URI.
    let client_state = params.get("state").filter(|s| s.len() <= MAX_STATE);
    let fail = |code: &str, description: &str| {
        Ok(error_redirect(
            state,
            &redirect_uri,
            client_state,
            code,
            description,
        ))
    };
    if params.get("state").is_some_and(|s| s.len() > MAX_STATE) {
        return fail("invalid_request", "state is too long");
    }
    if params.get("request").is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    if params.get("request_uri").is_some() {
        return fail("request_uri_not_supported", "request_uri is not supported");
    }
    match params.get("response_type") {
        Some("code") => {}
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
        None => return fail("invalid_request", "response_type is required"),
    }
    if params.get("response_mode").is_some_and(|m| m != "query") {
        return fail("invalid_request", "only response_mode=query is supported");
    }
    let Some(scope) = params.get("scope") else {
        return fail("invalid_scope", "scope is required and must include openid");
    };
    let requested: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    if requested.iter().any(|s| !is_scope_token(s)) {
        return fail("invalid_scope", "scope contains an invalid token");
    }
    if !requested.contains(&"openid") {
        return fail("invalid_scope", "scope must include openid");
    }
    let Some(code_challenge) = params.get("code_challenge") else {
        return fail(
            "invalid_request",
            "code_challenge is required (PKCE with S256)",
        );
    };
    if params.get("code_challenge_method") != Some("S256") {
        // Absent means `plain` (RFC 7636 §4.3), which is refused like an explicit `plain`.
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    if !is_s256_challenge(code_challenge) {
        return fail("invalid_request", "code_challenge is not a S256 challenge");
    }
    let nonce = params.get("nonce");
    if nonce.is_some_and(|n| n.len() > MAX_NONCE) {
        return fail("invalid_request", "nonce is too long");
    }
    if params
        .get("prompt")
        .is_some_and(|p| p.split(' ').any(|v| v == "none"))
    {
        // There is no single sign-on session to reuse: every authorization needs a login.
        return fail("login_required", "the user must log in");
    }

    let scope = grantable_scopes(&client, &requested);
    let pending = PendingAuth {
        client_id: client.client_id.clone(),
        redirect_uri,
        scope,
        state: client_state.map(str::to_string),
        nonce: nonce.map(str::to_string),
        code_challenge: code_challenge.to_string(),
        login_hint: params
            .get("login_hint")
            .filter(|h| h.len() <= MAX_HINT)
            .map(str::to_string),
        expires_at: now() + PENDING_TTL,
        attempts: 0,
    };
    let login_hint = pending.login_hint.clone();
    let Some(id) = state.store().add_pending(pending) else {
        return Err(AppError::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many logins are in progress. Try again in a minute.",
        ));
    };
    Ok(html::login_page(
        &login_action(state),
        &id,
        &client.client_id,
        login_hint.as_deref(),
        None,
    ))
}

#[derive(Deserialize)]
pub struct LoginForm {
    auth_request: String,
    username: String,
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, AppError> {
    let Form(form) = form.map_err(|_| {
        AppError::page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "The login form was incomplete.",
        )
    })?;
    let expired = || {
        AppError::page(
            StatusCode::BAD_REQUEST,
            "Login expired",
            "This login attempt has expired or was used too many times. Go back to the application and start again.",
        )
    };
    let Some(pending) = state.store().attempt_pending(&form.auth_request) else {
        return Err(expired());
    };
    let user = (form.username.len() <= MAX_USERNAME)
        .then(|| state.users.by_username(&form.username).cloned())
        .flatten();
    let password_ok = check_password(&state, user.as_ref().map(Arc::as_ref), form.password).await;
    let Some(user) = user.filter(|_| password_ok) else {
        tracing::info!(client_id = %pending.client_id, "login failed");
        return Ok(html::login_page(
            &login_action(&state),
            &form.auth_request,
            &pending.client_id,
            pending.login_hint.as_deref(),
            Some(LOGIN_FAILED),
        ));
    };

    let auth_time = now();
    let code_ttl = state.settings.code_ttl.as_secs();
    let (pending, code) = {
        let mut store = state.store();
        // Taken, not read: two concurrent correct submissions yield one code.
        let Some(pending) = store.take_pending(&form.auth_request) else {
            return Err(expired());
        };
        let sid = store.create_session(&user.sub, auth_time);
        let code = store.add_code(
            CodeGrant {
                client_id: pending.client_id.clone(),
                redirect_uri: pending.redirect_uri.clone(),
                code_challenge: pending.code_challenge.clone(),
                nonce: pending.nonce.clone(),
                scope: pending.scope.clone(),
                sub: user.sub.clone(),
                sid,
                auth_time,
            },
            code_ttl,
        );
        (pending, code)
    };
    tracing::info!(client_id = %pending.client_id, sub = %user.sub, "login succeeded");
    let mut target = url::Url::parse(&pending.redirect_uri)
        .map_err(|e| AppError::internal(format!("registered redirect_uri unparsable: {e}")))?;
    {
        let mut query = target.query_pairs_mut();
        query.append_pair("code", &code);
        if let Some(s) = &pending.state {
            query.append_pair("state", s);
        }
        query.append_pair("iss", &state.settings.issuer);
    }
    // 303, not 302: the browser must not re-POST the credentials to the client
    // (OAuth 2.0 Security BCP, RFC 9700 §4.12).
    Ok(Redirect::to(target.as_str()).into_response())
}

/// Verifies on the blocking pool (argon2 is deliberately slow). An unknown user
/// is checked against a decoy hash so both failures take the same time.
async fn check_password(
    state: &AppState,
    user: Option<&crate::config::User>,
    password: String,
) -> bool {
    if password.len() > MAX_PASSWORD {
        return false;
    }
    let hash = match user {
        Some(user) => user.password_hash.clone(),
        None => match state.users.decoy_hash() {
            Some(h) => h.to_string(),
            None => return false,
        },
    };
    let known = user.is_some();
    let verified = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    known && verified
}

fn login_action(state: &AppState) -> String {
    format!("{}/login", state.base_path)
}

/// The requested scopes this client may receive, in request order, without duplicates.
/// Unknown scopes are dropped rather than refused (RFC 6749 §3.3 lets the server
/// narrow the request); the token response says what was granted.
fn grantable_scopes(client: &Client, requested: &[&str]) -> Vec<String> {
    let mut granted: Vec<String> = Vec::new();
    for scope in requested {
        if client.scopes.iter().any(|s| s == scope) && !granted.iter().any(|g| g == scope) {
            granted.push(scope.to_string());
        }
    }
    granted
}

/// RFC 7636 §4.2: S256 challenges are base64url(SHA-256), i.e. 43 characters.
fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn error_redirect(
    state: &AppState,
    redirect_uri: &str,
    client_state: Option<&str>,
    code: &str,
    description: &str,
) -> Response {
    let Ok(mut target) = url::Url::parse(redirect_uri) else {
        return AppError::internal("registered redirect_uri unparsable").into_response();
    };
    {
        let mut query = target.query_pairs_mut();
        query.append_pair("error", code);
        query.append_pair("error_description", description);
        if let Some(s) = client_state {
            query.append_pair("state", s);
        }
        query.append_pair("iss", &state.settings.issuer);
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, target.as_str().to_string())],
    )
        .into_response()
}
