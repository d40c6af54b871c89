//! Unit tests of the BFF pieces that need no provider: endpoint paths and cookies.

use std::sync::Arc;

use super::*;

fn bff() -> Arc<Bff> {
    let spec: BffSpec = serde_json::from_value(serde_json::json!({
        "provider": "main",
        "session_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    }))
    .expect("spec");
    let provider_spec: ProviderSpec = serde_json::from_value(serde_json::json!({
        "issuer": "http://127.0.0.1:9",
        "client_id": "web",
        "audience": "api",
    }))
    .expect("provider spec");
    let provider = Provider::new(&provider_spec).expect("provider");
    Bff::new(
        &spec,
        &provider_spec,
        provider,
        Arc::new(MemoryStore::new(10)),
        Arc::default(),
    )
    .expect("bff")
}

#[test]
fn endpoints_are_exact_paths_below_the_base_path() {
    let b = bff();
    assert_eq!(b.endpoint("/auth/login"), Some(Endpoint::Login));
    assert_eq!(
        b.endpoint("/auth/backchannel-logout"),
        Some(Endpoint::BackchannelLogout)
    );
    for other in [
        "/auth",
        "/auth/",
        "/auth/login/x",
        "/authx/login",
        "/api/auth/user",
    ] {
        assert_eq!(b.endpoint(other), None, "{other}");
    }
}

#[test]
fn the_bff_needs_a_client_id() {
    let spec: BffSpec = serde_json::from_value(serde_json::json!({
        "provider": "main",
        "session_key": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    }))
    .expect("spec");
    let provider_spec: ProviderSpec =
        serde_json::from_value(serde_json::json!({ "issuer": "http://127.0.0.1:9" }))
            .expect("provider spec");
    let provider = Provider::new(&provider_spec).expect("provider");
    let errors = Bff::new(
        &spec,
        &provider_spec,
        provider,
        Arc::new(MemoryStore::new(10)),
        Arc::default(),
    )
    .expect_err("no client id");
    assert!(errors.iter().any(|e| e.path == "provider"), "{errors:?}");
}

#[test]
fn session_cookies_are_host_only_secure_httponly() {
    let b = bff();
    let v = b.set_cookie("abc.def", Duration::from_secs(60));
    assert_eq!(
        v.to_str().expect("ascii"),
        "__Host-meshgate=abc.def; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=60"
    );
    assert!(b
        .clear_cookie()
        .to_str()
        .expect("ascii")
        .contains("Max-Age=0"));
}

/// Alice's session record at `now`: created at `created_at`, ending at `expires_at`, with an
/// access token good for 10 minutes.
fn alice(now: u64, created_at: u64, expires_at: u64) -> Record {
    Record {
        sub: "alice".into(),
        sid: None,
        name: None,
        email: None,
        roles: vec![],
        access_token: "at".into(),
        access_expires_at: now + 600,
        refresh_token: None,
        id_token: None,
        created_at,
        expires_at,
        touched_at: now,
    }
}

#[tokio::test]
async fn a_tampered_or_foreign_record_opens_as_no_session() {
    let b = bff();
    let rng = SystemRandom::new();
    let handle = SessionHandle::generate(&rng).expect("handle");
    let now = crate::jwt::unix_now();
    let record = alice(now, now, now + 3600);
    b.save(&handle, &record).await.expect("save");
    assert_eq!(b.load(&handle).await.expect("load").sub, "alice");
    // Same id, another secret: the cookie of an attacker who guessed or stole the id.
    let value = handle.cookie_value();
    let (id, _) = value.split_once('.').expect("two parts");
    let forged = SessionHandle::parse(&format!("{id}.{}", "A".repeat(43))).expect("parses");
    assert_eq!(b.load(&forged).await.err(), Some(NoSession::Absent));
    // Tampered bytes in the store.
    let key = session_key(&handle);
    let mut sealed = b
        .store
        .load(&key)
        .await
        .expect("load")
        .expect("some")
        .to_vec();
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    b.store
        .save(&key, sealed, Duration::from_secs(60))
        .await
        .expect("save");
    assert_eq!(b.load(&handle).await.err(), Some(NoSession::Absent));
}

#[tokio::test]
async fn a_session_past_its_absolute_end_is_gone() {
    let b = bff();
    let handle = SessionHandle::generate(&SystemRandom::new()).expect("handle");
    let now = crate::jwt::unix_now();
    let record = alice(now, now - 100, now + 1);
    b.save(&handle, &record).await.expect("save");
    assert!(b.load(&handle).await.is_ok());
    // A record whose absolute end has passed opens as no session and is deleted.
    let mut ended = record.clone();
    ended.expires_at = now.saturating_sub(1);
    let plain = serde_json::to_vec(&ended).expect("json");
    let sealed = handle.seal(&b.key, &b.rng, &plain).expect("seal");
    let key = session_key(&handle);
    b.store
        .save(&key, sealed, Duration::from_secs(60))
        .await
        .expect("save");
    assert_eq!(b.load(&handle).await.err(), Some(NoSession::Absent));
    assert!(b.store.load(&key).await.expect("load").is_none(), "deleted");
    // And saving never outlives it.
    assert_eq!(b.save(&handle, &ended).await.err(), Some(NoSession::Absent));
}
