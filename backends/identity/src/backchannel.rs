//! Back-channel logout notifications (OpenID Connect Back-Channel Logout 1.0):
//! when a session ends, each client that received tokens in it and registered a
//! `backchannel_logout_uri` is sent a signed logout token.
//!
//! Notifications run concurrently and are awaited (each bounded by the client
//! timeout) before the browser is redirected, so a BFF has dropped its session
//! by the time the user lands back on it. Failures are logged, not retried.

use serde_json::json;
use tokio::task::JoinSet;

use crate::claims::{LogoutClaims, BACKCHANNEL_LOGOUT_EVENT, TYP_LOGOUT};
use crate::store::{now, random_token, Session};
use crate::AppState;

/// How long a logout token is acceptable: long enough for the POST to arrive.
const LOGOUT_TOKEN_TTL: u64 = 120;

pub async fn notify(state: &AppState, session: &Session) {
    let mut tasks = JoinSet::new();
    for client_id in &session.clients {
        let Some(client) = state.clients.get(client_id) else {
            continue;
        };
        let Some(uri) = client.backchannel_logout_uri.clone() else {
            continue;
        };
        let iat = now();
        let claims = LogoutClaims {
            iss: state.settings.issuer.clone(),
            sub: session.sub.clone(),
            aud: client.client_id.clone(),
            iat,
            exp: iat + LOGOUT_TOKEN_TTL,
            jti: random_token(16),
            events: json!({ BACKCHANNEL_LOGOUT_EVENT: {} }),
            sid: session.sid.clone(),
        };
        let token = match state.keys.sign(client.signing_alg, TYP_LOGOUT, &claims) {
            Ok(token) => token,
            Err(e) => {
                tracing::error!(client_id = %client.client_id, error = %e, "cannot sign logout token");
                continue;
            }
        };
        let http = state.http.clone();
        let client_id = client.client_id.clone();
        tasks.spawn(async move {
            let result = http
                .post(&uri)
                .form(&[("logout_token", token.as_str())])
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(%client_id, "back-channel logout delivered");
                }
                Ok(response) => {
                    tracing::warn!(%client_id, status = %response.status(), "back-channel logout refused");
                }
                Err(e) => {
                    let error = error_chain(&e.without_url());
                    tracing::warn!(%client_id, %error, "back-channel logout failed");
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// "error sending request: ... : Connection refused" rather than just the outer message.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
