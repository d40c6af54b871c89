//! Protocol parameters from a query string or form body, read the way RFC 6749
//! §3.1 asks: a parameter sent twice is an error, one sent without a value
//! counts as absent.

use std::collections::HashMap;

use axum::http::{header, HeaderMap};

const MAX_PARAMS: usize = 64;

#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (count, (key, value)) in url::form_urlencoded::parse(raw).enumerate() {
            if count >= MAX_PARAMS {
                return Err("too many parameters".into());
            }
            if value.is_empty() {
                continue;
            }
            if map.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(format!("parameter '{key}' is repeated"));
            }
        }
        Ok(Self(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// True when the request body is declared as a form.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_rejected_and_empty_ones_ignored() {
        assert!(Params::parse(b"a=1&a=2").is_err());
        let p = Params::parse(b"a=1&b=&c=x%20y").expect("valid");
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y"));
    }
}
