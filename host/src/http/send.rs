//! Sending one outgoing request of a package: the grant check, the
//! package's concurrency limit, name resolution and the address check, the
//! connection to the very address checked (no second lookup a rebinding
//! name could answer differently), TLS by rustls with the webpki roots,
//! and the response body under the package's size and time limits.
//! Redirects are not followed: the guest sees the 3xx.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::address::may_connect;
use super::metrics::{HttpErrorKind, PackageHttpMetrics};
use super::{OutboundHttp, Target};
use crate::manifest::{HttpScheme, RequestHost};

/// What the hook hands back to wasmtime-wasi-http.
pub(super) type Sent = (Response<WasiBody>, IoFuture);
pub(super) type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// The call the request is made in: its deadline and request id.
#[derive(Clone, Default)]
pub(super) struct CallScope {
    pub(super) deadline: Option<Instant>,
    pub(super) request_id: Option<Arc<str>>,
    /// The call's span and `traceparent`, when it is traced.
    pub(super) trace: Option<crate::telemetry::spans::Outbound>,
}

/// Sends `req` for the package of `out`, recording it in its metrics.
pub(super) async fn send(
    out: Arc<OutboundHttp>,
    req: Request<WasiBody>,
    options: Option<RequestOptions>,
    scope: CallScope,
) -> Result<Sent, Error> {
    let started = Instant::now();
    out.metrics.request();
    let Some(trace) = &scope.trace else {
        return sent(
            &out,
            send_checked(&out, req, options, &scope, started).await,
            started,
        );
    };
    let mut req = req;
    let (span, traceparent) = trace.begin(req.method(), req.uri());
    if let Ok(v) = HeaderValue::from_str(&traceparent) {
        req.headers_mut().insert("traceparent", v);
    }
    if let Some(v) = trace
        .tracestate()
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        req.headers_mut().insert("tracestate", v);
    }
    let r = send_checked(&out, req, options, &scope, started).await;
    trace.end(
        span,
        r.as_ref()
            .map(|(res, _)| res.status().as_u16())
            .map_err(ToString::to_string),
    );
    sent(&out, r, started)
}

/// Records a failed request in the package's metrics.
fn sent(out: &OutboundHttp, r: Result<Sent, Error>, started: Instant) -> Result<Sent, Error> {
    if let Err(e) = &r {
        let kind = kind_of(e);
        out.metrics.error(kind);
        out.metrics.latency(started.elapsed());
        tracing::debug!(package = %out.package, error = %e, ?kind, "outgoing HTTP request failed");
    }
    r
}

async fn send_checked(
    out: &Arc<OutboundHttp>,
    mut req: Request<WasiBody>,
    options: Option<RequestOptions>,
    scope: &CallScope,
    started: Instant,
) -> Result<Sent, Error> {
    let target = out.target(req.uri())?;
    let permit = out.in_flight.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!(
            package = %out.package,
            limit = out.limits.max_concurrent,
            "outgoing HTTP request refused: the package has its most requests in flight \
             (`max_concurrent` in [packages.<name>.http])"
        );
        Error::ConnectionLimitReached
    })?;
    let limits = Limits::new(out, options, scope.deadline, started)?;
    let stream = connect(out, &target, &limits).await?;
    let (mut sender, conn) = tokio::time::timeout(
        limits.connect(),
        hyper::client::conn::http1::handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    let conn = tokio::spawn(conn);
    // The origin server gets the path only; the authority went into `Host`.
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
    if let Some(id) = scope
        .request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        req.headers_mut().insert("x-request-id", id);
    }
    let res = tokio::time::timeout(limits.first_byte(), sender.send_request(req))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let length = res
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length.filter(|n| *n > out.limits.max_response_size) {
        conn.abort();
        return Err(Error::HttpResponseBodySize(Some(length)));
    }
    let guarded = res.map(|incoming| {
        GuardedBody {
            incoming,
            left: out.limits.max_response_size,
            between: limits.between_bytes,
            idle: Box::pin(tokio::time::sleep(limits.between_bytes)),
            deadline: limits
                .deadline
                .map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            done: Done {
                metrics: out.metrics.clone(),
                started,
                finished: false,
                _permit: permit,
            },
        }
        .boxed_unsync()
    });
    let io: IoFuture = Box::new(async move {
        match conn.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::from(e)),
            // Aborted with its response: nothing left to report.
            Err(_) => Ok(()),
        }
    });
    Ok((guarded, io))
}

