//! `[gateway.http]`: the paths at which the gateway hands requests to a
//! package that serves HTTP itself (it exports
//! `wasi:http/incoming-handler@0.2`), e.g. `"/hooks/*" = "webhooks"`. A
//! path is exact (`/status`) or a prefix ending in `/*` (`/hooks/*`
//! answers `/hooks` and everything under `/hooks/`; `/*` answers every
//! path the gateway's own routes do not). A path that does not parse, that
//! is the gateway's own (`/api/...`, `/admin`, `/health`, `/metrics`,
//! `/openapi.json`), or that names a package the manifest does not list is
//! an error at its line; whether the package exports the handler is known
//! once it loads (`crate::http::check_routes`), and said with that line.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::error::ManifestError;
use super::model::PackageSpec;
use super::source::{Scope, Source};
use super::values::Text;

/// The longest route path accepted.
const MAX_ROUTE: usize = 1024;

/// Paths the gateway answers itself; a route may not take them.
const OWN_EXACT: [&str; 3] = ["/health", "/metrics", "/openapi.json"];
/// Prefixes the gateway answers itself (the prefix and everything under it).
const OWN_PREFIXES: [&str; 2] = ["/api", "/admin"];

/// Where a route answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutePath {
    /// Exactly this path.
    Exact(String),
    /// This path and every path under it (written `<prefix>/*`; empty for `/*`).
    Prefix(String),
}

/// One route of `[gateway.http]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// Where it answers.
    pub path: RoutePath,
    /// The package that answers it.
    pub package: String,
    /// Where it is written (`steedos.toml:12`), for errors found at load.
    pub at: String,
    /// Its span in the file, for errors found once the packages are read.
    pub(super) span: Range<usize>,
}

impl RoutePath {
    /// Parses a route path as written in `[gateway.http]`.
    pub(super) fn parse(text: &str) -> Result<RoutePath, String> {
        let bad = |why: &str| Err(format!("route {text:?}: {why}"));
        if text.len() > MAX_ROUTE {
            return bad(&format!("longer than {MAX_ROUTE} bytes"));
        }
        if !text.starts_with('/') {
            return bad("a path starts with `/`");
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) || text.contains(['?', '#']) {
            return bad("a path is visible ASCII, without a query (`?`) or fragment (`#`)");
        }
        let (path, prefix) = match text.strip_suffix("/*") {
            Some(p) => (p, true),
            None => (text, false),
        };
        if path.contains('*') {
            return bad("`*` may only end a path, as `/*`");
        }
        let dots = path.split('/').any(|s| s == "." || s == "..");
        if dots || path.contains("//") {
            return bad("a path has no empty, `.` or `..` segments");
        }
        let route = match prefix {
            true => RoutePath::Prefix(path.trim_end_matches('/').to_string()),
            false => RoutePath::Exact(path.to_string()),
        };
        if route.takes_own_route() {
            return bad(
                "the gateway answers it itself (`/api/...`, `/admin`, `/health`, `/metrics`, \
                 `/openapi.json`)",
            );
        }
        Ok(route)
    }

    /// Whether this route answers `path`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            RoutePath::Exact(p) => p == path,
            RoutePath::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }

    /// Whether a request for one of the gateway's own routes could reach it
    /// (a catch-all `/*` is fine: the gateway's routes are matched first).
    fn takes_own_route(&self) -> bool {
        match self {
            RoutePath::Exact(p) => is_own(p),
            RoutePath::Prefix(p) if p.is_empty() => false,
            RoutePath::Prefix(p) => is_own(p) || OWN_EXACT.iter().any(|own| self.matches(own)),
        }
    }
}

/// Whether the gateway answers `path` itself.
pub fn is_own(path: &str) -> bool {
    OWN_EXACT.contains(&path)
        || OWN_PREFIXES
            .iter()
            .any(|p| RoutePath::Prefix((*p).to_string()).matches(path))
}

impl std::fmt::Display for RoutePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePath::Exact(p) => f.write_str(p),
            RoutePath::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}

