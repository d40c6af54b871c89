//! Building blocks of the browser BFF (DESIGN §5): session cookies whose value is an opaque
//! id plus a per-session secret, tokens sealed with a key derived from the server key and
//! that secret, and the session stores. The OIDC flow, the `/auth/*` endpoints and the
//! `bff` route filter build on these (issue 5; not wired into the engine yet).

pub mod crypto;
pub mod redis_store;
pub mod store;
