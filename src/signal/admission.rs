//! Which TCP connections the signaling server takes at all, before it reads a byte of HTTP: a
//! cap on open connections in total and one per client address, so the process never runs out
//! of file descriptors for its camera, its viewers' WebRTC sockets or its own joins, and one
//! address cannot take every place. A connection over the per-address cap is closed as soon as
//! it is accepted. At the total cap a newcomer takes the place of the oldest connection that
//! has not [settled](Settle) (joined a room), from the address holding the most unsettled ones:
//! whoever floods the server with idle sockets loses their own first, and a viewer arriving
//! from elsewhere still gets in. The caps count sockets, not requests: a kept-alive page load
//! and a WebSocket each hold one place until they close.
//!
//! [`AdmissionAcceptor`] applies the caps inside `axum_server`'s accept step (beneath TLS), and
//! each admitted stream carries its place with it: dropping the stream frees it. Every request
//! on the connection carries its [`Settle`] handle as an extension.

use futures_util::task::AtomicWaker;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_layer::Layer;

/// Why a connection was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The server already holds its maximum of open connections.
    #[error("the server holds its maximum of {0} open connections")]
    Total(usize),
    /// This address already holds its maximum of open connections.
    #[error("{addr} holds its maximum of {max} open connections")]
    PerAddress {
        /// The client address.
        addr: IpAddr,
        /// The cap.
        max: usize,
    },
}

/// Connections over the total cap may be open at once while the ones they evicted close
/// (an evicted connection holds its descriptor until its task sees the eviction, within
/// milliseconds).
const EVICTION_SLACK: usize = 32;

/// Tells an admitted connection that it was evicted, and wakes the task that reads it.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Eviction {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// One address's places.
#[derive(Debug, Default)]
struct AddrPlaces {
    open: usize,
    /// The places not yet settled, by admission order (oldest first).
    unsettled: BTreeMap<u64, Arc<Eviction>>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_addr: HashMap<IpAddr, AddrPlaces>,
    /// (unsettled places, address) for every address with some: the last holds the most.
    by_unsettled: BTreeSet<(usize, IpAddr)>,
    next_id: u64,
}

impl Open {
    /// Change `addr`'s unsettled places with `f`, keeping `by_unsettled` in step.
    fn with_unsettled<R>(
        &mut self,
        addr: IpAddr,
        f: impl FnOnce(&mut BTreeMap<u64, Arc<Eviction>>) -> R,
    ) -> Option<R> {
        let places = self.per_addr.get_mut(&addr)?;
        let before = places.unsettled.len();
        let r = f(&mut places.unsettled);
        let after = places.unsettled.len();
        if before != after {
            self.by_unsettled.remove(&(before, addr));
            if after > 0 {
                self.by_unsettled.insert((after, addr));
            }
        }
        Some(r)
    }

