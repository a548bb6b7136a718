//! The network policy: which names and addresses a cell may reach through the proxy.
//!
//! An entry is `HOST:PORT` (one name), `*.SUFFIX:PORT` (every name under SUFFIX, not
//! SUFFIX itself), `*:PORT` (any name; a profile's ceiling, never an address) or an
//! address written as such: `IP:PORT`, `CIDR:PORT`, `[IPv6]:PORT`, `[CIDR6]:PORT`.
//! A name never allows a literal address, and the addresses a name resolves to are
//! checked too: loopback, private, link-local and other special ranges, and the
//! host's own addresses, are refused unless an address entry lists them. Deny
//! entries win over allow entries.

use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// What an entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// One host name, lowercase, without a trailing dot.
    Name(String),
    /// Every name ending in `.SUFFIX`.
    Suffix(String),
    /// Any name.
    AnyName,
    /// Addresses, written as such.
    Net(IpNet),
}

/// One allow or deny entry, as written and as understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    target: Target,
    pub port: u16,
    text: String,
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A host name as the policy compares it: lowercase, no trailing dot; `None` when it
/// is not a valid DNS name (labels of letters, digits, '-' and '_', 1 to 63 bytes,
/// 253 in all).
pub fn normalize_name(host: &str) -> Option<String> {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // An all-numeric last label is an address in disguise (e.g. 2130706433).
        && !h.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(h)
}

/// A literal address as a request names it: `1.2.3.4` or `[::1]` (or `::1`).
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    h.parse().ok()
}

impl Entry {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Entry, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT (e.g. \"api.example.com:443\")"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: the port must be a number from 1 to 65535"))?;
        let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let addr = bracketed.unwrap_or(host);
        let target = if let Ok(net) = addr.parse::<IpNet>() {
            if net != net.trunc() {
                return Err(format!(
                    "{s:?}: {net} has bits set past its prefix (the network is {})",
                    net.trunc()
                ));
            }
            Target::Net(net)
        } else if let Ok(ip) = addr.parse::<IpAddr>() {
            if matches!(ip, IpAddr::V6(_)) && bracketed.is_none() {
                return Err(format!(
                    "{s:?}: write an IPv6 address in brackets: [{ip}]:{port}"
                ));
            }
            Target::Net(IpNet::from(ip))
        } else if bracketed.is_some() || host.contains(':') {
            return Err(format!("{s:?}: not an IPv6 address or network"));
        } else if host == "*" {
            Target::AnyName
        } else if let Some(suffix) = host.strip_prefix("*.") {
            Target::Suffix(
                normalize_name(suffix)
                    .ok_or_else(|| format!("{s:?}: {suffix:?} is not a host name"))?,
            )
        } else if host.contains('*') {
            return Err(format!(
                "{s:?}: a wildcard may only start the name, as \"*.example.com\" (subdomains only)"
            ));
        } else {
            Target::Name(
                normalize_name(host).ok_or_else(|| {
                    format!("{s:?}: {host:?} is not a host name (nor an address)")
                })?,
            )
        };
        let text = match &target {
            Target::Name(n) => format!("{n}:{port}"),
            Target::Suffix(x) => format!("*.{x}:{port}"),
            Target::AnyName => format!("*:{port}"),
            Target::Net(IpNet::V6(n)) if n.prefix_len() == 128 => format!("[{}]:{port}", n.addr()),
            Target::Net(n) if n.prefix_len() == n.max_prefix_len() => {
                format!("{}:{port}", n.addr())
            }
            Target::Net(IpNet::V6(n)) => format!("[{n}]:{port}"),
            Target::Net(n) => format!("{n}:{port}"),
        };
        Ok(Entry { target, port, text })
    }

