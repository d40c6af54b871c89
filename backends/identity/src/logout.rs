//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) at the
//! `end_session_endpoint`.
//!
//! A valid `id_token_hint` names the session (`sid`) to end: its refresh tokens
//! and access tokens are revoked and every client that received tokens in it
//! gets a back-channel logout token before the browser is sent on. Without a
//! hint there is no session to end (this provider keeps no single-sign-on
//! cookie), so the user just sees the signed-out page or is redirected.
//! `post_logout_redirect_uri` must be registered for the client named by the
//! hint or `client_id`; otherwise an error page is shown, never a redirect.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::claims::TYP_ID;
use crate::params::{is_form, Params};
use crate::{backchannel, html, AppError, AppState};

#[derive(Deserialize)]
struct HintClaims {
    sub: String,
    aud: Audience,
    #[serde(default)]
    sid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn first(&self) -> Option<&str> {
        match self {
            Audience::One(a) => Some(a),
            Audience::Many(all) => all.first().map(String::as_str),
        }
    }
}

pub async fn logout_get(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let params = Params::parse(query.unwrap_or_default().as_bytes())
        .map_err(|e| AppError::page(StatusCode::BAD_REQUEST, "Invalid request", e))?;
    logout(&state, &params).await
}

pub async fn logout_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    if !is_form(&headers) {
        return Err(AppError::page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Invalid request",
            "The logout request must be a form.",
        ));
    }
    let params = Params::parse(&body)
        .map_err(|e| AppError::page(StatusCode::BAD_REQUEST, "Invalid request", e))?;
    logout(&state, &params).await
}

async fn logout(state: &AppState, params: &Params) -> Result<Response, AppError> {
    let bad = |message: &str| {
        AppError::page(
            StatusCode::BAD_REQUEST,
            "Logout failed",
            message.to_string(),
        )
    };
    // An expired ID token is still a fine hint (RP-Initiated Logout §2).
    let hint: Option<HintClaims> = match params.get("id_token_hint") {
        Some(token) => Some(
            state
                .keys
                .verify(token, &state.settings.issuer, false, Some(TYP_ID))
                .map_err(|_| {
                    bad("The id_token_hint is not a valid ID token from this provider.")
                })?,
        ),
        None => None,
    };
    let hinted_client = hint.as_ref().and_then(|h| h.aud.first());
    let client_id = match (params.get("client_id"), hinted_client) {
        (Some(given), Some(hinted)) if given != hinted => {
            return Err(bad("client_id does not match the id_token_hint."))
        }
        (Some(given), _) => Some(given),
        (None, hinted) => hinted,
    };
    let client = match client_id {
        Some(id) => Some(
            state
                .clients
                .get(id)
                .ok_or_else(|| bad("The application is not registered with this provider."))?
                .clone(),
        ),
        None => None,
    };
    let redirect = match params.get("post_logout_redirect_uri") {
        Some(uri) => {
            let client = client.as_ref().ok_or_else(|| {
                bad("post_logout_redirect_uri needs an id_token_hint or client_id.")
            })?;
            if !client.post_logout_redirect_uris.iter().any(|r| r == uri) {
                return Err(bad(
                    "The application asked to return to an address it has not registered.",
                ));
            }
            Some(uri.to_string())
        }
        None => None,
    };

    if let Some(HintClaims {
        sub,
        sid: Some(sid),
        ..
    }) = &hint
    {
        let ended = {
            let mut store = state.store();
            match store.session(sid) {
                Some(session) if &session.sub == sub => store.end_session(sid),
                _ => None,
            }
        };
        if let Some(session) = ended {
            tracing::info!(sub = %session.sub, "session ended by RP-initiated logout");
            backchannel::notify(state, &session).await;
        }
    }

    match redirect {
        Some(uri) => {
            let mut target = url::Url::parse(&uri).map_err(|e| {
                AppError::internal(format!("registered logout uri unparsable: {e}"))
            })?;
            if let Some(s) = params.get("state") {
                target.query_pairs_mut().append_pair("state", s);
            }
            Ok((
                StatusCode::FOUND,
                [(header::LOCATION, target.as_str().to_string())],
            )
                .into_response())
        }
        None => Ok(html::signed_out_page()),
    }
}