/// The route answering `path`, if any: an exact one first, else the
/// longest prefix.
pub fn find_route<'r>(routes: &'r [HttpRoute], path: &str) -> Option<&'r HttpRoute> {
    let mut best: Option<&HttpRoute> = None;
    for route in routes.iter().filter(|r| r.path.matches(path)) {
        match (&route.path, best.map(|b| &b.path)) {
            (RoutePath::Exact(_), _) => return Some(route),
            (RoutePath::Prefix(p), Some(RoutePath::Prefix(q))) if p.len() <= q.len() => {}
            _ => best = Some(route),
        }
    }
    best
}

impl Source<'_> {
    /// The routes of `[gateway.http]`, each checked at its own line.
    pub(super) fn http_routes(
        &self,
        raw: BTreeMap<String, Spanned<Text>>,
        scope: &Scope<'_, '_>,
    ) -> Result<Vec<HttpRoute>, ManifestError> {
        let mut routes: Vec<HttpRoute> = raw
            .into_iter()
            .map(|(path, package)| {
                let span = package.span();
                let path = RoutePath::parse(&path)
                    .map_err(|e| scope.error(span.clone(), format!("http: {e}")))?;
                let (line, _) = self.position(span.start);
                Ok(HttpRoute {
                    path,
                    package: package.into_inner().0,
                    at: format!("{}:{line}", self.file.display()),
                    span,
                })
            })
            .collect::<Result<_, ManifestError>>()?;
        routes.sort_by_key(|r| r.span.start);
        Ok(routes)
    }

    /// Every route names a package the manifest lists (loaded or rejected).
    pub(super) fn check_route_packages(
        &self,
        routes: &[HttpRoute],
        packages: &[PackageSpec],
        rejected: &[ManifestError],
    ) -> Result<(), ManifestError> {
        for route in routes {
            let listed = packages.iter().any(|p| p.name == route.package)
                || rejected
                    .iter()
                    .any(|r| r.package() == Some(route.package.as_str()));
            if !listed {
                let message = format!(
                    "gateway.http.\"{}\": no package `{}` in [packages]",
                    route.path, route.package
                );
                return Err(self.error(route.span.clone(), None, message));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> HttpRoute {
        HttpRoute {
            path: RoutePath::parse(path).expect(path),
            package: path.to_string(),
            at: String::new(),
            span: 0..0,
        }
    }

    #[test]
    fn paths_parse_exact_or_as_prefixes_and_bad_ones_are_refused() {
        assert_eq!(
            RoutePath::parse("/hooks/*"),
            Ok(RoutePath::Prefix("/hooks".into()))
        );
        assert_eq!(RoutePath::parse("/*"), Ok(RoutePath::Prefix(String::new())));
        assert_eq!(RoutePath::parse("/"), Ok(RoutePath::Exact("/".into())));
        assert_eq!(
            RoutePath::parse("/a/b/"),
            Ok(RoutePath::Exact("/a/b/".into()))
        );
        for bad in [
            "",
            "hooks",
            "/a*",
            "/*/x",
            "/a/*/b",
            "/a//b",
            "/a/../b",
            "/a b",
            "/a?x",
            "/a#x",
            "/api",
            "/api/*",
            "/api/x",
            "/admin/*",
            "/health",
            "/metrics",
            "/openapi.json",
            "/admin",
        ] {
            assert!(RoutePath::parse(bad).is_err(), "{bad:?} is refused");
        }
        assert!(RoutePath::parse(&format!("/{}", "a".repeat(2000))).is_err());
    }

    #[test]
    fn the_exact_route_wins_then_the_longest_prefix() {
        let routes = [
            route("/*"),
            route("/hooks/*"),
            route("/hooks/a/*"),
            route("/hooks/x"),
        ];
        let at = |p: &str| find_route(&routes, p).map(|r| r.package.as_str());
        assert_eq!(at("/hooks/x"), Some("/hooks/x"));
        assert_eq!(at("/hooks/a/b"), Some("/hooks/a/*"));
        assert_eq!(at("/hooks/a"), Some("/hooks/a/*"));
        assert_eq!(at("/hooks"), Some("/hooks/*"));
        assert_eq!(at("/hooksx"), Some("/*"));
        assert_eq!(at("/"), Some("/*"));
        assert_eq!(find_route(&routes[1..], "/hooksx"), None);
    }
}
