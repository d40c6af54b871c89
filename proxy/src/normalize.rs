//! Request-path normalisation: the one canonical path that routing, policy and the upstream see.
//!
//! The rules are RFC 3986 §6.2.2 (percent-encoding and dot-segment normalisation) plus
//! slash merging, as Envoy does with `normalize_path` and `merge_slashes`. Normalising before
//! routing closes the classic bypasses where `/api/../admin`, `/%2e%2e/admin` or `//admin`
//! match a permissive route while the upstream resolves them to a protected one.
//!
//! Choices beyond the RFC:
//! - Slashes are merged *before* dot segments are resolved, so an empty segment never counts
//!   as a directory: `/a//..` is `/`, the same as `/a/..`. (Envoy resolves dots first and would
//!   produce `/a/`.) Upstreams that merge slashes themselves resolve the path the same way.
//! - A backslash is an ordinary character, not a separator (Envoy's default): `/a\..\b` stays
//!   as it is. Upstreams that treat `\` as a separator (IIS, some Windows servers) could resolve
//!   `/public\..\admin` past a prefix route, so such upstreams need `\` rejected in front.
//! - Raw control characters (bytes below 0x20 and 0x7f) and an encoded NUL (`%00`) are
//!   rejected. Other encoded bytes, including encoded control characters, stay encoded and so
//!   cannot change how the path is split.
//! - Raw non-ASCII characters (the input is already UTF-8) are kept as they are, neither
//!   rejected nor percent-encoded.

use std::borrow::Cow;
use std::fmt;

/// Why a request path cannot be normalised. The request should be answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (empty, `*`, absolute-form or garbage).
    NotOriginForm,
    /// A `%` is not followed by two hexadecimal digits.
    BadPercentEncoding,
    /// The path contains `%00`; an encoded NUL truncates paths in many upstreams.
    EncodedNul,
    /// The path contains a raw control character (a byte below 0x20, or 0x7f).
    ControlCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "request path does not start with '/'",
            PathError::BadPercentEncoding => {
                "'%' in request path is not followed by two hex digits"
            }
            PathError::EncodedNul => "request path contains an encoded NUL (%00)",
            PathError::ControlCharacter => "request path contains a control character",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalises an origin-form request path (no query string).
///
/// Guarantees for an `Ok` result:
/// - it starts with `/` and contains no `//`;
/// - no segment is `.` or `..` (they have been resolved; `..` never climbs above `/`);
/// - every `%` starts an uppercase-hex escape of a byte that is neither an unreserved
///   character (those are decoded) nor NUL, so `%2F` is never turned into a separator;
/// - there are no raw control characters;
/// - a trailing slash is kept, and one is added where a final `.` or `..` segment was removed
///   (`/a/b/..` → `/a/`), as RFC 3986 `remove_dot_segments` does;
/// - the function is idempotent, and an input that is already normal is returned as
///   `Cow::Borrowed` without allocating.
///
/// # Errors
/// [`PathError`] when the path is not origin-form, has a malformed or NUL percent-escape, or
/// contains a control character.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotOriginForm)?;
    if is_normal(rest)? {
        Ok(Cow::Borrowed(path))
    } else {
        normalize_slow(rest).map(Cow::Owned)
    }
}

/// Checks the part after the leading `/` without allocating. `Ok(false)` means "needs
/// rewriting" and stops at the first such spot: the slow path validates the rest, so errors
/// after that spot are still reported.
fn is_normal(rest: &str) -> Result<bool, PathError> {
    let bytes = rest.as_bytes();
    let mut seg_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = escape_value(bytes, i)?;
                if is_unreserved(value)
                    || bytes[i + 1].is_ascii_lowercase()
                    || bytes[i + 2].is_ascii_lowercase()
                {
                    return Ok(false);
                }
                i += 3;
            }
            b'/' => {
                // An empty segment here is a doubled slash (the leading one was stripped).
                if is_dot_segment(&bytes[seg_start..i]) || i == seg_start {
                    return Ok(false);
                }
                i += 1;
                seg_start = i;
            }
            b if is_control(b) => return Err(PathError::ControlCharacter),
            _ => i += 1,
        }
    }
    Ok(!is_dot_segment(&bytes[seg_start..]))
}

