//! The canonical request target: one spelling of a request's path, decided once in the
//! early phase, that routing, role rules, blocked paths, intent features, the cache key
//! and the origin all see. Different spellings of one resource (`/x/../admin`,
//! `/%61dmin`, `//admin`) must not take different routes from the one the origin serves
//! (the class of Envoy's `normalize_path` and nginx's `merge_slashes` advisories).
//!
//! The policy, in order:
//! - percent-escapes must be well formed (`%` and two hex digits); their hex digits are
//!   upper-cased, and escapes of unreserved characters (RFC 3986 2.3: letters, digits,
//!   `-._~`) are decoded, since they mean the same resource;
//! - `%00` is refused: no origin path holds a NUL, and C origins truncate at it;
//! - an escaped slash (`%2F`), an escaped backslash (`%5C`) and a raw backslash are
//!   refused by default (`escaped_slashes = "reject"`), because origins disagree on whether
//!   they separate segments; `"keep"` forwards them as data within a segment (routing
//!   treats them as such), `"decode"` turns them into `/` before the rest;
//! - runs of slashes are merged into one (`merge_slashes`, default on);
//! - dot segments are removed (RFC 3986 5.2.4), after decoding, so `%2e%2e` counts; a
//!   segment that is a dot segment followed by a `;` parameter (`..;x`, which Tomcat and
//!   Jetty read as `..`) is refused;
//! - case is kept: paths are case-sensitive (RFC 3986 6.2.2.1), so routes and role rules
//!   compare them as they are (unless `fold_case`); `threat.blocked_paths` compare
//!   without case (a deny list errs toward matching);
//! - routes, role rules and blocked paths match the path without segment parameters
//!   (`match_form`), which servlet containers ignore.
//!
//! The query is not rewritten: it is the origin's to interpret.

use std::borrow::Cow;

use serde::Deserialize;

/// What the node does with `%2F`, `%5C` and `\` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// 400: the request cannot be made canonical (the default).
    #[default]
    Reject,
    /// Forwarded as they are; they separate nothing (routing sees them as data).
    Keep,
    /// Decoded to `/` before dot segments are removed.
    Decode,
}

/// `[http.path]`: how request paths are made canonical.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathSettings {
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// Match routes and role rules without case (for origins that ignore it).
    #[serde(default)]
    pub fold_case: bool,
}

fn yes() -> bool {
    true
}

impl Default for PathSettings {
    fn default() -> Self {
        Self {
            escaped_slashes: EscapedSlashes::Reject,
            merge_slashes: true,
            fold_case: false,
        }
    }
}

