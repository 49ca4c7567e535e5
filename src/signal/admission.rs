//! Which TCP connections the signaling server takes at all, before it reads a byte of HTTP: a
//! cap on open connections in total and one per client address. A connection over either cap
//! is closed as soon as it is accepted, so the process never runs out of file descriptors for
//! its camera, its viewers' WebRTC sockets or its own joins, and one address cannot take every
//! place. The caps count sockets, not requests: a kept-alive page load and a WebSocket each hold
//! one place until they close.
//!
//! [`AdmissionAcceptor`] applies the caps inside `axum_server`'s accept step (beneath TLS), and
//! each admitted stream carries its place with it: dropping the stream frees it.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_addr: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_addr: usize,
    open: Mutex<Open>,
    refused: AtomicU64,
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
}

impl Drop for Place {
    fn drop(&mut self) {
        // A poisoned lock only means another thread panicked mid-update; the counts are
        // still the best there is.
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.per_addr.remove(&self.addr);
            }
        }
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
            }),
        }
    }

    /// Take a place for a connection from `addr`, or say why not.
    pub fn admit(&self, addr: IpAddr) -> Result<Place, Refused> {
        let addr = addr.to_canonical();
        let mut open = self.inner.open.lock().unwrap_or_else(|p| p.into_inner());
        let refused = if open.total >= self.inner.max_total {
            Some(Refused::Total(self.inner.max_total))
        } else if open.per_addr.get(&addr).copied().unwrap_or(0) >= self.inner.max_per_addr {
            Some(Refused::PerAddress {
                addr,
                max: self.inner.max_per_addr,
            })
        } else {
            None
        };
        if let Some(r) = refused {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        open.total += 1;
        *open.per_addr.entry(addr).or_insert(0) += 1;
        Ok(Place {
            inner: self.inner.clone(),
            addr,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
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
}

impl AdmissionAcceptor {
    /// Admit under `admission`'s caps; the first byte must come within `first_byte`.
    pub fn new(admission: Admission, first_byte: std::time::Duration) -> Self {
        Self {
            admission,
            first_byte,
        }
    }
}

impl<S> axum_server::accept::Accept<TcpStream, S> for AdmissionAcceptor {
    type Stream = AdmittedStream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(AdmittedStream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream.peer_addr().and_then(|peer| {
            let place = self.admission.admit(peer.ip()).map_err(|why| {
                tracing::debug!(%peer, %why, "connection refused");
                io::Error::other(why)
            })?;
            let _ = stream.set_nodelay(true);
            Ok(AdmittedStream {
                stream,
                _place: place,
                first_byte: Some(Box::pin(tokio::time::sleep(self.first_byte))),
            })
        });
        std::future::ready(admitted.map(|s| (s, service)))
    }
}

/// A TCP stream holding its place under the caps.
#[derive(Debug)]
pub struct AdmittedStream {
    stream: TcpStream,
    _place: Place,
    /// Until the first byte arrives: when it fires first, reads fail and the connection closes.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for AdmittedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
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

    #[test]
    fn caps_per_address_and_in_total() {
        let a = Admission::new(3, 2);
        let p1 = a.admit(ip("10.0.0.1")).expect("first");
        let _p2 = a.admit(ip("10.0.0.1")).expect("second");
        assert_eq!(
            a.admit(ip("10.0.0.1")).unwrap_err(),
            Refused::PerAddress {
                addr: ip("10.0.0.1"),
                max: 2
            }
        );
        let _p3 = a.admit(ip("10.0.0.2")).expect("another address");
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refused::Total(3));
        assert_eq!(a.open(), 3);
        assert_eq!(a.refused(), 2);
        drop(p1);
        assert_eq!(a.open(), 2);
        a.admit(ip("10.0.0.1"))
            .expect("a freed place is taken again");
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let a = Admission::new(10, 1);
        let _p = a.admit(ip("192.0.2.7")).expect("first");
        assert!(a.admit(ip("::ffff:192.0.2.7")).is_err());
    }
}
