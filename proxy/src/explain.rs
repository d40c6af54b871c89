//! `meshgate explain`: which route a request would take and why, using the engine's own
//! router, normalizer and filter chains (not a re-implementation that could drift).

use std::fmt::Write as _;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::normalize::normalize_path;
use crate::runtime::router::RouteInput;
use crate::runtime::Runtime;

/// Renders the explanation for `METHOD URL` with extra `headers` (`"name: value"`).
/// `url` may be absolute (`http://shop.local/api`) or a path (`/api`, host from `Host:`).
pub fn explain(
    rt: &Runtime,
    method: &str,
    url: &str,
    headers: &[String],
) -> Result<String, String> {
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("invalid header {h:?}: expected 'name: value'"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("invalid value for header {k:?}"))?;
        map.append(name, value);
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let host_header = map
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let host = uri
        .host()
        .map(str::to_string)
        .or(host_header)
        .unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .map_or(host.as_str(), |(h, _)| h)
        .to_ascii_lowercase();
    let raw_path = uri.path();
    let path = normalize_path(raw_path)
        .map_err(|e| format!("the request would be refused with 400: {e}"))?;

    let mut out = String::new();
    let _ = writeln!(out, "request: {method} host={host:?} path={raw_path:?}");
    if path != raw_path {
        let _ = writeln!(out, "normalized path: {path:?}");
    }
    let input = RouteInput {
        method: &method,
        host: &host,
        path: &path,
        headers: &map,
        listener: None,
    };
    let trace = rt.router.trace(&input);
    let mut matched = None;
    for (route, verdict) in &trace {
        match verdict {
            Ok(()) => {
                let _ = writeln!(out, "  route {:?}: MATCH", &*route.name);
                matched = Some(Arc::clone(route));
            }
            Err(why) => {
                let _ = writeln!(out, "  route {:?}: no ({why})", &*route.name);
            }
        }
    }
    let Some(route) = matched else {
        let _ = writeln!(
            out,
            "result: no route matches; the proxy answers 404 no_route"
        );
        return Ok(out);
    };
    let _ = writeln!(out, "route: {}", route.name);
    let upstream_path = match &route.rewrite {
        Some(rw) => rw.apply(&path).into_owned(),
        None => path.into_owned(),
    };
    let _ = writeln!(out, "upstream path: {upstream_path}");
    let names = route.filters.names();
    if names.is_empty() {
        let _ = writeln!(out, "filters: (none)");
    } else {
        let _ = writeln!(out, "filters: {}", names.join(" -> "));
    }
    for (cluster, share) in route.target.describe() {
        let endpoints = rt
            .cluster(&cluster)
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "cluster: {cluster} ({share:.1}%) endpoints: [{endpoints}]"
        );
    }
    let _ = writeln!(
        out,
        "timeout: {}",
        humantime::format_duration(route.timeout)
    );
    Ok(out)
}
