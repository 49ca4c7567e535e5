//! An impaired link between the host and a network namespace, for tests and benchmarks on a kernel without
//! `sch_netem` (this development machine has no kernel modules): two TUN devices, one in the
//! host's namespace and one moved into the viewer's, and this process forwarding IP packets
//! between them the way `tc qdisc add … netem delay D J loss L` does on a link: each packet is
//! lost with probability L, else held for a delay drawn uniformly from [D − J, D + J] (netem's
//! default jitter distribution) and released in order of release time, so jitter reorders
//! packets as netem does. Both directions are impaired independently.
//!
//! Addresses: the host side is [`HOST_IP`], the namespace side [`NS_IP`], and the namespace's
//! default route goes through the link, so everything the namespace sends (to [`HOST_IP`] or to
//! any other host address) crosses it. Needs root (CAP_NET_ADMIN) and `/dev/net/tun`.
use super::netns::sh;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The host end of the link (RFC 5737 documentation range; this machine's eth0 is 192.0.2.2).
pub const HOST_IP: &str = "198.51.100.1";
/// The namespace end.
pub const NS_IP: &str = "198.51.100.2";

/// What the link does to each packet.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub delay: Duration,
    pub jitter: Duration,
    /// Zero: each packet's delay is drawn on its own (netem's default). Otherwise one delay is
    /// drawn for every period and holds for all packets in it, so whole frames arrive early or
    /// late (a Wi-Fi link's delay wanders like that; per-packet jitter mostly evens out over
    /// a frame's packets).
    pub jitter_period: Duration,
    /// Probability in [0, 1] that a packet is lost.
    pub loss: f64,
}

impl std::fmt::Display for Impairment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "delay {} ms ± {} ms (uniform{}), {} % loss, each direction",
            self.delay.as_millis(),
            self.jitter.as_millis(),
            if self.jitter_period.is_zero() {
                String::new()
            } else {
                format!(", redrawn every {} ms", self.jitter_period.as_millis())
            },
            self.loss * 100.0
        )
    }
}

/// Packets seen, lost and delivered in one direction.
#[derive(Default)]
pub struct Counters {
    pub packets: AtomicU64,
    pub lost: AtomicU64,
    pub reordered: AtomicU64,
}

/// A namespace joined to the host by an impaired link; torn down on drop.
pub struct ImpairedNs {
    pub ns: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// [to the namespace, from the namespace]
    pub counters: [Arc<Counters>; 2],
}

/// Create TUN device `name` (no packet-info header) and return its queue.
fn open_tun(name: &str) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    Ok(f)
}

/// Wait until `fd` is readable or `timeout` passes.
fn wait_readable(fd: i32, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec, both outliving the call.
    unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
}

/// One direction: read packets from `from`, write them to `to` after the impairment.
fn forward(
    mut from: File,
    mut to: File,
    imp: Impairment,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    // (release time, arrival order, packet); the heap's smallest release time first.
    let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut last_released = 0u64;
    let mut buf = vec![0u8; 65536];
    let draw = || (rand::random::<f64>() * 2.0 - 1.0) * imp.jitter.as_secs_f64();
    // The delay offset of the current period, when delays are drawn per period.
    let mut offset = draw();
    let mut period_ends = Instant::now() + imp.jitter_period;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            // The peek above just saw an element.
            let Some(Reverse((_, n, pkt))) = held.pop() else {
                break;
            };
            if n < last_released {
                counters.reordered.fetch_add(1, Ordering::Relaxed);
            }
            last_released = last_released.max(n);
            let _ = to.write(&pkt);
        }
        let wait = held
            .peek()
            .map(|Reverse((t, _, _))| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        wait_readable(from.as_raw_fd(), wait);
        loop {
            let n = match from.read(&mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            counters.packets.fetch_add(1, Ordering::Relaxed);
            if rand::random::<f64>() < imp.loss {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let arrived = Instant::now();
            let jitter = if imp.jitter_period.is_zero() {
                draw()
            } else {
                if arrived >= period_ends {
                    offset = draw();
                    period_ends = arrived + imp.jitter_period;
                }
                offset
            };
            let d = imp.delay.as_secs_f64() + jitter;
            let release = arrived + Duration::from_secs_f64(d.max(0.0));
            seq += 1;
            held.push(Reverse((release, seq, buf[..n].to_vec())));
        }
    }
}

impl ImpairedNs {
    /// A new namespace `<tag>` whose only link to the host is impaired by `imp`.
    pub fn new(tag: &str, imp: Impairment) -> ImpairedNs {
        let ns = tag.to_owned();
        let host_dev = format!("{tag}h");
        let ns_dev = format!("{tag}n");
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let host = open_tun(&host_dev).expect("TUN device (needs root and /dev/net/tun)");
        let inner = open_tun(&ns_dev).expect("TUN device");
        sh(&["ip", "link", "set", &ns_dev, "netns", &ns]);
        sh(&[
            "ip",
            "addr",
            "add",
            HOST_IP,
            "peer",
            &format!("{NS_IP}/32"),
            "dev",
            &host_dev,
        ]);
        sh(&["ip", "link", "set", &host_dev, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            NS_IP,
            "peer",
            &format!("{HOST_IP}/32"),
            "dev",
            &ns_dev,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &ns_dev, "up"]);
        sh(&[
            "ip", "-n", &ns, "route", "add", "default", "dev", &ns_dev, "src", NS_IP,
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        let (host2, inner2) = (
            host.try_clone().expect("dup TUN fd"),
            inner.try_clone().expect("dup TUN fd"),
        );
        let threads = vec![
            {
                let (s, c) = (stop.clone(), counters[0].clone());
                std::thread::spawn(move || forward(host, inner, imp, s, c))
            },
            {
                let (s, c) = (stop.clone(), counters[1].clone());
                std::thread::spawn(move || forward(inner2, host2, imp, s, c))
            },
        ];
        ImpairedNs {
            ns,
            stop,
            threads,
            counters,
        }
    }

    /// "N packets, L lost, R reordered" for each direction.
    pub fn report(&self) -> String {
        let d = |c: &Counters| {
            format!(
                "{} packets, {} lost, {} reordered",
                c.packets.load(Ordering::Relaxed),
                c.lost.load(Ordering::Relaxed),
                c.reordered.load(Ordering::Relaxed)
            )
        };
        format!(
            "to the viewer: {}; from the viewer: {}",
            d(&self.counters[0]),
            d(&self.counters[1])
        )
    }
}

impl Drop for ImpairedNs {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a process inside this benchmark's own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