    /// Evict the oldest unsettled place of the address holding the most unsettled places;
    /// `false` when every open place is settled.
    fn evict_one(&mut self) -> bool {
        let Some(&(_, addr)) = self.by_unsettled.last() else {
            return false;
        };
        let victim = self.with_unsettled(addr, |u| u.pop_first()).flatten();
        match victim {
            Some((_, eviction)) => {
                eviction.evict();
                true
            }
            None => false,
        }
    }
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_addr: usize,
    open: Mutex<Open>,
    refused: AtomicU64,
    evicted: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // A poisoned lock only means another thread panicked mid-update; the counts are
        // still the best there is.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The connection caps and the places taken, shared by every listener of one server.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

/// One admitted connection's place; freed on drop.
#[derive(Debug)]
pub struct Place {
    inner: Arc<Inner>,
    addr: IpAddr,
    id: u64,
    eviction: Arc<Eviction>,
}

impl Place {
    /// A handle that settles this place (see [`Settle`]).
    pub fn settler(&self) -> Settle {
        Settle {
            inner: self.inner.clone(),
            addr: self.addr,
            id: self.id,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.inner.lock();
        open.total = open.total.saturating_sub(1);
        let id = self.id;
        open.with_unsettled(self.addr, |u| u.remove(&id));
        if let Some(p) = open.per_addr.get_mut(&self.addr) {
            p.open = p.open.saturating_sub(1);
            if p.open == 0 {
                open.per_addr.remove(&self.addr);
            }
        }
    }
}

/// Marks a connection as one the server keeps when it is full: a WebSocket that joined a room.
/// Until then a connection may be evicted to make room for a new one.
#[derive(Debug, Clone)]
pub struct Settle {
    inner: Arc<Inner>,
    addr: IpAddr,
    id: u64,
}

impl Settle {
    /// The connection is settled: never evicted from now on.
    pub fn settle(&self) {
        let id = self.id;
        self.inner
            .lock()
            .with_unsettled(self.addr, |u| u.remove(&id));
    }
}

impl Admission {
    /// At most `max_total` open connections, `max_per_addr` of them from one address.
    pub fn new(max_total: usize, max_per_addr: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total: max_total.max(1),
                max_per_addr: max_per_addr.max(1),
                open: Mutex::new(Open::default()),
                refused: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
            }),
        }
    }

    /// Take a place for a connection from `addr`, or say why not. When the server is full, the
    /// newcomer takes the place of the oldest unsettled connection (one that has not joined a
    /// room: a silent socket, headers still dripping, a page load kept alive) of the address
    /// holding the most unsettled ones, so that whoever opens many connections loses their own
    /// first and a viewer arriving from elsewhere still gets in. It is refused only when every
    /// place is settled.
    pub fn admit(&self, addr: IpAddr) -> Result<Place, Refused> {
        let addr = addr.to_canonical();
        let mut open = self.inner.lock();
        let mine = open.per_addr.get(&addr).map_or(0, |p| p.open);
        let refused = if mine >= self.inner.max_per_addr {
            Some(Refused::PerAddress {
                addr,
                max: self.inner.max_per_addr,
            })
        } else if open.total >= self.inner.max_total {
            if open.total < self.inner.max_total + EVICTION_SLACK && open.evict_one() {
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
                None
            } else {
                Some(Refused::Total(self.inner.max_total))
            }
        } else {
            None
        };
        if let Some(r) = refused {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        open.total += 1;
        let id = open.next_id;
        open.next_id += 1;
        let eviction = Arc::new(Eviction::default());
        open.per_addr.entry(addr).or_default().open += 1;
        open.with_unsettled(addr, |u| u.insert(id, eviction.clone()));
        Ok(Place {
            inner: self.inner.clone(),
            addr,
            id,
            eviction,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().total
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Unsettled connections closed to make room for new ones since start.
    pub fn evicted(&self) -> u64 {
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// The caps: (total, per address).
    pub fn caps(&self) -> (usize, usize) {
        (self.inner.max_total, self.inner.max_per_addr)
    }
}

/// The default cap on open connections: three quarters of the file descriptors this process
/// may open, leaving the rest for the camera, its viewers' WebRTC sockets and the pipeline.
pub fn default_max_connections() -> usize {
    let mut lim = nofile_limit();
    if lim == 0 {
        lim = 1024;
    }
    (lim / 4 * 3).clamp(16, 100_000)
}

/// The soft RLIMIT_NOFILE, raised first (once per process) to the hard limit: systemd's
/// default soft limit is 1024 while the hard limit is usually far higher. 0 when unreadable.
pub fn nofile_limit() -> usize {
    use std::sync::OnceLock;
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write one rlimit struct that outlives the call.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return 0;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    })
}

/// An `axum_server` acceptor that admits a TCP connection only within the caps, closes it when
/// its first byte has not come within `first_byte` (a silent socket: hyper's header timeout
/// starts only once the HTTP version has been sniffed from the first bytes), and sets
/// `TCP_NODELAY` (signaling messages are small and go out at once).
#[derive(Debug, Clone)]
pub struct AdmissionAcceptor {
    admission: Admission,
    first_byte: std::time::Duration,
    tls: bool,
}

/// What every request of an admitted connection carries as an extension.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// Settles the connection's place when it joins a room.
    pub settle: Settle,
    /// The connection is encrypted (the acceptor sits under a TLS one).
    pub tls: bool,
}

impl AdmissionAcceptor {
    /// Admit under `admission`'s caps; the first byte must come within `first_byte`.
    pub fn new(admission: Admission, first_byte: std::time::Duration) -> Self {
        Self {
            admission,
            first_byte,
            tls: false,
        }
    }

    /// For connections a TLS acceptor around this one encrypts.
    pub fn under_tls(self) -> Self {
        Self { tls: true, ..self }
    }
}

impl<S> axum_server::accept::Accept<TcpStream, S> for AdmissionAcceptor {
    type Stream = AdmittedStream;
    /// Every request of the connection carries its [`Admitted`] as an extension.
    type Service = axum::middleware::AddExtension<S, Admitted>;
    type Future = std::future::Ready<io::Result<(AdmittedStream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream.peer_addr().and_then(|peer| {
            let place = self.admission.admit(peer.ip()).map_err(|why| {
                tracing::debug!(%peer, %why, "connection refused");
                io::Error::other(why)
            })?;
            let _ = stream.set_nodelay(true);
            let admitted = Admitted {
                settle: place.settler(),
                tls: self.tls,
            };
            let stream = AdmittedStream {
                stream,
                eviction: place.eviction.clone(),
                _place: place,
                first_byte: Some(Box::pin(tokio::time::sleep(self.first_byte))),
            };
            Ok((stream, axum::Extension(admitted).layer(service)))
        });
        std::future::ready(admitted)
    }
}

/// A TCP stream holding its place under the caps.
#[derive(Debug)]
pub struct AdmittedStream {
    stream: TcpStream,
    eviction: Arc<Eviction>,
    _place: Place,
    /// Until the first byte arrives: when it fires first, reads fail and the connection closes.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AdmittedStream {
    fn evicted(&self) -> Option<io::Error> {
        self.eviction.evicted.load(Ordering::Acquire).then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted: the server was full and this connection had not joined a room",
            )
        })
    }
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.eviction.waker.register(cx.waker());
        if let Some(e) = this.evicted() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = &mut this.first_byte {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() == before => {} // EOF
                Poll::Ready(_) => this.first_byte = None,
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request within the header timeout",
                        )));
                    }
                }
            }
        }
        read
    }
}