fn normalize_slow(rest: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(rest.len() + 1);
    out.push('/');
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // Invariant: `out` ends with '/' here, so a segment is appended right after it.
        let start = out.len();
        decode_segment(segment, &mut out)?;
        match &out[start..] {
            // Merged slash: the separator is already in `out`.
            "" => {}
            "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                pop_segment(&mut out);
            }
            _ => {
                if segments.peek().is_some() {
                    out.push('/');
                }
            }
        }
    }
    Ok(out)
}

/// Removes the last segment of `out`, which ends with '/', keeping the slash before it; at the
/// root it does nothing, so `..` cannot escape.
fn pop_segment(out: &mut String) {
    let without_slash = out.len() - 1;
    if let Some(prev) = out[..without_slash].rfind('/') {
        out.truncate(prev + 1);
    }
}

/// Appends `segment` to `out` with unreserved escapes decoded and the others uppercased.
fn decode_segment(segment: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    // Literal runs are copied as slices; they start and end at ASCII bytes, so they are
    // always on char boundaries.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = escape_value(bytes, i)?;
                out.push_str(&segment[copied..i]);
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    out.push('%');
                    out.push(char::from(HEX_UPPER[usize::from(value >> 4)]));
                    out.push(char::from(HEX_UPPER[usize::from(value & 0x0f)]));
                }
                i += 3;
                copied = i;
            }
            b if is_control(b) => return Err(PathError::ControlCharacter),
            _ => i += 1,
        }
    }
    out.push_str(&segment[copied..]);
    Ok(())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The byte encoded by the escape starting at `bytes[at]` (a `%`).
