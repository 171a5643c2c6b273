//! The HTTP side of serve: hyper's HTTP/1.1 server on the tool's tokio runtime, optionally
//! behind TLS and basic auth (`--web.config.file`). Each connection is a task; requests that
//! pass authentication go to the serve loop over a channel (the loop owns the collectors, the
//! BPF maps) and are answered through a oneshot. The CPU profile (`cpu_profile`) takes
//! seconds, so it is answered on the connection's own task instead.
//!
//! Limits are built so that nobody can use them against the scraper: a connection must deliver
//! its first request head within [`HEAD_DEADLINE`] of accept (TLS handshake included), idle
//! keep-alive connections close after [`IDLE_TIMEOUT`], and above [`MAX_CONNECTIONS`] the
//! oldest idle connection is closed to make room: a new connection is never refused.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc, oneshot},
};

use super::{
    cpu_profile,
    web_config::{Source, WebConfig},
};
use crate::metrics::Scrape;

/// A request that passed the HTTP layer: what the serve loop needs to answer it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub accept: String,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(body.into()),
        }
    }
}

pub type Exchange = (Request, oneshot::Sender<Response>);

/// Open connections above which the oldest idle one is closed for each new one.
pub const MAX_CONNECTIONS: usize = 256;
/// From accept to a complete first request head (TLS handshake included): slowloris-safe.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// Keep-alive connections waiting for their next request close after this: longer than the
/// usual scrape intervals (15 s, 30 s, 60 s), so a scraper keeps its connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// hyper's read buffer: bounds a request head (larger ones get 431).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Why a connection or request was turned away: the `reason` of `tracer_http_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rejected {
    /// The oldest idle connection, closed to make room for a new one.
    Shed,
    /// No complete request head within HEAD_DEADLINE of accept.
    HeadTimeout,
    /// A keep-alive connection idle for IDLE_TIMEOUT (or a later head that took as long).
    IdleTimeout,
    /// Not HTTP/1.x, or a head larger than MAX_HEAD_BYTES.
    BadRequest,
    /// The TLS handshake failed (plain HTTP to a TLS port, an unknown client certificate...).
    Tls,
    /// Basic auth missing or wrong: 401.
    Unauthorized,
}

impl Rejected {
    const ALL: [Rejected; 6] = [
        Rejected::Shed,
        Rejected::HeadTimeout,
        Rejected::IdleTimeout,
        Rejected::BadRequest,
        Rejected::Tls,
        Rejected::Unauthorized,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejected::Shed => "shed_oldest_idle",
            Rejected::HeadTimeout => "head_timeout",
            Rejected::IdleTimeout => "idle_timeout",
            Rejected::BadRequest => "bad_request",
            Rejected::Tls => "tls_handshake",
            Rejected::Unauthorized => "unauthorized",
        }
    }
}

/// One open connection, as the accept loop sees it when it must shed one.
struct Slot {
    /// Since when it waits for a request (accept, or its last response); None while serving.
    idle_since: Mutex<Option<Instant>>,
    served: AtomicU64,
    shed: Notify,
}

impl Slot {
    fn set_idle(&self, since: Option<Instant>) {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = since;
    }

    fn idle_since(&self) -> Option<Instant> {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shared between the accept loop, the connections and the scrape (which reports it).
#[derive(Default)]
pub struct HttpStats {
    open: Mutex<BTreeMap<u64, Arc<Slot>>>,
    rejected: Mutex<BTreeMap<Rejected, u64>>,
}

impl HttpStats {
    fn reject(&self, why: Rejected) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    fn open(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `tracer_http_connections` and `tracer_http_rejected_total` for a scrape.
    pub fn report(&self, s: &mut Scrape) {
        s.gauge(
            "tracer_http_connections",
            "HTTP connections open to the exporter.",
            vec![],
            self.open().len() as u64,
        );
        let rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        for why in Rejected::ALL {
            s.counter(
                "tracer_http_rejected_total",
                "Connections closed or requests refused by the HTTP layer, by reason.",
                vec![("reason", why.label().to_string())],
                rejected.get(&why).copied().unwrap_or(0),
            );
        }
    }
}

/// Accepts connections on `listener` until the receiving side of `requests` is gone.
pub fn spawn(
    listener: TcpListener,
    requests: mpsc::Sender<Exchange>,
    web: Option<Arc<Source>>,
) -> Arc<HttpStats> {
    raise_descriptor_limit();
    let stats = Arc::new(HttpStats::default());
    let shared = stats.clone();
    tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if requests.is_closed() {
                return;
            }
            let config = match &web {
                Some(source) => source.for_connection(),
                None => Arc::new(WebConfig::plain()),
            };
            let slot = Arc::new(Slot {
                idle_since: Mutex::new(Some(Instant::now())),
                served: AtomicU64::new(0),
                shed: Notify::new(),
            });
            next_id += 1;
            let id = next_id;
            {
                let mut open = shared.open();
                if open.len() >= MAX_CONNECTIONS {
                    shed_oldest_idle(&mut open);
                }
                open.insert(id, slot.clone());
            }
            let (requests, shared) = (requests.clone(), shared.clone());
            tokio::spawn(async move {
                connection(stream, config, slot, requests, &shared).await;
                shared.open().remove(&id);
            });
        }
    });
    stats
}

