//! Route template matching, as sdk-go/manifest/route.go does it.

/// Matches `path` (the URL path only: no query, not percent-decoded)
/// against an axum-style route template and returns the captured
/// parameters in template order, or `None`. A `:param` captures one
/// non-empty segment; a final `*rest` captures the non-empty remainder
/// after its slash, slashes included. Literal segments compare byte for
/// byte, and a trailing slash in `path` is significant.
pub fn match_route(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    if template.is_empty() || !template.starts_with('/') || !path.starts_with('/') {
        return None;
    }
    if template == "/" {
        return (path == "/").then(Vec::new);
    }
    let parts: Vec<&str> = template[1..].split('/').collect();
    let (segs, wildcard) = match parts.last() {
        Some(last) if last.starts_with('*') => (&parts[..parts.len() - 1], Some(&last[1..])),
        _ => (&parts[..], None),
    };
    let mut params = Vec::new();
    let mut i = 1; // start of the next segment, just after a '/'
    for s in segs {
        if i > path.len() {
            return None;
        }
        let end = path[i..].find('/').map_or(path.len(), |e| e + i);
        let seg = &path[i..end];
        if seg.is_empty() {
            return None;
        }
        if let Some(name) = s.strip_prefix(':') {
            params.push((name.to_string(), seg.to_string()));
        } else if seg != *s {
            return None;
        }
        i = end + 1;
    }
    if let Some(name) = wildcard {
        if i >= path.len() {
            return None;
        }
        params.push((name.to_string(), path[i..].to_string()));
        return Some(params);
    }
    (i == path.len() + 1).then_some(params)
}

#[cfg(test)]
mod tests {
    use super::match_route;

    // The cases of sdk-go/manifest/route_test.go's TestRouteMatch.
    #[test]
    fn matches_like_the_go_sdk() {
        type P = &'static [(&'static str, &'static str)];
        let cases: &[(&str, &str, Option<P>)] = &[
            ("/api/v1/media/:id", "/api/v1/media/42", Some(&[("id", "42")])),
            ("/api/v1/media/:id", "/api/v1/media/42/", None),
            ("/api/v1/media/:id", "/api/v1/media/", None),
            ("/api/v1/media/:id", "/api/v1/media", None),
            ("/api/v1/media/:id", "/api/v1/media/42/files", None),
            ("/api/v1/media/:id", "/api/v1/medium/42", None),
            ("/api/v1/media/:id", "/api/v1/media/tmdb_search", Some(&[("id", "tmdb_search")])),
            ("/api/v1/media/:id", "/api/v1/media/a%2Fb", Some(&[("id", "a%2Fb")])),
            ("/api/v1/library/:id/media", "/api/v1/library/7/media", Some(&[("id", "7")])),
            ("/api/v1/library/:id/media", "/api/v1/library/7/unmatched", None),
            ("/api/v1/library/:id/media", "/api/v1/library//media", None),
            (
                "/api/v1/stream/:gid/data/*path",
                "/api/v1/stream/9f/data/video/1/segment_3.m4s",
                Some(&[("gid", "9f"), ("path", "video/1/segment_3.m4s")]),
            ),
            ("/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data/x", Some(&[("gid", "9f"), ("path", "x")])),
            ("/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data/", None),
            ("/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data", None),
            ("/api/v1/stream/:gid/data/*path", "/api/v1/stream/9f/data//x/", Some(&[("gid", "9f"), ("path", "/x/")])),
            ("/", "/", Some(&[])),
            ("/", "", None),
            ("/", "/a", None),
            ("/ws", "/ws", Some(&[])),
            ("/ws", "ws", None),
            ("/ws", "/ws/", None),
            ("/ws", "/wss", None),
            ("/*path", "/", None),
            ("/*path", "/static/app.js", Some(&[("path", "static/app.js")])),
            ("/static/*path", "/static", None),
            ("/a/:b/c/:d", "/a/1/c/2", Some(&[("b", "1"), ("d", "2")])),
            ("/a/:b/c/:d", "/a/1/x/2", None),
        ];
        for (template, path, want) in cases {
            let want = want.map(|p| p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>());
            assert_eq!(match_route(template, path), want, "{template:?} against {path:?}");
        }
    }
}
