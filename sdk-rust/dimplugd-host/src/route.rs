//! Route templates and method matching, as sdk-go/manifest/route.go does
//! them. schema/conformance/routes.json states the rules as cases; the
//! tests below run every one of them.

use std::fmt;

/// The longest route template accepted, in bytes (sdk-go/manifest.MaxRouteLen).
pub const MAX_ROUTE_LEN: usize = 1024;

/// Whether a hook declared for method `hook` (an upper-case method or "*")
/// sees a request with method `request`: "*" sees every method, anything
/// else only itself, compared exactly (HEAD is not GET; case-sensitive).
pub fn method_matches(hook: &str, request: &str) -> bool {
    hook == "*" || hook == request
}

/// A parsed axum-style route template such as
/// `/api/v1/stream/:gid/data/*path`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    template: String,
    segs: Vec<Segment>,
    /// The name of the final `*name` segment, if any.
    wildcard: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Why a route template is invalid; the message follows the template, as
/// the Go SDK words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError {
    /// The template.
    pub template: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {:?}: {}", self.template, self.problem)
    }
}

impl std::error::Error for RouteError {}

impl Route {
    /// Parses a template with the rules of sdk-go/manifest.ParseRoute: it
    /// starts with "/", has no empty segment and no trailing slash, names
    /// each `:param` and the final `*wildcard` once (letters, digits and
    /// underscores, not starting with a digit), has no braces, no "." or
    /// ".." segment, and literal segments of RFC 3986 path characters
    /// (minus ":" and "*", "%" only before two hex digits).
    pub fn parse(template: &str) -> Result<Route, RouteError> {
        parse(template).map_err(|problem| RouteError { template: template.to_string(), problem })
    }

