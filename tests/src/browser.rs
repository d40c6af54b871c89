//! A browser-like HTTP client for BFF tests: keeps cookies by hand (including `Secure`
//! ones on plain-HTTP loopback, as browsers do for 127.0.0.1), never follows redirects,
//! and records every `Set-Cookie` so tests can check cookie attributes.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};

/// A cookie jar for one host plus the client that uses it.
#[derive(Default)]
pub struct Browser {
    client: reqwest::Client,
    jar: BTreeMap<String, String>,
    /// Every `Set-Cookie` header received, in order.
    pub set_cookies: Vec<String>,
}

/// One answer: status, headers and body text.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The `Location` header (empty when absent).
    pub fn location(&self) -> String {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Browser {
    /// An empty browser.
    pub fn new() -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("client"),
            jar: BTreeMap::new(),
            set_cookies: Vec::new(),
        }
    }

    /// The cookie `name`, if held.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    /// Sets (or, with `None`, removes) a cookie by hand, e.g. to tamper with it.
    pub fn set_cookie(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(v) => {
                self.jar.insert(name.to_string(), v.to_string());
            }
            None => {
                self.jar.remove(name);
            }
        }
    }

    /// Sends `method url` with the cookies held and `headers`, and stores the cookies
    /// of the answer.
    pub async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Page {
        let mut req = self.client.request(method, url);
        if !self.jar.is_empty() {
            let line = self
                .jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header(COOKIE, HeaderValue::from_str(&line).expect("cookie line"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for v in headers.get_all(SET_COOKIE) {
            let text = v.to_str().expect("set-cookie").to_string();
            self.store(&text);
            self.set_cookies.push(text);
        }
        let body = resp.text().await.unwrap_or_default();
        Page {
            status,
            headers,
            body,
        }
    }

    /// `GET url` with `headers`.
    pub async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Page {
        self.send(reqwest::Method::GET, url, headers, None).await
    }

    /// An API call as the SPA makes it: with `X-CSRF: 1`.
    pub async fn api(&mut self, method: reqwest::Method, url: &str) -> Page {
        self.send(method, url, &[("x-csrf", "1")], None).await
    }

    fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let expired = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
        if expired || value.is_empty() {
            self.jar.remove(name);
        } else {
            self.jar.insert(name.to_string(), value.to_string());
        }
    }
}