/// The soft descriptor limit up to the hard one (1024 is the usual soft default): a burst of
/// connections is accepted and shed rather than left in the listen backlog by EMFILE.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and fill the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Closes the connection that has waited longest for a request. One that is being answered
/// is never chosen; when all are, the new one is still accepted (answers are quick).
fn shed_oldest_idle(open: &mut BTreeMap<u64, Arc<Slot>>) {
    let oldest = open
        .iter()
        .filter_map(|(id, slot)| slot.idle_since().map(|t| (t, *id)))
        .min();
    if let Some((_, id)) = oldest
        && let Some(slot) = open.remove(&id)
    {
        slot.shed.notify_one();
    }
}

async fn connection(
    stream: TcpStream,
    config: Arc<WebConfig>,
    slot: Arc<Slot>,
    requests: mpsc::Sender<Exchange>,
    stats: &Arc<HttpStats>,
) {
    let _ = stream.set_nodelay(true);
    let accepted = Instant::now();
    let work = async {
        match &config.tls {
            None => serve_http(stream, &config, &slot, &requests, stats).await,
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => serve_http(tls, &config, &slot, &requests, stats).await,
                Err(_) => stats.reject(Rejected::Tls),
            },
        }
    };
    // The first head's deadline; later heads are hyper's (IDLE_TIMEOUT).
    let first_head_late = async {
        tokio::time::sleep_until((accepted + HEAD_DEADLINE).into()).await;
        if slot.served.load(Ordering::Relaxed) == 0 && slot.idle_since().is_some() {
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = work => {}
        () = first_head_late => stats.reject(Rejected::HeadTimeout),
        () = slot.shed.notified() => stats.reject(Rejected::Shed),
    }
}

async fn serve_http<I>(
    io: I,
    config: &Arc<WebConfig>,
    slot: &Arc<Slot>,
    requests: &mpsc::Sender<Exchange>,
    stats: &Arc<HttpStats>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(|request: hyper::Request<Incoming>| {
        let (config, slot, requests, stats) = (
            config.clone(),
            slot.clone(),
            requests.clone(),
            stats.clone(),
        );
        async move {
            slot.set_idle(None);
            let response = answer(request, &config, &requests, &stats).await;
            slot.served.fetch_add(1, Ordering::Relaxed);
            slot.set_idle(Some(Instant::now()));
            Ok::<_, Infallible>(response)
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .pipeline_flush(true)
        // A client may shut its side down once the request is sent (printf | nc): answer it.
        .half_close(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        if e.is_timeout() {
            stats.reject(if slot.served.load(Ordering::Relaxed) == 0 {
                Rejected::HeadTimeout
            } else {
                Rejected::IdleTimeout
            });
        } else if e.is_parse() || e.is_parse_too_large() {
            stats.reject(Rejected::BadRequest);
        }
    }
}

async fn answer(
    request: hyper::Request<Incoming>,
    config: &Arc<WebConfig>,
    requests: &mpsc::Sender<Exchange>,
    stats: &HttpStats,
) -> hyper::Response<Full<Bytes>> {
    if config.wants_auth() && !authorized(&request, config).await {
        stats.reject(Rejected::Unauthorized);
        let mut response = to_hyper(Response::text(401, "Unauthorized\n"));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic"),
        );
        return response;
    }
    let accept = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    // A profile takes seconds: answered here, on its own task, not by the serve loop that
    // answers the scrapes.
    if request.uri().path() == cpu_profile::PATH {
        let method = request.method().as_str().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let mut response = to_hyper(cpu_profile::answer(&method, &query).await);
        if response.status() == 405 {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        }
        return response;
    }
    let parsed = Request {
        method: request.method().as_str().to_string(),
        path: request.uri().path().to_string(),
        accept,
    };
    let (tx, rx) = oneshot::channel();
    let response = if requests.send((parsed, tx)).await.is_err() {
        Response::text(503, "shutting down\n")
    } else {
        rx.await
            .unwrap_or_else(|_| Response::text(503, "shutting down\n"))
    };
    to_hyper(response)
}

async fn authorized(request: &hyper::Request<Incoming>, config: &Arc<WebConfig>) -> bool {
    let Some((user, password)) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        })
    else {
        return false;
    };
    // bcrypt takes milliseconds by design: off the runtime thread that serves everyone.
    let config = config.clone();
    tokio::task::spawn_blocking(move || config.check(&user, &password))
        .await
        .unwrap_or(false)
}

fn to_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder()
        .status(response.status)
        .header(header::CONTENT_TYPE, response.content_type);
    if response.status == 405 {
        builder = builder.header(header::ALLOW, "GET, HEAD");
    }
    builder
        .body(Full::new(response.body))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(idle_since: Option<Instant>) -> Arc<Slot> {
        Arc::new(Slot {
            idle_since: Mutex::new(idle_since),
            served: AtomicU64::new(0),
            shed: Notify::new(),
        })
    }

    #[test]
    fn sheds_the_oldest_idle_never_a_busy_one() {
        let t0 = Instant::now();
        let mut open = BTreeMap::new();
        open.insert(1, slot(None));
        open.insert(2, slot(Some(t0 + Duration::from_secs(5))));
        open.insert(3, slot(Some(t0)));
        shed_oldest_idle(&mut open);
        assert_eq!(open.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        shed_oldest_idle(&mut open);
        assert_eq!(open.keys().copied().collect::<Vec<_>>(), vec![1]);
        shed_oldest_idle(&mut open);
        assert_eq!(open.keys().copied().collect::<Vec<_>>(), vec![1]);
    }
}