    /// The template the route was parsed from.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The parameter names in template order, the wildcard last.
    pub fn params(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .segs
            .iter()
            .filter_map(|s| match s {
                Segment::Param(p) => Some(p.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        out.extend(self.wildcard.as_deref());
        out
    }

    /// Matches `path` (the URL path only: no query, not percent-decoded)
    /// and returns the captured parameters in template order, or `None`.
    /// A `:param` captures one non-empty segment; the final `*rest`
    /// captures the non-empty remainder after its slash, slashes included.
    /// Literal segments compare byte for byte, and a trailing slash in
    /// `path` is significant. The default (empty) route matches nothing.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        if self.template.is_empty() || !path.starts_with('/') {
            return None;
        }
        if self.segs.is_empty() && self.wildcard.is_none() {
            return (path == "/").then(Vec::new);
        }
        let mut params = Vec::new();
        let mut i = 1; // start of the next segment, just after a '/'
        for s in &self.segs {
            if i > path.len() {
                return None;
            }
            let end = path[i..].find('/').map_or(path.len(), |e| e + i);
            let seg = &path[i..end];
            if seg.is_empty() {
                return None;
            }
            match s {
                Segment::Param(name) => params.push((name.clone(), seg.to_string())),
                Segment::Literal(lit) if lit != seg => return None,
                Segment::Literal(_) => {}
            }
            i = end + 1;
        }
        if let Some(name) = &self.wildcard {
            if i >= path.len() {
                return None;
            }
            params.push((name.clone(), path[i..].to_string()));
            return Some(params);
        }
        (i == path.len() + 1).then_some(params)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

impl std::str::FromStr for Route {
    type Err = RouteError;
    fn from_str(s: &str) -> Result<Self, RouteError> {
        Route::parse(s)
    }
}

/// Parses `template` (see [`Route::parse`]).
pub fn parse_route(template: &str) -> Result<Route, RouteError> {
    Route::parse(template)
}

/// Matches `path` against a route template and returns the captured
/// parameters in template order, or `None` (also for an invalid template).
/// See [`Route::matches`]; parse once with [`Route::parse`] to match often.
pub fn match_route(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    Route::parse(template).ok()?.matches(path)
}

fn parse(t: &str) -> Result<Route, String> {
    if t.is_empty() {
        return Err("is empty".into());
    }
    if t.len() > MAX_ROUTE_LEN {
        return Err(format!("is longer than {MAX_ROUTE_LEN} bytes"));
    }
    if !t.starts_with('/') {
        return Err(r#"must start with "/""#.into());
    }
    if t == "/" {
        return Ok(Route { template: t.into(), ..Default::default() });
    }
    let parts: Vec<&str> = t[1..].split('/').collect();
    let mut r = Route { template: t.into(), ..Default::default() };
    fn add_param(name: &str, form: &str, seen: &mut Vec<String>) -> Result<(), String> {
        if name.is_empty() {
            return Err(format!("has {form:?} without a parameter name; write e.g. {:?}", format!("{form}id")));
        }
        if !identifier(name) {
            return Err(format!(
                "has an invalid parameter name {name:?} (want letters, digits and underscores, not starting with a digit)"
            ));
        }
        if seen.iter().any(|s| s == name) {
            return Err(format!("repeats parameter {name:?}"));
        }
        seen.push(name.to_string());
        Ok(())
    }
    let mut names: Vec<String> = Vec::new();
    for (i, s) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        if s.is_empty() && last {
            return Err("ends with a slash; write it without the trailing slash".into());
        } else if s.is_empty() {
            return Err(r#"has an empty segment ("//")"#.into());
        } else if s.contains(['{', '}']) {
            return Err(format!(
                r#"uses braces in segment {s:?}; write ":name" for a parameter or "*name" for the rest of the path"#
            ));
        } else if let Some(name) = s.strip_prefix(':') {
            add_param(name, ":", &mut names)?;
            r.segs.push(Segment::Param(name.into()));
        } else if let Some(name) = s.strip_prefix('*') {
            if !last {
                return Err(format!("has {s:?} before the last segment; a wildcard must come last"));
            }
            add_param(name, "*", &mut names)?;
            r.wildcard = Some(name.into());
        } else if *s == "." || *s == ".." {
            return Err(format!("has a {s:?} segment; request paths are normalized, so it never matches"));
        } else {
            literal_problem(s)?;
            r.segs.push(Segment::Literal(s.to_string()));
        }
    }
    Ok(r)
}

fn identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().enumerate().all(|(i, c)| c == b'_' || c.is_ascii_alphabetic() || (c.is_ascii_digit() && i > 0))
}

/// Checks a literal segment against RFC 3986's pchar, minus ":" and "*".
fn literal_problem(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || b"-._~!$&'()+,;=@".contains(&c) {
        } else if c == b'%' {
            if i + 2 >= b.len() || !b[i + 1].is_ascii_hexdigit() || !b[i + 2].is_ascii_hexdigit() {
                return Err(format!("has a % not followed by two hex digits in segment {s:?}"));
            }
            i += 2;
        } else if c == b':' || c == b'*' {
            return Err(format!("has {:?} inside segment {s:?}; it may only start a parameter segment", c as char));
        } else {
            let ch = s[i..].chars().next().unwrap_or('?');
            return Err(format!("has {ch:?} in segment {s:?}, which is not allowed in a path (percent-encode it)"));
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{method_matches, Route};
    use serde_json::Value;

    /// schema/conformance/routes.json, the cases every host implements.
    fn cases() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/conformance/routes.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
    }

    fn list<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
        let l = v[key].as_array().unwrap_or_else(|| panic!("routes.json: {key:?} is not a list"));
        assert!(!l.is_empty(), "routes.json: no {key:?} cases");
        l
    }

    #[test]
    fn conformance_match() {
        let v = cases();
        for c in list(&v, "match") {
            let template = c["template"].as_str().expect("template");
            let path = c["path"].as_str().expect("path");
            let want: Option<Vec<(String, String)>> = c["params"].as_array().map(|ps| {
                ps.iter().map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string())).collect()
            });
            let route = Route::parse(template).unwrap_or_else(|e| panic!("a match case's template is invalid: {e}"));
            assert_eq!(route.matches(path), want, "{template:?} against {path:?}");
            assert_eq!(super::match_route(template, path), want, "match_route({template:?}, {path:?})");
        }
    }

    #[test]
    fn conformance_methods() {
        let v = cases();
        for c in list(&v, "methods") {
            let (hook, request) = (c["hook"].as_str().unwrap(), c["request"].as_str().unwrap());
            let want = c["match"].as_bool().expect("match is a bool");
            assert_eq!(method_matches(hook, request), want, "hook method {hook:?}, request method {request:?}");
        }
    }

    #[test]
    fn conformance_invalid_templates() {
        let v = cases();
        for t in list(&v, "invalid_templates") {
            let t = t.as_str().unwrap();
            let err = Route::parse(t).expect_err(&format!("template {t:?} parsed, want an error"));
            assert!(err.to_string().starts_with(&format!("route {t:?}: ")), "{err}");
            assert_eq!(super::match_route(t, "/a/b"), None, "an invalid template matched");
        }
    }

    #[test]
    fn parse_keeps_params_and_limits() {
        let r = Route::parse("/api/v1/stream/:gid/data/*path").unwrap();
        assert_eq!(r.params(), vec!["gid", "path"]);
        assert_eq!(r.template(), "/api/v1/stream/:gid/data/*path");
        let long = format!("/{}", "a".repeat(super::MAX_ROUTE_LEN));
        assert!(Route::parse(&long).unwrap_err().problem.contains("longer than"));
        assert!(Route::parse("/a/%2Fb/%zz").unwrap_err().problem.contains("two hex digits"));
        assert!(Route::parse("/a b").unwrap_err().problem.contains("not allowed"));
        assert!(Route::parse("/a/%2F").is_ok());
        assert_eq!(Route::default().matches("/"), None);
    }
}
