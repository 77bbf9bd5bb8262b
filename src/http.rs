//! The HTTP surface: routing, the request pipeline in the contract's order of precedence,
//! and the shared state.
//!
//! Every request under `/api/atlas/` goes through [`dispatch`], which checks, in this order
//! (contract §3): route (404) and method (405), Digest authentication (401/429), the key's
//! access list (403), the v2 version (406), the group id (404), project access (401/403),
//! the per-project rate limit (429), the path type (400), the query (400), then hands the body
//! to the operation. The body is not read before all of that has passed, so the Digest
//! challenge goes out before a large upload is received.

pub mod error;
pub mod integrations;
pub mod query;
pub mod reply;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use ipnet::IpNet;
use serde_json::json;

use crate::auth::{self, Access, AuthFailure, Authenticator};
use crate::domain::ids::{GroupId, ObjectId};
use crate::domain::integration::{ApiVersion, IntegrationType};
use crate::rotation::LiveKeys;
use crate::store::Store;
use error::{ApiError, ErrorCode, Result};
use query::Params;
use reply::Reply;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

/// The shared parts of [`AppState`].
pub struct Shared {
    /// The storage.
    pub store: Arc<dyn Store>,
    /// Keys for secrets at rest.
    pub keyring: Arc<LiveKeys>,
    /// Authentication.
    pub auth: Arc<Authenticator>,
    /// Base URL for links (`https://host[:port]`), instead of the request's `Host`.
    pub public_url: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Requests per minute per project, when limited.
    pub project_limit: Option<ProjectLimiter>,
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self {
            inner: Arc::new(shared),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Health,
    List {
        version: ApiVersion,
        group: &'a str,
    },
    One {
        version: ApiVersion,
        group: &'a str,
        kind: &'a str,
    },
}

impl Route<'_> {
    fn allowed(self) -> &'static [Method] {
        match self {
            Self::Health | Self::List { .. } => &[Method::GET],
            Self::One { .. } => &[Method::GET, Method::POST, Method::PUT, Method::DELETE],
        }
    }
}

fn match_route(path: &str) -> Option<Route<'_>> {
    if path == "/health" {
        return Some(Route::Health);
    }
    let rest = path.strip_prefix("/api/atlas/")?;
    let mut parts = rest.split('/');
    let version = match parts.next()? {
        "v1.0" => ApiVersion::V1,
        "v2" => ApiVersion::V2,
        _ => return None,
    };
    if parts.next()? != "groups" {
        return None;
    }
    let group = parts.next().filter(|g| !g.is_empty())?;
    if parts.next()? != "integrations" {
        return None;
    }
    match (parts.next(), parts.next()) {
        (None, _) => Some(Route::List { version, group }),
        (Some(kind), None) if !kind.is_empty() => Some(Route::One {
            version,
            group,
            kind,
        }),
        _ => None,
    }
}

/// The one entry point for every request, called by the accept loop for each request of a
/// connection from `peer` (every path is routed here, so no router sits in between: axum's
/// router, with nothing but this as its fallback, cost 6,000 of a 401's 64,000 instructions
/// under callgrind). It also does what would otherwise take three tower layers (the profile
/// of the 401 path showed their cost): a request id (the client's `X-Request-Id` when it is
/// a sane one, else a random UUID), echoed in the response; a span carrying it, the method
/// and the path; one log line per response.
pub async fn dispatch(state: AppState, peer: SocketAddr, request: Request) -> Response<Body> {
    // The clock is read only when the response's log line will be written.
    let started = tracing::enabled!(tracing::Level::INFO).then(Instant::now);
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(new_request_id);
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        method = %request.method(),
        path = request.uri().path(),
    );
    let presentation = Params::presentation(request.uri().query());
    let (version, outcome, limit) = handle(&state, peer, request).instrument(span.clone()).await;
    let mut response = match outcome {
        Ok((reply, params)) => reply::success(reply, params, version),
        Err(err) => span.in_scope(|| reply::failure(err, presentation)),
    };
    let headers = response.headers_mut();
    if let Some((per_minute, remaining)) = limit {
        headers
            .entry("ratelimit-limit")
            .or_insert(HeaderValue::from(per_minute));
        headers
            .entry("ratelimit-remaining")
            .or_insert(HeaderValue::from(remaining));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(REQUEST_ID.clone(), request_id);
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_us = started.map_or(0, |started| {
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
            }),
            "response"
        );
    });
    response
}

