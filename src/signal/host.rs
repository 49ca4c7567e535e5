//! The names this server answers to, for what needs no token: which `Host` a request named, and
//! whether a page of another site could have sent it there by pointing its own DNS name at
//! this machine (DNS rebinding).
//!
//! A rebinding page is same-origin with whatever it reaches, so the Origin check lets it in;
//! but its Host is the attacker's name. Names that no outside DNS answers for (addresses,
//! `localhost`, single labels, `.local`, `.lan`, `.home.arpa`, ...) cannot be rebound, nor can a
//! name reached over TLS (the certificate would not match). Any other name is trusted only when
//! the operator lists it in `server.host-names`. An open room, and its snapshots, answer pages
//! reached by other names as if the room were closed: with a token, as usual.

/// Suffixes of names that are resolved on the LAN only (mDNS, the router's DNS), never by a
/// public DNS server an attacker could run.
const LOCAL_SUFFIXES: &[&str] = &[
    ".local",
    ".lan",
    ".home",
    ".home.arpa",
    ".internal",
    ".localdomain",
    ".localhost",
];

/// What a request's `Host` says about the page that may have sent it: `Some(name)` when it
/// named this server by a name someone else's DNS could have pointed here, and the name was
/// not one the operator listed; `None` when it is safe to treat as the server's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReachedAs(pub Option<String>);

impl ReachedAs {
    /// Judge `host` (the `Host` header, port included) on a connection that is (`tls`) or is
    /// not encrypted, against the operator's `known` names (`*` trusts every name).
    pub fn judge(host: Option<&str>, tls: bool, known: &[String]) -> ReachedAs {
        if tls {
            return ReachedAs(None);
        }
        let raw = host.unwrap_or("");
        let name = host_name(raw).trim_end_matches('.').to_ascii_lowercase();
        let trusted = is_literal(&name)
            || name == "localhost"
            || (is_dns_name(&name) && !name.contains('.'))
            || (is_dns_name(&name) && LOCAL_SUFFIXES.iter().any(|s| name.ends_with(s)))
            || known
                .iter()
                .any(|k| k == "*" || k.trim_end_matches('.').eq_ignore_ascii_case(&name));
        if trusted {
            ReachedAs(None)
        } else {
            // Bounded and printable: it is quoted back to the client and into debug logs.
            let shown: String = raw
                .chars()
                .take(100)
                .filter(|c| c.is_ascii_graphic())
                .collect();
            ReachedAs(Some(shown))
        }
    }

    /// The name a page may have rebound here, if any.
    pub fn foreign(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// The name part of a `Host` header: without the port, `[v6]` unbracketed. A malformed
/// bracket gives a name that is neither literal nor local.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Letters, digits, `-` and `.` only.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn is_literal(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
}

/// `localhost` or an IP address, with or without a port (`[v6]:port` for IPv6).
pub fn host_is_local_literal(host: &str) -> bool {
    let name = host_name(host);
    name.eq_ignore_ascii_case("localhost") || is_literal(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign(host: &str) -> Option<String> {
        ReachedAs::judge(Some(host), false, &[]).0
    }

    #[test]
    fn names_no_outside_dns_answers_for_are_the_servers_own() {
        for host in [
            "192.168.1.20:8080",
            "[fe80::1]:8080",
            "[::1]",
            "localhost:8080",
            "raspberrypi:8080",
            "raspberrypi.local",
            "cam.lan:8080",
            "cam.home.arpa",
            "CAM.LOCAL.",
            "nas.internal",
        ] {
            assert_eq!(foreign(host), None, "{host}");
        }
    }

    #[test]
    fn public_names_are_foreign_unless_listed_or_over_tls() {
        assert_eq!(
            foreign("evil.example:8080"),
            Some("evil.example:8080".into())
        );
        // Looks local, is not: the suffix must be a whole label.
        assert!(foreign("evil-local.com").is_some());
        assert!(foreign("notlocal").is_none());
        assert!(foreign("[::1]x").is_some());
        assert_eq!(
            ReachedAs::judge(None, false, &[]),
            ReachedAs(Some("".into()))
        );
        let known = ["Cam.Example.com".to_string()];
        assert_eq!(
            ReachedAs::judge(Some("cam.example.com:8080"), false, &known),
            ReachedAs(None)
        );
        assert!(
            ReachedAs::judge(Some("evil.example"), false, &known)
                .foreign()
                .is_some()
        );
        assert_eq!(
            ReachedAs::judge(Some("evil.example"), false, &["*".into()]),
            ReachedAs(None)
        );
        assert_eq!(
            ReachedAs::judge(Some("cam.example.com"), true, &[]),
            ReachedAs(None)
        );
        // What is quoted back stays short and printable.
        let long = format!("{}.example\r\n", "a".repeat(300));
        assert_eq!(foreign(&long).map(|s| s.len()), Some(100));
    }

    #[test]
    fn literals_and_localhost_are_this_machine() {
        assert!(host_is_local_literal("127.0.0.1:8080"));
        assert!(host_is_local_literal("LOCALHOST"));
        assert!(host_is_local_literal("[::1]:8080"));
        assert!(!host_is_local_literal("[::1]x"));
        assert!(!host_is_local_literal("cam.local"));
    }
}
