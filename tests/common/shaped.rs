//! A rate-limited link between the host and a network namespace, the way a camera's uplink or a
//! viewer's 4G link limits it: a veth pair whose host end sends through `tbf` (a token bucket with
//! a shallow queue: packets beyond it are dropped, as a router's are). The rate can change during
//! a test. Needs root (CAP_NET_ADMIN) and the `sch_tbf` qdisc.
#![allow(dead_code)]

use super::Campeer;
use super::netns::sh;

/// The bearer token [`camera_on_link`] opens `/metrics` with: tests reach the camera through the
/// link's address, not loopback.
pub const METRICS_TOKEN: &str = "shaped-link";

/// `campeer run` on the test pattern and tone, 1280x720@30 at 2,500 kbit/s, listening and binding
/// WebRTC on the host end of the link (webrtc-rs offers no host candidate on a veth made after
/// the fact with its default bind); `extra` overrides come last and win. Returns it with its
/// room URL.
pub fn camera_on_link(extra: &[(&str, &str)]) -> (Campeer, String) {
    let bind = format!("[\"{HOST_IP}:0\"]");
    let mut env = vec![
        ("CAMPEER__VIDEO__WIDTH", "1280"),
        ("CAMPEER__VIDEO__HEIGHT", "720"),
        ("CAMPEER__VIDEO__FRAMERATE", "30"),
        ("CAMPEER__VIDEO__BITRATE_KBPS", "2500"),
        ("CAMPEER__CAMERA__RTC_BIND", bind.as_str()),
        ("CAMPEER__SERVER__METRICS_TOKEN", METRICS_TOKEN),
    ];
    env.extend_from_slice(extra);
    let listen = format!("{HOST_IP}:0");
    let mut c = Campeer::start(
        &[
            "run", "--video", "test", "--audio", "test", "--listen", &listen,
        ],
        &env,
    );
    let url = c.room_url();
    (c, url)
}

/// The host end of the link (RFC 2544 benchmarking range).
pub const HOST_IP: &str = "198.18.0.1";
/// The namespace end.
pub const NS_IP: &str = "198.18.0.2";

/// A namespace behind a shaped link; torn down on drop.
pub struct ShapedNs {
    pub ns: String,
    host_dev: String,
}

/// `tbf` arguments for `kbit` kbit/s with a 32 KB bucket and a 50 ms queue.
fn tbf(kbit: u32) -> Vec<String> {
    [
        "tbf".to_owned(),
        "rate".to_owned(),
        format!("{kbit}kbit"),
        "burst".to_owned(),
        "32kb".to_owned(),
        "latency".to_owned(),
        "50ms".to_owned(),
    ]
    .to_vec()
}

impl ShapedNs {
    /// A new namespace `<tag>`; what the host sends it is limited to `kbit` kbit/s (`None`: not
    /// limited).
    pub fn new(tag: &str, kbit: Option<u32>) -> ShapedNs {
        let ns = tag.to_owned();
        let host_dev = format!("{tag}h");
        let ns_dev = format!("{tag}n");
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip", "link", "add", &host_dev, "type", "veth", "peer", "name", &ns_dev,
        ]);
        sh(&["ip", "link", "set", &ns_dev, "netns", &ns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/30"),
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
            &format!("{NS_IP}/30"),
            "dev",
            &ns_dev,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &ns_dev, "up"]);
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", HOST_IP]);
        // veth offloads would hand tbf 64 KB super-packets; a real link sends MTU frames.
        let _ = std::process::Command::new("ethtool")
            .args(["-K", &host_dev, "tso", "off", "gso", "off", "gro", "off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let me = ShapedNs { ns, host_dev };
        if let Some(kbit) = kbit {
            me.qdisc("add", kbit);
        }
        me
    }

    fn qdisc(&self, verb: &str, kbit: u32) {
        let mut args: Vec<String> = ["tc", "qdisc", verb, "dev", &self.host_dev, "root"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(tbf(kbit));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh(&args);
    }

    /// Change the rate to `kbit` kbit/s.
    pub fn set_rate(&self, kbit: u32) {
        self.qdisc("change", kbit);
    }

    /// Bytes and drops the shaper has counted (`tc -s`).
    pub fn stats(&self) -> String {
        let out = std::process::Command::new("tc")
            .args(["-s", "qdisc", "show", "dev", &self.host_dev])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .find(|l| l.contains("Sent"))
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    /// UDP datagrams the namespace's kernel dropped because a socket's receive buffer was full
    /// (`RcvbufErrors` in its `/proc/net/snmp`): a receiver too slow to read, not the link.
    pub fn udp_receive_buffer_drops(&self) -> Option<u64> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "cat", "/proc/net/snmp"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next()?, udp.next()?);
        let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
        values.split_whitespace().nth(i)?.parse().ok()
    }
}

impl Drop for ShapedNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}