/// A `HeaderName` rather than a `&str`: inserting a name that is not one of the standard
/// headers by its text copied it into a new allocation for every response; a clone of this
/// one only points at the static text.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A random UUID v4 from the thread-local generator (no system call per request).
fn new_request_id() -> HeaderValue {
    use rand::Rng;
    let id = uuid::Builder::from_random_bytes(rand::thread_rng().gen()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
        .unwrap_or(HeaderValue::from_static("-"))
}

type Outcome = Result<(Reply, Params)>;

/// A project's rate limit and what is left of it, for the `RateLimit-*` headers.
type Budget = Option<(u32, u32)>;

async fn handle(
    state: &AppState,
    peer: SocketAddr,
    request: Request,
) -> (ApiVersion, Outcome, Budget) {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some(route) = match_route(path) else {
        return (
            ApiVersion::V1,
            Err(ApiError::new(ErrorCode::ResourceNotFound, [path])),
            None,
        );
    };
    if !route.allowed().contains(&parts.method) {
        let allow = route
            .allowed()
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let err = ApiError::new(ErrorCode::MethodNotAllowed, [parts.method.as_str()]).with_header(
            header::ALLOW,
            HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("GET")),
        );
        return (ApiVersion::V1, Err(err), None);
    }
    let (version, group_text, kind_text) = match route {
        Route::Health => return (ApiVersion::V1, health(state).await, None),
        Route::List { version, group } => (version, group, None),
        Route::One {
            version,
            group,
            kind,
        } => (version, group, Some(kind)),
    };
    let mut limit = None;
    let outcome = async {
        let client = client_ip(peer.ip(), &parts.headers, &state.trusted_proxies);
        let key = authenticate(state, &parts, client)?;
        if !auth::allowed_from(&key, client) {
            return Err(ApiError::new(
                ErrorCode::IpAddressNotOnAccessList,
                [auth::canonical_ip(client).to_string()],
            ));
        }
        if version == ApiVersion::V2 {
            let accept: Vec<&[u8]> = parts
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            if !query::accepts_v2(&accept) {
                return Err(ApiError::plain(ErrorCode::InvalidVersionDate));
            }
        }
        let group = ObjectId::parse(group_text)
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidGroupId, [group_text]))?;
        let needed = if parts.method == Method::GET {
            Access::Read
        } else {
            Access::Write
        };
        let hint = match state.auth.access(&key, group).await? {
            None => return Err(ApiError::plain(ErrorCode::NotInGroup)),
            Some((access, _)) if access < needed => {
                return Err(ApiError::plain(ErrorCode::AccessForbidden))
            }
            Some((_, hint)) => hint,
        };
        if let Some(limiter) = &state.project_limit {
            let taken = limiter.take(group, path);
            limit = Some((limiter.per_minute(), *taken.as_ref().unwrap_or(&0)));
            taken?;
        }
        let kind = kind_text.map(|text| path_type(text, version)).transpose()?;
        let params = Params::parse(parts.uri.query())?;
        let ctx = integrations::Context {
            state,
            group,
            hint,
            version,
            params,
            link_base: LinkBase {
                public_url: state.public_url.as_deref(),
                uri: &parts.uri,
                headers: &parts.headers,
                path,
            },
        };
        let reply = match (kind, &parts.method) {
            (None, _) => integrations::list_integrations(&ctx).await?,
            (Some(kind), &Method::GET) => integrations::get_integration(&ctx, kind).await?,
            (Some(kind), &Method::DELETE) => integrations::delete_integration(&ctx, kind).await?,
            (Some(kind), method) => {
                let body = integrations::read_body(&parts.headers, body).await?;
                if method == Method::POST {
                    integrations::create_integration(&ctx, kind, &body).await?
                } else {
                    integrations::update_integration(&ctx, kind, &body).await?
                }
            }
        };
        Ok((reply, params))
    }
    .await;
    (version, outcome, limit)
}

fn authenticate(
    state: &AppState,
    parts: &axum::http::request::Parts,
    client: IpAddr,
) -> Result<Arc<auth::CachedKey>> {
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    state
        .auth
        .authenticate(header, parts.method.as_str(), uri, client)
        .map_err(|failure| match failure {
            AuthFailure::Throttled { retry_after } => ApiError::new(
                ErrorCode::RateLimited,
                [
                    parts.uri.path().to_owned(),
                    state.auth.failure_limit().to_string(),
                    "1".to_owned(),
                ],
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after)),
            other => {
                let stale = other == AuthFailure::Stale;
                let challenge = auth::digest::challenge(&state.auth.nonce(), stale);
                ApiError::plain(ErrorCode::UserUnauthorized).with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::try_from(challenge)
                        .unwrap_or(HeaderValue::from_static("Digest realm=\"MMS Public API\"")),
                )
            }
        })
}