impl OutboundHttp {
    /// The grant that lets a request to `uri` through, with its host and port.
    fn target(&self, uri: &Uri) -> Result<Target, Error> {
        let denied = |why: &str| {
            tracing::warn!(package = %self.package, %uri, "outgoing HTTP request denied: {why}");
            Error::HttpRequestDenied
        };
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => HttpScheme::Https,
            Some(s) if *s == Scheme::HTTP => HttpScheme::Http,
            _ => return Err(denied("only http and https are granted")),
        };
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        if authority.as_str().contains('@') {
            return Err(denied("a user in the URL is not allowed"));
        }
        let host = RequestHost::parse(authority.host())
            .ok_or_else(|| denied("the host is neither a DNS name nor an IP address"))?;
        let port = authority
            .port_u16()
            .unwrap_or_else(|| scheme.default_port());
        let grant = self
            .grants
            .iter()
            .find(|g| g.allows(scheme, &host, port))
            .ok_or_else(|| denied("no entry of `grants.http` allows this scheme, host and port"))?
            .clone();
        Ok(Target {
            grant,
            scheme,
            host,
            port,
        })
    }
}

/// The time limits of one request: the package's, lowered by the guest's
/// request options, all within the call's deadline.
struct Limits {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
    deadline: Option<Instant>,
}

impl Limits {
    fn new(
        out: &OutboundHttp,
        options: Option<RequestOptions>,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Result<Limits, Error> {
        if deadline.is_some_and(|d| d <= now) {
            return Err(Error::ConnectionTimeout);
        }
        let lower = |ours: Duration, theirs: Option<Duration>| match theirs {
            Some(t) if t < ours => t.max(Duration::from_millis(1)),
            _ => ours,
        };
        let options = options.unwrap_or_default();
        let l = &out.limits;
        Ok(Limits {
            connect: lower(l.connect_timeout, options.connect_timeout),
            first_byte: lower(l.first_byte_timeout, options.first_byte_timeout),
            between_bytes: lower(l.between_bytes_timeout, options.between_bytes_timeout),
            deadline,
        })
    }

    fn left(&self, limit: Duration) -> Duration {
        match self.deadline {
            Some(d) => limit.min(d.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }

    fn connect(&self) -> Duration {
        self.left(self.connect)
    }

    fn first_byte(&self) -> Duration {
        self.left(self.first_byte)
    }
}

/// Resolves the target's name, keeps the addresses its grant opens, and
/// connects to the first that answers (TLS on top for https).
async fn connect(
    out: &OutboundHttp,
    target: &Target,
    limits: &Limits,
) -> Result<Box<dyn Stream>, Error> {
    let budget = limits.connect();
    let until = tokio::time::Instant::now() + budget;
    let addrs: Vec<SocketAddr> = match &target.host {
        RequestHost::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        RequestHost::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), target.port));
            match tokio::time::timeout_at(until, lookup).await {
                Err(_) => return Err(Error::DnsTimeout),
                Ok(Err(e)) => {
                    return Err(Error::DnsError {
                        rcode: Some(e.to_string()),
                        info_code: None,
                    });
                }
                Ok(Ok(addrs)) => addrs.collect(),
            }
        }
    };
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .filter(|a| may_connect(&target.grant, a.ip()))
        .copied()
        .collect();
    if allowed.is_empty() {
        let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
        tracing::warn!(
            package = %out.package,
            host = ?target.host,
            addresses = ?ips,
            "outgoing HTTP request denied: the host resolves only to addresses its grant does \
             not name (loopback, private and link-local ones must be named by IP, or as \
             `localhost` for loopback)"
        );
        return Err(Error::HttpRequestDenied);
    }
    let mut last = Error::ConnectionRefused;
    for addr in allowed {
        match tokio::time::timeout_at(until, TcpStream::connect(addr)).await {
            Err(_) => return Err(Error::ConnectionTimeout),
            Ok(Err(e)) => last = Error::Connect(e),
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return match target.scheme {
                    HttpScheme::Http => Ok(Box::new(tcp)),
                    HttpScheme::Https => tls(tcp, &target.host, until).await,
                };
            }
        }
    }
    Err(last)
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