fn escape_value(bytes: &[u8], at: usize) -> Result<u8, PathError> {
    let hi = bytes.get(at + 1).copied().and_then(hex_digit);
    let lo = bytes.get(at + 2).copied().and_then(hex_digit);
    match (hi, lo) {
        (Some(0), Some(0)) => Err(PathError::EncodedNul),
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadPercentEncoding),
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3 unreserved characters: the only ones whose escapes are equivalent to the raw
/// character and so may be decoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn is_dot_segment(segment: &[u8]) -> bool {
    matches!(segment, b"." | b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize_path(path).map(Cow::into_owned)
    }

    fn ok(s: &str) -> Result<String, PathError> {
        Ok(s.to_owned())
    }

    #[test]
    fn requires_origin_form() {
        assert_eq!(norm(""), Err(PathError::NotOriginForm));
        assert_eq!(norm("*"), Err(PathError::NotOriginForm));
        assert_eq!(norm("http://a/b"), Err(PathError::NotOriginForm));
        assert_eq!(norm("a/b"), Err(PathError::NotOriginForm));
        assert_eq!(norm("%2Fa"), Err(PathError::NotOriginForm));
    }

    #[test]
    fn decodes_unreserved_and_uppercases_the_rest() {
        assert_eq!(norm("/%41"), ok("/A"));
        assert_eq!(norm("/%61%7a%30%2d%5F%7E"), ok("/az0-_~"));
        assert_eq!(norm("/%2e"), ok("/"));
        assert_eq!(norm("/x%2Ey"), ok("/x.y"));
        assert_eq!(norm("/a%2fb"), ok("/a%2Fb"));
        assert_eq!(norm("/a%2Fb"), ok("/a%2Fb"));
        assert_eq!(norm("/%25"), ok("/%25"));
        assert_eq!(norm("/%c3%a9"), ok("/%C3%A9"));
        assert_eq!(norm("/%3f%23"), ok("/%3F%23"));
    }

    #[test]
    fn encoded_slash_is_not_a_separator() {
        assert_eq!(norm("/a/..%2F..%2Fadmin"), ok("/a/..%2F..%2Fadmin"));
        assert_eq!(norm("/a/%2e%2e%2fadmin"), ok("/a/..%2Fadmin"));
        assert_eq!(norm("/%2F%2F"), ok("/%2F%2F"));
    }

    #[test]
    fn rejects_bad_percent_encoding() {
        for bad in [
            "/%", "/%2", "/a%g0", "/a%0g", "/%%41", "/a/%2", "/%-1", "/%+1",
        ] {
            assert_eq!(norm(bad), Err(PathError::BadPercentEncoding), "{bad}");
        }
        // Found even when an earlier part already needs rewriting.
        assert_eq!(norm("//a/%zz"), Err(PathError::BadPercentEncoding));
    }

    #[test]
    fn rejects_nul_and_control_characters() {
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(norm("//a%00"), Err(PathError::EncodedNul));
        for bad in [
            "/a\0b",
            "/a\tb",
            "/a\r\nb",
            "/\x7f",
            "//x/\x01",
            "/%2e/\x1f",
        ] {
            assert_eq!(norm(bad), Err(PathError::ControlCharacter), "{bad:?}");
        }
        // Encoded control characters stay encoded.
        assert_eq!(norm("/a%0d%0Ab"), ok("/a%0D%0Ab"));
        assert_eq!(norm("/%7f"), ok("/%7F"));
    }

    #[test]
    fn merges_slashes() {
        assert_eq!(norm("//admin"), ok("/admin"));
        assert_eq!(norm("/a///b"), ok("/a/b"));
        assert_eq!(norm("//"), ok("/"));
        assert_eq!(norm("/a//"), ok("/a/"));
        assert_eq!(norm("///a//b///"), ok("/a/b/"));
    }

    #[test]
    fn resolves_dot_segments() {
        assert_eq!(norm("/api/../admin"), ok("/admin"));
        assert_eq!(norm("/api/%2e%2e/admin"), ok("/admin"));
        assert_eq!(norm("/api/%2E%2e/admin"), ok("/admin"));
        assert_eq!(norm("/api/.%2e/admin"), ok("/admin"));
        assert_eq!(norm("/a/./b"), ok("/a/b"));
        assert_eq!(norm("/.."), ok("/"));
        assert_eq!(norm("/."), ok("/"));
        assert_eq!(norm("/../../.."), ok("/"));
        assert_eq!(norm("/../a"), ok("/a"));
        assert_eq!(norm("/a/b/.."), ok("/a/"));
        assert_eq!(norm("/a/b/../"), ok("/a/"));
        assert_eq!(norm("/a/."), ok("/a/"));
        assert_eq!(norm("/a/b/c/./../../g"), ok("/a/g"));
        assert_eq!(norm("/a//../b"), ok("/b"));
        assert_eq!(norm("/a/..//b"), ok("/b"));
        // Not dot segments.
        assert_eq!(norm("/..."), ok("/..."));
        assert_eq!(norm("/.a/..b/a."), ok("/.a/..b/a."));
        assert_eq!(norm("/a/.%2F"), ok("/a/.%2F"));
    }

    #[test]
    fn trailing_slash_is_preserved() {
        assert_eq!(norm("/a/"), ok("/a/"));
        assert_eq!(norm("/"), ok("/"));
        assert_eq!(norm("/a/b"), ok("/a/b"));
    }

    #[test]
    fn backslash_and_non_ascii_are_literal() {
        assert_eq!(norm("/a\\..\\b"), ok("/a\\..\\b"));
        assert_eq!(norm("/a/..\\b"), ok("/a/..\\b"));
        assert_eq!(norm("/\\"), ok("/\\"));
        assert_eq!(norm("/caf\u{e9}/./x"), ok("/caf\u{e9}/x"));
        assert_eq!(norm("/\u{1F600}//%2e%2e/\u{e9}"), ok("/\u{e9}"));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/a",
            "/a/",
            "/api/v1/users/42",
            "/a%2Fb",
            "/%C3%A9",
            "/...",
            "/.well-known/acme",
            "/a\\b",
            "/caf\u{e9}",
            "/a b?",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
        for path in ["/a%2fb", "//a", "/a/.", "/%41", "/a/../b"] {
            assert!(matches!(normalize_path(path), Ok(Cow::Owned(_))), "{path}");
        }
    }

    /// xorshift64: enough to explore the input space reproducibly without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The output is normal: normalising again returns it borrowed and unchanged. Also checks
    /// that the fast path agrees with the rewriting path.
    fn assert_idempotent(input: &str, once: &str) {
        let slow = input.strip_prefix('/').map(normalize_slow);
        assert_eq!(slow, Some(Ok(once.to_owned())), "input {input:?}");
        match normalize_path(once) {
            Ok(Cow::Borrowed(twice)) => assert_eq!(twice, once, "input {input:?}"),
            other => panic!("input {input:?}: {once:?} normalised again to {other:?}"),
        }
        // Check the guarantees independently of `is_normal`, which the above relies on.
        assert!(
            once.starts_with('/') && !once.contains("//"),
            "input {input:?} gave {once:?}"
        );
        assert!(
            once.split('/').all(|seg| seg != "." && seg != ".."),
            "input {input:?} gave {once:?}"
        );
        let bytes = once.as_bytes();
        for (i, _) in once.match_indices('%') {
            let hex = &bytes[i + 1..i + 3];
            assert!(
                hex.iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
                "input {input:?} gave {once:?}"
            );
            let value = escape_value(bytes, i);
            assert!(
                matches!(value, Ok(v) if !is_unreserved(v)),
                "input {input:?} gave {once:?}"
            );
        }
        assert!(
            !once.bytes().any(is_control),
            "input {input:?} gave {once:?}"
        );
    }

    #[test]
    fn idempotent_over_random_paths() {
        const ALPHABET: [&str; 8] = ["/", ".", "%2e", "%2F", "a", "%41", "%", "%2f"];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut normalised = 0;
        for _ in 0..50_000 {
            let mut path = String::from("/");
            for _ in 0..rng.below(12) {
                path.push_str(ALPHABET[rng.below(ALPHABET.len())]);
            }
            if let Ok(once) = normalize_path(&path) {
                normalised += 1;
                assert_idempotent(&path, &once);
            }
        }
        // The alphabet's lone '%' must not make every input an error.
        assert!(normalised > 10_000, "only {normalised} inputs were valid");
    }

    #[test]
    fn never_panics_on_random_bytes() {
        const INTERESTING: &[u8] = b"/.%2eEfF0aA\\\x00\x7f\xc3\xa9\xff ";
        let mut rng = XorShift(0x0123_4567_89AB_CDEF);
        let mut normalised = 0;
        for round in 0..50_000 {
            let len = rng.below(24);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if round % 2 == 0 {
                        INTERESTING[rng.below(INTERESTING.len())]
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            let mut input = String::from_utf8_lossy(&bytes).into_owned();
            // Most random inputs would fail the first check; give half of them a chance.
            if round % 4 < 2 {
                input.insert(0, '/');
            }
            if let Ok(once) = normalize_path(&input) {
                normalised += 1;
                assert_idempotent(&input, &once);
            }
        }
        assert!(normalised > 5_000, "only {normalised} inputs were valid");
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            PathError::BadPercentEncoding.to_string(),
            "'%' in request path is not followed by two hex digits"
        );
        let err: Box<dyn std::error::Error> = Box::new(PathError::EncodedNul);
        assert!(err.to_string().contains("%00"));
    }
}