fn path_type(text: &str, version: ApiVersion) -> Result<IntegrationType> {
    if text == "HIP_CHAT" {
        return Err(ApiError::plain(ErrorCode::HipchatNotSupported));
    }
    IntegrationType::parse(text)
        .filter(|kind| kind.available_in(version))
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidEnumValue, [text]))
}

async fn health(state: &AppState) -> Result<(Reply, Params)> {
    let reply = match state.store.ping().await {
        Ok(()) => Reply::Status(StatusCode::OK, json!({"status": "OK"})),
        Err(err) => {
            tracing::warn!(error = %err, "health check: database does not answer");
            Reply::Status(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "UNAVAILABLE"}),
            )
        }
    };
    Ok((reply, Params::default()))
}

/// The client's address: the socket's peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. An entry that is
/// not an address (`ip`, `ip:port` or `[ipv6]:port`) stops the walk: the request then counts
/// as coming from the unspecified address `0.0.0.0`, which no access list of single addresses
/// or blocks allows short of `0.0.0.0/0`, so a forged header cannot borrow the proxy's
/// address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| {
        trusted
            .iter()
            .any(|net| net.contains(&auth::canonical_ip(*ip)))
    };
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.into_iter().rev() {
        match forwarded_address(entry) {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return ip,
            None => return IpAddr::from([0, 0, 0, 0]),
        }
    }
    peer
}

fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// What the absolute URL of a request's resource, for `links`, is made of; built only by
/// the responses that show links.
pub struct LinkBase<'a> {
    /// `--public-url`, when set.
    pub public_url: Option<&'a str>,
    /// The request's URI.
    pub uri: &'a axum::http::Uri,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request's path.
    pub path: &'a str,
}

impl LinkBase<'_> {
    /// The absolute URL, without query.
    pub fn build(&self) -> String {
        let origin = match self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                // HTTP/2 carries the authority in the URI, HTTP/1.1 in Host; anything that is
                // not a plain `host[:port]` is not echoed into links.
                let host = self
                    .uri
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| {
                        self.headers
                            .get(header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned)
                    })
                    .filter(|h| is_host_and_port(h))
                    .unwrap_or_else(|| "localhost".to_owned());
                format!("http://{host}")
            }
        };
        format!("{origin}{}", self.path)
    }
}

fn is_host_and_port(text: &str) -> bool {
    !text.is_empty()
        && !text.contains('@')
        && text.parse::<axum::http::uri::Authority>().is_ok()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

/// Fixed-window per-project request limit (off by default), with `RateLimit-*` headers.
pub struct ProjectLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<GroupId, (Instant, u32)>>,
}

impl ProjectLimiter {
    /// A limit of `per_minute` requests per project.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request; the remaining budget, or 429.
    fn take(&self, group: GroupId, path: &str) -> Result<u32> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = windows.entry(group).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            let wait = 60u64
                .saturating_sub(now.duration_since(entry.0).as_secs())
                .max(1);
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                [path.to_owned(), self.per_minute.to_string(), "1".to_owned()],
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(wait)));
        }
        entry.1 += 1;
        Ok(self.per_minute - entry.1)
    }

    /// The limit.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_both_versions_and_nothing_else() {
        assert!(matches!(
            match_route("/api/atlas/v1.0/groups/abc/integrations"),
            Some(Route::List {
                version: ApiVersion::V1,
                group: "abc"
            })
        ));
        assert!(matches!(
            match_route("/api/atlas/v2/groups/abc/integrations/SLACK"),
            Some(Route::One {
                version: ApiVersion::V2,
                kind: "SLACK",
                ..
            })
        ));
        for path in [
            "/",
            "/api/atlas/v3/groups/abc/integrations",
            "/api/atlas/v1.0/groups//integrations",
            "/api/atlas/v1.0/groups/abc/integrations/",
            "/api/atlas/v1.0/groups/abc/integrations/SLACK/x",
            "/api/atlas/v1.0/groups/abc",
            "/api/atlas/v1.0/orgs/abc/integrations",
        ] {
            assert!(match_route(path).is_none(), "{path}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.0.0.2"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("garbage, 203.0.113.9"),
        );
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        for forged in ["garbage", "203.0.113.9:5555, nonsense"] {
            headers.insert("x-forwarded-for", HeaderValue::from_static(forged));
            assert_eq!(
                client_ip(proxy, &headers, &trusted),
                IpAddr::from([0, 0, 0, 0]),
                "{forged}"
            );
        }
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9:5555"),
        );
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::5]:80"),
        );
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
    }
}
