//! Test networks made of Linux network namespaces, veth pairs and iptables NAT (needs root):
//! a "public" namespace with a bridge (203.0.113.0/24, where the signaling server and coturn
//! live), and behind it NAT A (camera LAN 198.51.100.0/25, endpoint-independent mapping) and
//! NAT B (viewer LAN 198.51.100.128/25, symmetric: MASQUERADE --random-fully). Nothing links
//! to the host's own namespace. Everything is deleted on drop.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The namespaces of a test network, by role.
const ROLES: [&str; 5] = ["pub", "nata", "natb", "cam", "view"];

/// The public addresses.
pub const PUBLIC_IP: &str = "203.0.113.1";
pub const PUBLIC_IP2: &str = "203.0.113.2";
pub const CAMERA_IP: &str = "198.51.100.2";
pub const VIEWER_IP: &str = "198.51.100.130";

/// True when this process may create network namespaces (root with CAP_NET_ADMIN).
pub fn available() -> bool {
    let probe = format!("cpprobe{:04x}", rand::random::<u16>());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    }
    ok
}

/// Run a command, panicking with its stderr if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one test network.
pub struct Net {
    tag: String,
}

impl Net {
    /// The namespace name for `role` (pub, nata, natb, cam, view).
    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.tag)
    }

    /// `ip netns exec <ns of role> args...`, checked.
    pub fn exec(&self, role: &str, args: &[&str]) {
        let ns = self.ns(role);
        let mut all = vec!["ip", "netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// Build the two-NAT network.
    pub fn two_nats() -> Net {
        let net = Net {
            tag: format!("c{:04x}", rand::random::<u16>()),
        };
        for role in ROLES {
            sh(&["ip", "netns", "add", &net.ns(role)]);
            sh(&["ip", "-n", &net.ns(role), "link", "set", "lo", "up"]);
        }
        let p = net.ns("pub");
        sh(&["ip", "-n", &p, "link", "add", "br0", "type", "bridge"]);
        for ip in ["203.0.113.1/24", "203.0.113.2/24"] {
            sh(&["ip", "-n", &p, "addr", "add", ip, "dev", "br0"]);
        }
        sh(&["ip", "-n", &p, "link", "set", "br0", "up"]);
        for (nat, host, wan_ip, lan_gw, host_ip, masq) in [
            (
                "nata",
                "cam",
                "203.0.113.10/24",
                "198.51.100.1",
                "198.51.100.2/25",
                false,
            ),
            (
                "natb",
                "view",
                "203.0.113.20/24",
                "198.51.100.129",
                "198.51.100.130/25",
                true,
            ),
        ] {
            let nat_ns = net.ns(nat);
            let host_ns = net.ns(host);
            let up = format!("{}{}w", net.tag, &nat[3..]);
            let down = format!("{}{}l", net.tag, &nat[3..]);
            sh(&[
                "ip", "link", "add", &up, "type", "veth", "peer", "name", "wan", "netns", &nat_ns,
            ]);
            sh(&["ip", "link", "set", &up, "netns", &p]);
            sh(&["ip", "-n", &p, "link", "set", &up, "master", "br0", "up"]);
            sh(&["ip", "-n", &nat_ns, "addr", "add", wan_ip, "dev", "wan"]);
            sh(&["ip", "-n", &nat_ns, "link", "set", "wan", "up"]);
            sh(&[
                "ip", "link", "add", &down, "type", "veth", "peer", "name", "lan", "netns", &nat_ns,
            ]);
            sh(&["ip", "link", "set", &down, "netns", &host_ns]);
            sh(&["ip", "-n", &host_ns, "link", "set", &down, "name", "eth0"]);
            sh(&["ip", "-n", &host_ns, "addr", "add", host_ip, "dev", "eth0"]);
            sh(&["ip", "-n", &host_ns, "link", "set", "eth0", "up"]);
            let lan_cidr = format!("{lan_gw}/25");
            sh(&["ip", "-n", &nat_ns, "addr", "add", &lan_cidr, "dev", "lan"]);
            sh(&["ip", "-n", &nat_ns, "link", "set", "lan", "up"]);
            sh(&[
                "ip", "-n", &host_ns, "route", "add", "default", "via", lan_gw,
            ]);
            sh(&[
                "ip",
                "-n",
                &nat_ns,
                "route",
                "add",
                "default",
                "via",
                "203.0.113.1",
            ]);
            net.exec(nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            net.exec(nat, &["iptables", "-P", "FORWARD", "DROP"]);
            net.exec(
                nat,
                &[
                    "iptables", "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT",
                ],
            );
            net.exec(
                nat,
                &[
                    "iptables",
                    "-A",
                    "FORWARD",
                    "-i",
                    "wan",
                    "-o",
                    "lan",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            );
            let mut rule = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if masq {
                rule.push("--random-fully");
            }
            net.exec(nat, &rule);
        }
        net
    }

    /// Drop every UDP packet from the camera's LAN at NAT A, silently, as a firewall does.
    pub fn block_camera_udp(&self) {
        self.exec(
            "nata",
            &[
                "iptables", "-I", "FORWARD", "-i", "lan", "-p", "udp", "-j", "DROP",
            ],
        );
    }

    /// Cut the camera's link (its eth0 goes down).
    pub fn cut_camera_link(&self) {
        sh(&["ip", "-n", &self.ns("cam"), "link", "set", "eth0", "down"]);
    }

    /// Bring the camera's link back (and its default route, which went with it).
    pub fn restore_camera_link(&self) {
        let ns = self.ns("cam");
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        let _ = Command::new("ip")
            .args([
                "-n",
                &ns,
                "route",
                "replace",
                "default",
                "via",
                "198.51.100.1",
            ])
            .status();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for role in ROLES {
            let ns = self.ns(role);
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on a process inside this test's own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for role in ROLES {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// A TCP connection opened from inside the network namespace `ns` (a thread enters it with
/// setns(2) just for the connect; the socket stays in that namespace).
pub fn connect_in(ns: &str, addr: &str) -> std::io::Result<std::net::TcpStream> {
    let ns = ns.to_owned();
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
        // SAFETY: setns(2) on this short-lived thread only; the fd is a valid netns file.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect(addr)
    })
    .join()
    .map_err(|_| std::io::Error::other("connect thread panicked"))?
}

/// A process with its output lines collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    name: &'static str,
}

impl Proc {
    /// Start `args` inside namespace `ns`, collecting stdout and stderr.
    pub fn start(name: &'static str, ns: &str, args: &[&str]) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {args:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        super::pump(child.stdout.take().expect("piped"), lines.clone(), name);
        super::pump(child.stderr.take().expect("piped"), lines.clone(), name);
        Proc { child, lines, name }
    }

    /// True when some line contains `needle`.
    pub fn saw(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Wait for a line containing `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.lines.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on this child's own process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// coturn in the public namespace on 203.0.113.1 and .2:3478 (UDP and TCP), TURN REST
/// credentials from `secret`, relays on 203.0.113.1.
pub fn coturn(net: &Net, secret: &str, dir: &std::path::Path) -> Proc {
    let db = dir.join("turndb");
    let args = [
        "turnserver".to_owned(),
        "-n".into(),
        format!("--listening-ip={PUBLIC_IP}"),
        format!("--listening-ip={PUBLIC_IP2}"),
        format!("--relay-ip={PUBLIC_IP}"),
        "--listening-port=3478".into(),
        "--use-auth-secret".into(),
        format!("--static-auth-secret={secret}"),
        "--realm=campeer.test".into(),
        "--no-tls".into(),
        "--no-dtls".into(),
        "--no-cli".into(),
        "--min-port=49160".into(),
        "--max-port=49400".into(),
        format!("--userdb={}", db.display()),
        format!("--pidfile={}", dir.join("turn.pid").display()),
        "--log-file=stdout".into(),
        "-v".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::start("coturn", &net.ns("pub"), &args);
    // It prints its listeners within a second; the relay needs no more.
    std::thread::sleep(Duration::from_millis(1000));
    p
}