/// Why a path cannot be made canonical (the client gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("malformed percent-escape in the path")]
    BadEscape,
    #[error("%00 in the path")]
    Nul,
    #[error("escaped slash or backslash in the path")]
    EscapedSlash,
    #[error("dot segment with a parameter (..;) in the path")]
    DotParameter,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` may need rewriting: only these bytes start anything the policy changes.
fn needs_work(path: &[u8]) -> bool {
    path.windows(2)
        .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
        || path.iter().any(|&b| b == b'%' || b == b'\\')
}

/// The canonical form of a request path (without the query). Borrowed when it is
/// already canonical, which is the common case and costs one scan.
pub fn canonical_path(path: &str, policy: PathSettings) -> Result<Cow<'_, str>, TargetError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(TargetError::NotAbsolute);
    }
    if !needs_work(raw) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Escapes: checked, decoded where they are unreserved, and slashes by policy.
    // Separators stay '/', every other byte is data; "%2F" kept is data too.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(TargetError::BadEscape);
                };
                let c = hi << 4 | lo;
                match c {
                    0 => return Err(TargetError::Nul),
                    b'/' | b'\\' => match policy.escaped_slashes {
                        EscapedSlashes::Reject => return Err(TargetError::EscapedSlash),
                        EscapedSlashes::Decode => decoded.push(b'/'),
                        EscapedSlashes::Keep => {
                            decoded.extend_from_slice(if c == b'/' { b"%2F" } else { b"%5C" })
                        }
                    },
                    c if is_unreserved(c) => decoded.push(c),
                    c => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.extend_from_slice(&[
                            b'%',
                            HEX[(c >> 4) as usize],
                            HEX[(c & 15) as usize],
                        ]);
                    }
                }
                i += 3;
            }
            b'\\' => {
                match policy.escaped_slashes {
                    EscapedSlashes::Reject => return Err(TargetError::EscapedSlash),
                    EscapedSlashes::Decode => decoded.push(b'/'),
                    EscapedSlashes::Keep => decoded.push(b'\\'),
                }
                i += 1;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. Segments: dot segments removed, empty ones merged.
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    for (n, seg) in segments.iter().enumerate() {
        let is_last = n == last;
        let bare = seg.split(|&b| b == b';').next().unwrap_or(seg);
        if bare != *seg && (bare == b"." || bare == b"..") {
            return Err(TargetError::DotParameter);
        }
        match *seg {
            b"." => {}
            b".." => {
                out.pop();
            }
            b"" if policy.merge_slashes && !is_last => continue,
            s => {
                out.push(s);
                continue;
            }
        }
        // A dot segment at the end leaves the path ending in '/' (RFC 3986 5.2.4).
        if is_last {
            out.push(b"");
        }
    }
    let mut canonical = Vec::with_capacity(decoded.len());
    for seg in &out {
        canonical.push(b'/');
        canonical.extend_from_slice(seg);
    }
    if canonical.is_empty() {
        canonical.push(b'/');
    }
    // Only ASCII went in (a URI is ASCII) and only ASCII came out.
    let canonical = String::from_utf8(canonical).map_err(|_| TargetError::BadEscape)?;
    Ok(if canonical == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(canonical)
    })
}

/// The form of a canonical path that routes, role rules and blocked paths are matched
/// on: without segment parameters (`/admin;jsessionid=1/users` is `/admin/users`, as
/// Tomcat, Jetty and Spring read it), so a parameter cannot step around a prefix, and
/// lower-cased when `fold_case` is set (for origins that ignore case: IIS, ASP.NET,
/// Express by default). The origin still gets the canonical path as it is.
pub fn match_form(canonical: &str, policy: PathSettings) -> Cow<'_, str> {
    let stripped: Cow<'_, str> = if canonical.contains(';') {
        let mut out = String::with_capacity(canonical.len());
        for (i, seg) in canonical.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(seg.split(';').next().unwrap_or(""));
        }
        // Stripping can leave empty segments (`/;x/admin`): canonical again.
        match canonical_path(&out, policy) {
            Ok(c) => Cow::Owned(c.into_owned()),
            Err(_) => Cow::Owned(out),
        }
    } else {
        Cow::Borrowed(canonical)
    };
    if policy.fold_case && stripped.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(stripped.to_ascii_lowercase())
    } else {
        stripped
    }
}

/// Whether the canonical `path` is `prefix` or under it, on segment boundaries (`/api`
/// covers `/api` and `/api/x`, not `/apix`). The one prefix rule of routes and role rules.
pub fn path_under(path: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    p.is_empty()
        || path == p
        || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
}

/// A configured path prefix must be canonical: a prefix no canonical path can start
/// with (`/a//b`, `/x/../a`) would silently never match.
pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    match canonical_path(prefix, PathSettings::default()) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(c)) => {
            anyhow::bail!("path prefix {prefix:?} is not canonical: requests are matched as {c:?}")
        }
        Err(e) => anyhow::bail!("path prefix {prefix:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, TargetError> {
        canonical_path(p, PathSettings::default()).map(Cow::into_owned)
    }

    fn with(p: &str, escaped_slashes: EscapedSlashes, merge_slashes: bool) -> String {
        canonical_path(
            p,
            PathSettings {
                escaped_slashes,
                merge_slashes,
                fold_case: false,
            },
        )
        .unwrap()
        .into_owned()
    }

    #[test]
    fn spellings_of_one_path_become_one() {
        for p in [
            "/admin/users",
            "/x/../admin/users",
            "/./admin/users",
            "//admin//users",
            "/admin/./users",
            "/%2e%2e/admin/users",
            "/x/%2E%2E/admin/users",
            "/x/.%2e/admin/users",
            "/%61dmin/users",
            "/../../admin/users",
            "/admin/users/x/..",
        ] {
            let want = if p.ends_with("..") {
                "/admin/users/"
            } else {
                "/admin/users"
            };
            assert_eq!(canon(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/a/b", "/a/b/", "/a.b/c~d", "/a;b=c/d"] {
            assert!(
                matches!(
                    canonical_path(p, PathSettings::default()),
                    Ok(Cow::Borrowed(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn escapes_are_normalized_not_decoded_when_reserved() {
        assert_eq!(canon("/a%3fb").as_deref(), Ok("/a%3Fb"));
        assert_eq!(canon("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canon("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(canon("/%7euser").as_deref(), Ok("/~user"));
    }

    #[test]
    fn what_cannot_be_made_canonical_is_refused() {
        assert_eq!(canon("/a%2"), Err(TargetError::BadEscape));
        assert_eq!(canon("/a%g0"), Err(TargetError::BadEscape));
        assert_eq!(canon("/a%00"), Err(TargetError::Nul));
        assert_eq!(canon("/admin%2fusers"), Err(TargetError::EscapedSlash));
        assert_eq!(canon("/admin%5cusers"), Err(TargetError::EscapedSlash));
        assert_eq!(canon("/admin\\users"), Err(TargetError::EscapedSlash));
        assert_eq!(canon("/x/..;/admin"), Err(TargetError::DotParameter));
        assert_eq!(canon("/x/.;a/admin"), Err(TargetError::DotParameter));
        assert_eq!(canon("admin"), Err(TargetError::NotAbsolute));
    }

    #[test]
    fn slash_policies() {
        use EscapedSlashes::*;
        assert_eq!(with("/a%2Fb/../c", Keep, true), "/c");
        assert_eq!(with("/a%2fb", Keep, true), "/a%2Fb");
        assert_eq!(with("/x/..%2Fadmin", Decode, true), "/admin");
        assert_eq!(with("/x\\..\\admin", Decode, true), "/admin");
        assert_eq!(with("/a//b", Reject, false), "/a//b");
        assert_eq!(with("/a//../b", Reject, false), "/a/b");
    }

    #[test]
    fn parameters_and_case_do_not_step_around_a_prefix() {
        let d = PathSettings::default();
        assert_eq!(match_form("/admin;x/users", d), "/admin/users");
        assert_eq!(match_form("/admin;", d), "/admin");
        assert_eq!(match_form("/;x/admin", d), "/admin");
        assert_eq!(match_form("/.git;x/config", d), "/.git/config");
        assert!(matches!(match_form("/a/b", d), Cow::Borrowed(_)));
        assert!(path_under(
            &match_form("/admin;jsessionid=1/users", d),
            "/admin"
        ));
        let fold = PathSettings {
            fold_case: true,
            ..d
        };
        assert_eq!(match_form("/Admin;x/Users", fold), "/admin/users");
        assert_eq!(match_form("/Admin", d), "/Admin");
    }

    #[test]
    fn case_is_kept() {
        assert_eq!(canon("/Admin").as_deref(), Ok("/Admin"));
    }
}
