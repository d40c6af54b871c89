//! The three pages a person sees: the login form, an error page and the
//! signed-out page. Plain HTML with inline CSS, every dynamic value escaped.
//!
//! Written by hand rather than with a template engine: three small pages do not
//! justify another dependency.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for use in HTML content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:#f3f4f6;color:#111827}\
main{width:100%;max-width:380px;margin:16px;padding:32px;background:#fff;border-radius:12px;\
box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.06)}\
h1{margin:0 0 4px;font-size:1.4rem}\
p.sub{margin:0 0 24px;color:#6b7280;font-size:.95rem}\
label{display:block;margin:16px 0 6px;font-weight:600;font-size:.9rem}\
input[type=text],input[type=password]{width:100%;padding:10px 12px;border:1px solid #d1d5db;\
border-radius:8px;font-size:1rem}\
input:focus{outline:2px solid #2563eb;outline-offset:1px;border-color:#2563eb}\
button,a.button{display:block;width:100%;margin-top:24px;padding:11px;border:0;border-radius:8px;\
background:#2563eb;color:#fff;font-size:1rem;font-weight:600;text-align:center;text-decoration:none;cursor:pointer}\
button:hover,a.button:hover{background:#1d4ed8}\
.error{margin:0 0 8px;padding:10px 12px;border-radius:8px;background:#fef2f2;color:#991b1b;font-size:.9rem}\
footer{margin-top:20px;color:#9ca3af;font-size:.8rem;text-align:center}";

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\">\
<title>{title}</title><style>{STYLE}</style></head>\
<body><main>{body}<footer>meshgate dev identity provider</footer></main></body></html>\n",
        title = escape(title),
    );
    let mut response = Html(html).into_response();
    let headers = response.headers_mut();
    // No scripts, no framing (clickjacking on the password form), nothing cached.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The login form. The only request state it carries is the opaque id of the
/// pending authorization, which lives server-side.
pub fn login_page(
    action: &str,
    auth_request: &str,
    client_id: &str,
    login_hint: Option<&str>,
    error: Option<&str>,
) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1><p class=\"sub\">to continue to <strong>{client}</strong></p>{error}\
<form method=\"post\" action=\"{action}\" autocomplete=\"on\">\
<input type=\"hidden\" name=\"auth_request\" value=\"{auth_request}\">\
<label for=\"username\">Username</label>\
<input type=\"text\" id=\"username\" name=\"username\" value=\"{hint}\" autocomplete=\"username\" \
autocapitalize=\"none\" spellcheck=\"false\" maxlength=\"256\" required autofocus>\
<label for=\"password\">Password</label>\
<input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" maxlength=\"1024\" required>\
<button type=\"submit\">Sign in</button></form>",
        client = escape(client_id),
        action = escape(action),
        auth_request = escape(auth_request),
        hint = escape(login_hint.unwrap_or("")),
    );
    page("Sign in", &body)
}

pub fn error_page(title: &str, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p class=\"sub\">{}</p>",
        escape(title),
        escape(message)
    );
    page(title, &body)
}

pub fn signed_out_page() -> Response {
    page(
        "Signed out",
        "<h1>Signed out</h1><p class=\"sub\">You have been signed out. You can close this window.</p>",
    )
}