    /// Whether this entry names the (normalized) host name on `port`.
    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.port == port
            && match &self.target {
                Target::Name(n) => n == name,
                Target::Suffix(s) => name.len() > s.len() + 1 && name.ends_with(&format!(".{s}")),
                Target::AnyName => true,
                Target::Net(_) => false,
            }
    }

    /// Whether this entry lists the address on `port`.
    fn matches_addr(&self, ip: IpAddr, port: u16) -> bool {
        self.port == port && matches!(&self.target, Target::Net(n) if n.contains(&ip))
    }

    /// Whether everything `other` allows, this entry allows too (a project's entry
    /// inside a profile's ceiling).
    pub fn covers(&self, other: &Entry) -> bool {
        if self.port != other.port {
            return false;
        }
        match (&self.target, &other.target) {
            (Target::AnyName, Target::Name(_) | Target::Suffix(_) | Target::AnyName) => true,
            (Target::Suffix(_), Target::Name(n)) => self.matches_name(n, self.port),
            (Target::Suffix(s), Target::Suffix(t)) => t == s || t.ends_with(&format!(".{s}")),
            (Target::Name(a), Target::Name(b)) => a == b,
            (Target::Net(a), Target::Net(b)) => a.contains(b),
            _ => false,
        }
    }

    /// Whether the entry names host names (not addresses).
    pub fn is_name(&self) -> bool {
        !matches!(self.target, Target::Net(_))
    }

    /// Whether the entry names more than one host name (`*.SUFFIX`, `*`).
    pub fn is_wildcard(&self) -> bool {
        matches!(self.target, Target::Suffix(_) | Target::AnyName)
    }
}

/// Why an address is special, when it is: such addresses are reached only when an
/// address entry lists them.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            Some(if a.is_loopback() {
                "loopback"
            } else if a.is_private() {
                "private"
            } else if a.is_link_local() {
                "link-local"
            } else if a.is_unspecified() || o[0] == 0 {
                "unspecified"
            } else if a.is_broadcast() || a.is_multicast() || o[0] >= 240 {
                "multicast or reserved"
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                "shared (carrier-grade NAT)"
            } else if a.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                "documentation or benchmarking"
            } else {
                return None;
            })
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            Some(if a.is_loopback() {
                "loopback"
            } else if a.is_unspecified() {
                "unspecified"
            } else if (s[0] & 0xfe00) == 0xfc00 {
                "private (unique local)"
            } else if (s[0] & 0xffc0) == 0xfe80 {
                "link-local"
            } else if a.is_multicast() {
                "multicast"
            } else if s[0] == 0x2001 && s[1] == 0xdb8 {
                "documentation"
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                "NAT64"
            } else {
                return None;
            })
        }
    }
}

/// A cell's network policy: empty `allow` is mode "none" (loopback only, no proxy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetPolicy {
    pub allow: Vec<Entry>,
    pub deny: Vec<Entry>,
}