impl AsyncWrite for AdmittedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.evicted() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.evicted() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn evicted(p: &Place) -> bool {
        p.eviction.evicted.load(Ordering::Acquire)
    }

    #[test]
    fn caps_per_address_and_in_total() {
        let a = Admission::new(3, 2);
        let p1 = a.admit(ip("10.0.0.1")).expect("first");
        let p2 = a.admit(ip("10.0.0.1")).expect("second");
        assert_eq!(
            a.admit(ip("10.0.0.1")).unwrap_err(),
            Refused::PerAddress {
                addr: ip("10.0.0.1"),
                max: 2
            }
        );
        let p3 = a.admit(ip("10.0.0.2")).expect("another address");
        // Full, and every place settled: a newcomer is refused.
        for p in [&p1, &p2, &p3] {
            p.settler().settle();
        }
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refused::Total(3));
        assert_eq!(a.open(), 3);
        assert_eq!(a.refused(), 2);
        drop(p1);
        assert_eq!(a.open(), 2);
        a.admit(ip("10.0.0.1"))
            .expect("a freed place is taken again");
    }

    #[test]
    fn a_full_server_evicts_the_oldest_unsettled_of_the_busiest_address() {
        let a = Admission::new(5, 10);
        let viewer = a.admit(ip("192.0.2.1")).expect("a viewer connecting");
        let joined = a.admit(ip("198.51.100.9")).expect("a camera");
        joined.settler().settle();
        let flood: Vec<Place> = (0..3)
            .map(|_| a.admit(ip("203.0.113.66")).expect("attacker"))
            .collect();
        // Full: the next newcomer (from anywhere) takes the attacker's oldest place, then the
        // next oldest; the viewer (one unsettled place) and the joined camera stay.
        let _newcomer = a.admit(ip("192.0.2.2")).expect("admitted by eviction");
        assert!(evicted(&flood[0]) && !evicted(&flood[1]) && !evicted(&flood[2]));
        assert!(!evicted(&viewer) && !evicted(&joined));
        let _again = a.admit(ip("203.0.113.66")).expect("attacker again");
        assert!(evicted(&flood[1]), "its own oldest place went");
        assert_eq!(a.evicted(), 2);
        assert_eq!(a.refused(), 0);
        // Evicted places count until their connections close.
        assert_eq!(a.open(), 7);
        drop(flood);
        assert_eq!(a.open(), 4);
        assert!(!evicted(&viewer) && !evicted(&joined));
    }

    #[test]
    fn eviction_is_bounded_while_evicted_connections_close() {
        let a = Admission::new(2, 1000);
        let _held: Vec<Place> = (0..2 + EVICTION_SLACK)
            .map(|_| a.admit(ip("203.0.113.66")).expect("admitted"))
            .collect();
        // None of the evicted ones has closed yet: no more room.
        assert_eq!(a.admit(ip("192.0.2.1")).unwrap_err(), Refused::Total(2));
        assert_eq!(a.evicted(), EVICTION_SLACK as u64);
    }

    #[tokio::test]
    async fn an_evicted_connection_stops_reading_and_writing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("local address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let a = Admission::new(1, 10);
        let acceptor = AdmissionAcceptor::new(a.clone(), std::time::Duration::from_secs(60));
        let (mut stream, _svc) = axum_server::accept::Accept::accept(&acceptor, server, ())
            .await
            .expect("admitted");
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let r = stream.read(&mut buf).await;
            (
                r.map_err(|e| e.kind()),
                stream.write_all(b"x").await.is_err(),
            )
        });
        tokio::task::yield_now().await;
        // Another connection needs the one place: the idle one is woken and fails.
        let _newcomer = a.admit(ip("192.0.2.1")).expect("admitted by eviction");
        let (read, write_failed) = tokio::time::timeout(std::time::Duration::from_secs(5), reading)
            .await
            .expect("the evicted reader was woken")
            .expect("reader task");
        assert_eq!(read.unwrap_err(), io::ErrorKind::ConnectionAborted);
        assert!(write_failed);
        drop(client);
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let a = Admission::new(10, 1);
        let _p = a.admit(ip("192.0.2.7")).expect("first");
        assert!(a.admit(ip("::ffff:192.0.2.7")).is_err());
    }
}