static TLS: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => Arc::new(c),
        // The ring provider supports the default versions; kept total anyway.
        Err(_) => Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
});

async fn tls(
    tcp: TcpStream,
    host: &RequestHost,
    until: tokio::time::Instant,
) -> Result<Box<dyn Stream>, Error> {
    use rustls::pki_types::ServerName;
    let name = match host {
        RequestHost::Ip(ip) => ServerName::from(*ip),
        RequestHost::Name(n) => ServerName::try_from(n.clone())?,
    };
    let connector = tokio_rustls::TlsConnector::from(TLS.clone());
    match tokio::time::timeout_at(until, connector.connect(name, tcp)).await {
        Err(_) => Err(Error::ConnectionTimeout),
        Ok(Err(e)) => Err(Error::Tls(e)),
        Ok(Ok(s)) => Ok(Box::new(s)),
    }
}

/// Records the end of a request once: its latency, and frees its place
/// among the package's requests in flight.
struct Done {
    metrics: PackageHttpMetrics,
    started: Instant,
    finished: bool,
    _permit: OwnedSemaphorePermit,
}

impl Done {
    fn finish(&mut self, error: Option<HttpErrorKind>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if let Some(kind) = error {
            self.metrics.error(kind);
        }
        self.metrics.latency(self.started.elapsed());
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// A response body held to the package's size limit, its between-bytes
/// timeout and the call's deadline, counted into its metrics.
struct GuardedBody {
    incoming: hyper::body::Incoming,
    left: u64,
    between: Duration,
    idle: Pin<Box<Sleep>>,
    deadline: Option<Pin<Box<Sleep>>>,
    done: Done,
}

impl GuardedBody {
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.done.finish(Some(kind_of(&e)));
        self.left = 0;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.done.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(Error::from(e)),
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > this.left {
                    return this.fail(Error::HttpResponseBodySize(None));
                }
                this.left -= n;
                this.done.metrics.bytes(n);
                let next = tokio::time::Instant::now() + this.between;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready())
                {
                    return this.fail(Error::HttpResponseTimeout);
                }
                ready!(this.idle.as_mut().poll(cx));
                this.fail(Error::ConnectionReadTimeout)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.finished || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// How the metrics count an error.
fn kind_of(e: &Error) -> HttpErrorKind {
    match e {
        Error::HttpRequestDenied | Error::DestinationIpProhibited => HttpErrorKind::Denied,
        Error::ConnectionLimitReached => HttpErrorKind::Limit,
        Error::ConnectionTimeout
        | Error::ConnectionReadTimeout
        | Error::ConnectionWriteTimeout
        | Error::HttpResponseTimeout
        | Error::DnsTimeout => HttpErrorKind::Timeout,
        Error::HttpResponseBodySize(_) => HttpErrorKind::TooLarge,
        Error::Connect(_)
        | Error::ConnectionRefused
        | Error::DnsError { .. }
        | Error::DestinationNotFound
        | Error::DestinationUnavailable => HttpErrorKind::Connect,
        Error::Tls(_) | Error::InvalidDnsNameError(_) | Error::TlsCertificateError => {
            HttpErrorKind::Tls
        }
        _ => HttpErrorKind::Protocol,
    }
}