impl NetPolicy {
    /// Parses lists of entries; an error names the entry (the caller adds where).
    pub fn parse<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<NetPolicy, String> {
        let p = |l: &[S]| {
            l.iter()
                .map(|s| Entry::parse(s.as_ref()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(NetPolicy {
            allow: p(allow)?,
            deny: p(deny)?,
        })
    }

    /// "none" (no proxy) or "proxy".
    pub fn mode(&self) -> &'static str {
        if self.allow.is_empty() {
            "none"
        } else {
            "proxy"
        }
    }

    /// Checks a name asked for: `Err(reason)` when the policy refuses it.
    pub fn check_name(&self, name: &str, port: u16) -> Result<(), String> {
        if let Some(d) = self.deny.iter().find(|e| e.matches_name(name, port)) {
            return Err(format!("denied by the deny entry {d}"));
        }
        if self.allow.iter().any(|e| e.matches_name(name, port)) {
            Ok(())
        } else {
            Err(format!("{name}:{port} is not on the allow list"))
        }
    }

    /// Checks an address about to be connected to. `literal`: the cell named the
    /// address itself (then an address entry must list it, special or not);
    /// `own`: the host's own addresses.
    pub fn check_addr(
        &self,
        ip: IpAddr,
        port: u16,
        literal: bool,
        own: &[IpAddr],
    ) -> Result<(), String> {
        if let Some(d) = self.deny.iter().find(|e| e.matches_addr(ip, port)) {
            return Err(format!("{ip} is denied by the deny entry {d}"));
        }
        if self.allow.iter().any(|e| e.matches_addr(ip, port)) {
            return Ok(());
        }
        if literal {
            return Err(format!(
                "{ip}:{port}: a literal address must be listed as such"
            ));
        }
        if let Some(kind) = special(ip) {
            return Err(format!(
                "resolves to {ip}, a {kind} address not listed as such"
            ));
        }
        if own.contains(&ip) {
            return Err(format!(
                "resolves to {ip}, an address of the host, not listed as such"
            ));
        }
        Ok(())
    }

    /// The project's policy inside this one (the profile's): the project's allow
    /// entries this one covers (all of this one's when the project names none), both
    /// deny lists.
    pub fn narrowed(&self, project: Option<&NetPolicy>) -> NetPolicy {
        let Some(p) = project else {
            return self.clone();
        };
        let mut deny = self.deny.clone();
        deny.extend(p.deny.iter().filter(|d| !self.deny.contains(d)).cloned());
        NetPolicy {
            allow: p
                .allow
                .iter()
                .filter(|e| self.allow.iter().any(|c| c.covers(e)))
                .cloned()
                .collect(),
            deny,
        }
    }

    /// Whether the profile's ceiling lets a project allow `entry`.
    pub fn admits(&self, entry: &Entry) -> bool {
        self.allow.iter().any(|c| c.covers(entry))
            && !self.deny.iter().any(|d| d.covers(entry) || entry.covers(d))
    }
}

/// A `[network]` table as written in a profile or nixcell.toml, each entry with its
/// position (checked by the reader, which knows the file): `network = "none"` is the
/// short form of an empty allow list. `None`: not written (a profile inherits it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkToml {
    pub allow: Option<Vec<toml::Spanned<String>>>,
    pub deny: Option<Vec<toml::Spanned<String>>>,
}

impl NetworkToml {
    /// The entries with the key each is under.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &toml::Spanned<String>)> {
        self.allow
            .iter()
            .flatten()
            .map(|e| ("allow", e))
            .chain(self.deny.iter().flatten().map(|e| ("deny", e)))
    }

    /// The policy written (entries not yet checked are an error naming the entry).
    pub fn policy(&self) -> Result<NetPolicy, String> {
        let list = |l: &Option<Vec<toml::Spanned<String>>>| -> Vec<String> {
            l.iter().flatten().map(|e| e.get_ref().clone()).collect()
        };
        NetPolicy::parse(&list(&self.allow), &list(&self.deny))
    }
}

impl<'de> serde::Deserialize<'de> for NetworkToml {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            allow: Option<Vec<toml::Spanned<String>>>,
            deny: Option<Vec<toml::Spanned<String>>>,
        }
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = NetworkToml;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"none\" or a table of `allow` and `deny` lists")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NetworkToml, E> {
                if v == "none" {
                    Ok(NetworkToml {
                        allow: Some(Vec::new()),
                        deny: None,
                    })
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<NetworkToml, A::Error> {
                let t = <Table as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(m),
                )?;
                Ok(NetworkToml {
                    allow: t.allow,
                    deny: t.deny,
                })
            }
        }
        d.deserialize_any(Form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Entry {
        Entry::parse(s).unwrap()
    }

    #[test]
    fn entries_parse_and_bad_ones_say_why() {
        assert_eq!(e("API.Example.com:443").to_string(), "api.example.com:443");
        assert_eq!(
            e("*.pythonhosted.org:443").to_string(),
            "*.pythonhosted.org:443"
        );
        assert_eq!(e("127.0.0.1:80").to_string(), "127.0.0.1:80");
        assert_eq!(e("10.0.0.0/8:80").to_string(), "10.0.0.0/8:80");
        assert_eq!(e("[::1]:80").to_string(), "[::1]:80");
        assert_eq!(e("[fd00::/8]:80").to_string(), "[fd00::/8]:80");
        for (bad, why) in [
            ("api.example.com", "HOST:PORT"),
            ("api.example.com:0", "port"),
            ("api.example.com:http", "port"),
            ("a*.example.com:443", "wildcard"),
            ("*example.com:443", "wildcard"),
            ("::1:80", "brackets"),
            ("exa mple.com:80", "not a host name"),
            ("-x.com:80", "not a host name"),
            ("10.0.0.1/8:80", "bits set"),
            ("2130706433:80", "not a host name"),
        ] {
            let err = Entry::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only_and_deny_wins() {
        let p = NetPolicy::parse(
            &["*.example.com:443", "api.test:80"],
            &["bad.example.com:443"],
        )
        .unwrap();
        assert!(p.check_name("a.example.com", 443).is_ok());
        assert!(p.check_name("a.b.example.com", 443).is_ok());
        assert!(p.check_name("example.com", 443).is_err());
        assert!(p.check_name("xexample.com", 443).is_err());
        assert!(p.check_name("a.example.com", 80).is_err());
        assert!(p.check_name("api.test", 80).is_ok());
        let denied = p.check_name("bad.example.com", 443).unwrap_err();
        assert!(denied.contains("deny"), "{denied}");
    }

    #[test]
    fn special_and_literal_addresses_need_an_address_entry() {
        let p = NetPolicy::parse(&["api.test:80", "127.0.0.1:80"], &[]).unwrap();
        let own: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "203.0.113.9".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.check_addr(ip("127.0.0.1"), 80, false, &own).is_ok());
        assert!(p.check_addr(ip("127.0.0.1"), 80, true, &own).is_ok());
        assert!(p.check_addr(ip("127.0.0.1"), 81, false, &own).is_err());
        for bad in [
            "127.0.0.2",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "fd00::1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(p.check_addr(ip(bad), 80, false, &own).is_err(), "{bad}");
        }
        // A public address is fine for a name, never as a literal; the host's own not.
        assert!(p.check_addr(ip("93.184.215.14"), 80, false, &own).is_ok());
        assert!(p.check_addr(ip("93.184.215.14"), 80, true, &own).is_err());
        assert!(
            p.check_addr(ip("203.0.113.9"), 80, false, &[ip("203.0.113.9")])
                .is_err()
        );
        assert!(
            p.check_addr(ip("93.184.215.14"), 80, false, &[ip("93.184.215.14")])
                .is_err()
        );
    }

    #[test]
    fn a_project_only_narrows_the_profile() {
        let profile = NetPolicy::parse(
            &["*.example.com:443", "*:80", "10.0.0.0/8:5432"],
            &["evil.example.com:443"],
        )
        .unwrap();
        let project = NetPolicy::parse(
            &[
                "api.example.com:443",
                "other.org:443",
                "plain.org:80",
                "10.1.0.0/16:5432",
                "11.0.0.1:5432",
                "*.example.com:443",
                "*:443",
            ],
            &["plain.org:80"],
        )
        .unwrap();
        let n = profile.narrowed(Some(&project));
        let kept: Vec<String> = n.allow.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            kept,
            [
                "api.example.com:443",
                "plain.org:80",
                "10.1.0.0/16:5432",
                "*.example.com:443"
            ]
        );
        assert_eq!(n.deny.len(), 2);
        assert!(n.check_name("plain.org", 80).is_err());
        assert!(n.check_name("evil.example.com", 443).is_err());
        assert_eq!(profile.narrowed(None), profile);
        assert!(profile.admits(&e("x.example.com:443")));
        assert!(!profile.admits(&e("evil.example.com:443")));
        assert!(!profile.admits(&e("example.com:443")));
        assert!(
            NetPolicy::default()
                .narrowed(Some(&project))
                .allow
                .is_empty()
        );
    }
}
