//! [`NetScope`]: which addresses a job may connect to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One thing a tenant's administrator let its jobs reach.
///
/// Written `CIDR[:PORT]` or `IP[:PORT]` (IPv6 in brackets when a port
/// follows: `[2001:db8::]/32:5432` is not, `[2001:db8::1]:5432` is),
/// `HOST[:PORT]`, or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetGrant {
    /// The addresses of a network (a single address is a /32 or /128).
    Net { addr: IpAddr, prefix: u8, port: Option<u16> },
    /// Whatever a host name resolves to, when a connection names it —
    /// except loopback, link-local and the like, which only a `Net` grant
    /// naming them opens (so a name whose DNS the tenant controls cannot
    /// be pointed at them).
    Host { name: String, port: Option<u16> },
    /// A Unix socket, or a directory of them.
    Unix { path: PathBuf },
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{text:?} is not a port (1-65535)"))
}

/// A DNS name: labels of letters, digits and `-`, dot-separated.
fn valid_host(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `addr` with all but its first `prefix` bits cleared (a prefix longer
/// than the family's keeps every bit).
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let keep = 32u32.saturating_sub(prefix as u32);
            let bits = u32::from(a) & u32::MAX.checked_shl(keep).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) => {
            let keep = 128u32.saturating_sub(prefix as u32);
            let bits = u128::from(a) & u128::MAX.checked_shl(keep).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Whether `ip` lies in `net/prefix` (same family).
fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    net.is_ipv4() == ip.is_ipv4() && mask(ip, prefix) == mask(net, prefix)
}

fn parse_net(text: &str, port: Option<u16>) -> Result<NetGrant, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let written: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an address or network"))?;
    let max = if written.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{text:?}: bad prefix length"))?,
    };
    // An IPv4-mapped IPv6 network (`::ffff:192.0.2.0/120`) is the IPv4 one.
    let addr = written.to_canonical();
    let prefix = match (written, addr) {
        (IpAddr::V6(_), IpAddr::V4(_)) => prefix
            .checked_sub(96)
            .ok_or_else(|| format!("{text:?}: an IPv4-mapped network needs a prefix of at least 96"))?,
        _ => prefix,
    };
    Ok(NetGrant::Net { addr: mask(addr, prefix), prefix, port })
}

impl FromStr for NetGrant {
    type Err = String;

    fn from_str(text: &str) -> Result<NetGrant, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !clean_path(&path) {
                return Err(format!("{text:?}: a Unix socket grant is unix:/ABSOLUTE/PATH"));
            }
            return Ok(NetGrant::Unix { path });
        }
        if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| format!("{text:?}: no closing ]"))?;
            let port = match after {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':').ok_or_else(|| format!("{text:?}: a port follows ]:"))?)?),
            };
            return parse_net(inside, port);
        }
        if text.parse::<IpAddr>().is_ok() || text.split('/').next().is_some_and(|a| a.parse::<Ipv6Addr>().is_ok()) {
            return parse_net(text, None);
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (text, None),
        };
        if host.contains('/') || host.parse::<IpAddr>().is_ok() {
            return parse_net(host, port);
        }
        if !valid_host(host) {
            return Err(format!(
                "{text:?} is not CIDR[:PORT], IP[:PORT], HOST[:PORT] or unix:PATH (for example 10.0.0.0/8, \
                 db.example.com:5432, unix:/run/postgresql)"
            ));
        }
        Ok(NetGrant::Host { name: host.trim_end_matches('.').to_ascii_lowercase(), port })
    }
}

impl fmt::Display for NetGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetGrant::Net { addr, prefix, port } => {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let net = if *prefix == max { addr.to_string() } else { format!("{addr}/{prefix}") };
                match (addr, port) {
                    (_, None) => f.write_str(&net),
                    (IpAddr::V4(_), Some(p)) => write!(f, "{net}:{p}"),
                    (IpAddr::V6(_), Some(p)) => write!(f, "[{net}]:{p}"),
                }
            }
            NetGrant::Host { name, port: None } => f.write_str(name),
            NetGrant::Host { name, port: Some(p) } => write!(f, "{name}:{p}"),
            NetGrant::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for NetGrant {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NetGrant".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "What a tenant's jobs may connect to: CIDR[:PORT] or IP[:PORT] (IPv6 in brackets when a port follows), HOST[:PORT], or unix:PATH",
            "minLength": 1,
            "maxLength": 300,
        })
    }
}

impl Serialize for NetGrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetGrant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NetGrant, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An absolute path of plain names (no `.`, no `..`, no commas: a libpq
/// host list would hide a network address among sockets).
fn clean_path(path: &Path) -> bool {
    path.is_absolute()
        && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.as_os_str().as_encoded_bytes().contains(&b',')
}

/// This host's interface addresses, looked up once.
fn this_host() -> &'static [IpAddr] {
    static ADDRESSES: std::sync::OnceLock<Vec<IpAddr>> = std::sync::OnceLock::new();
    ADDRESSES.get_or_init(NetScope::local_addresses)
}

/// Addresses no broad grant opens: the host itself (its loopback and every
/// address of its interfaces), its link (the cloud metadata service lives
/// at 169.254.169.254), "any", multicast, and other clouds' metadata
/// addresses. Returns what it is and the range it belongs to.
fn special(ip: IpAddr) -> Option<(&'static str, IpAddr, u8)> {
    let ip = ip.to_canonical();
    if let Some(found) = special_range(ip) {
        return Some(found);
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    this_host().contains(&ip).then_some(("an address of the worker's own host", ip, max))
}

fn special_range(ip: IpAddr) -> Option<(&'static str, IpAddr, u8)> {
    const RANGES: &[(&str, IpAddr, u8)] = &[
        ("a loopback address", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        ("a link-local address (the cloud metadata service among them)", IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
        ("an address of this host (0.0.0.0/8)", IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 8),
        ("a multicast address", IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
        ("the broadcast address", IpAddr::V4(Ipv4Addr::BROADCAST), 32),
        ("a loopback address", IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        ("the unspecified address", IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
        ("a link-local address", IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
        ("a multicast address", IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
        ("a cloud metadata address", IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)), 32),
        ("a cloud metadata address", IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)), 128),
    ];
    RANGES.iter().copied().find(|(_, net, prefix)| contains(*net, *prefix, ip))
}

/// Why a connection is not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// No grant covers it (`why`: what kind of address it is, if special).
    NotGranted { target: String, addr: Option<SocketAddr>, why: Option<&'static str> },
    /// The service's own API is no tenant's target.
    OwnAddress { addr: SocketAddr },
    /// A Unix socket no grant names.
    Unix { path: PathBuf },
    /// The name did not resolve.
    Resolve { target: String, message: String },
}

const HOW_TO_GRANT: &str =
    "an administrator grants networks with `backstop tenants update TENANT --allow-net CIDR|HOST[:PORT]|unix:PATH`";

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NotGranted { target, addr, why } => {
                let at = match addr {
                    Some(a) if a.ip().to_string() != *target => format!(" at {a}"),
                    _ => String::new(),
                };
                match why {
                    Some(why) => write!(
                        f,
                        "this tenant may not connect to {target}{at}: it is {why}, which only a grant naming that \
                         network opens; {HOW_TO_GRANT}"
                    ),
                    None => {
                        write!(f, "this tenant may not connect to {target}{at}: no grant covers it; {HOW_TO_GRANT}")
                    }
                }
            }
            NetError::OwnAddress { addr } => {
                write!(f, "this tenant may not connect to {addr}: it is the Backstop service's own address")
            }
            NetError::Unix { path } => {
                write!(
                    f,
                    "this tenant may not use the Unix socket {}: no grant names it; {HOW_TO_GRANT}",
                    path.display()
                )
            }
            NetError::Resolve { target, message } => write!(f, "cannot resolve {target}: {message}"),
        }
    }
}

impl std::error::Error for NetError {}

/// The addresses a job may connect to on its worker's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum NetScope {
    /// Anywhere: the system tenant.
    Any,
    /// Only what `grants` cover, and never `own` (the service's API).
    Granted {
        #[serde(default)]
        grants: Vec<NetGrant>,
        #[serde(default)]
        own: Vec<SocketAddr>,
    },
}

impl NetScope {
    /// Nothing at all.
    pub fn nowhere() -> NetScope {
        NetScope::Granted { grants: Vec::new(), own: Vec::new() }
    }

    pub fn is_any(&self) -> bool {
        matches!(self, NetScope::Any)
    }

    /// Whether a connection to `addr`, made for the name `host` (`None`
    /// when the address was given as such), is allowed.
    pub fn check(&self, host: Option<&str>, addr: SocketAddr) -> Result<(), NetError> {
        let NetScope::Granted { grants, own } = self else { return Ok(()) };
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        // Listening on a loopback address answers on every one of them.
        let same = |o: &SocketAddr| {
            let own = o.ip().to_canonical();
            own == ip || (own.is_loopback() && ip.is_loopback())
        };
        if own.iter().any(|o| o.port() == addr.port() && same(o)) {
            return Err(NetError::OwnAddress { addr });
        }
        let host = host.map(|h| h.trim_end_matches('.').to_ascii_lowercase());
        let special = special(ip);
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == addr.port());
        let allowed = grants.iter().any(|g| match g {
            NetGrant::Net { addr: net, prefix, port } => {
                port_ok(port)
                    && contains(*net, *prefix, ip)
                    // A special address needs a grant within its own range.
                    && special.is_none_or(|(_, snet, sprefix)| *prefix >= sprefix && contains(snet, sprefix, *net))
            }
            NetGrant::Host { name, port } => special.is_none() && port_ok(port) && host.as_deref() == Some(name),
            NetGrant::Unix { .. } => false,
        });
        if allowed {
            Ok(())
        } else {
            let target = host.unwrap_or_else(|| ip.to_string());
            Err(NetError::NotGranted { target, addr: Some(addr), why: special.map(|s| s.0) })
        }
    }

    /// The addresses of `host:port` this scope allows, in the resolver's
    /// order. Connect to these (not to the name again), so what was
    /// checked is what is reached. Fails when none is allowed, naming the
    /// first refusal.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, NetError> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            self.check(None, addr)?;
            return Ok(vec![addr]);
        }
        if let NetScope::Granted { grants, .. } = self {
            // No lookup a grant could not use: DNS is no oracle for a tenant.
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            let could = grants.iter().any(|g| match g {
                NetGrant::Net { .. } => true,
                NetGrant::Host { name: n, .. } => *n == name,
                NetGrant::Unix { .. } => false,
            });
            if !could {
                return Err(NetError::NotGranted { target: name, addr: None, why: None });
            }
        }
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| NetError::Resolve { target: host.to_string(), message: e.to_string() })?
            .collect();
        let mut first_refusal = None;
        let mut allowed = Vec::new();
        for addr in addrs {
            match self.check(Some(host), addr) {
                Ok(()) => allowed.push(addr),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some(e)) => Err(e),
            (true, None) => Err(NetError::Resolve { target: host.to_string(), message: "no addresses".into() }),
        }
    }

    /// Whether the Unix socket at `path` (or a directory of sockets, as a
    /// PostgreSQL `host=/run/postgresql`) may be used.
    pub fn check_unix(&self, path: &Path) -> Result<(), NetError> {
        let NetScope::Granted { grants, .. } = self else { return Ok(()) };
        let granted = grants.iter().any(|g| matches!(g, NetGrant::Unix { path: p } if path.starts_with(p)));
        let ok = clean_path(path) && granted;
        if ok { Ok(()) } else { Err(NetError::Unix { path: path.to_path_buf() }) }
    }

    /// The addresses of this host's interfaces, for a service that listens
    /// on all of them (`0.0.0.0`): each is its own address.
    pub fn local_addresses() -> Vec<IpAddr> {
        let mut out = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: list is a valid out-pointer; freed below.
        if unsafe { libc::getifaddrs(&mut list) } != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            // SAFETY: cur is a node of the list getifaddrs returned.
            let ifa = unsafe { &*cur };
            if !ifa.ifa_addr.is_null() {
                // SAFETY: ifa_addr points to a sockaddr of the family it states.
                let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
                if family == libc::AF_INET {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                } else if family == libc::AF_INET6 {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
            }
            cur = ifa.ifa_next;
        }
        // SAFETY: list came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(list) };
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> NetScope {
        NetScope::Granted { grants: list.iter().map(|g| g.parse().unwrap()).collect(), own: vec![] }
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn grants_parse_and_print_the_same() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7"),
            ("192.0.2.7:5432", "192.0.2.7:5432"),
            ("10.0.0.0/8:443", "10.0.0.0/8:443"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("[2001:db8::1]:5432", "[2001:db8::1]:5432"),
            ("DB.Example.com.:5432", "db.example.com:5432"),
            ("s3.internal", "s3.internal"),
            ("unix:/run/postgresql", "unix:/run/postgresql"),
        ] {
            let g: NetGrant = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(g.to_string(), shown);
            assert_eq!(shown.parse::<NetGrant>().unwrap(), g);
        }
        // An IPv4-mapped network is the IPv4 one.
        assert_eq!("::ffff:192.0.2.10".parse::<NetGrant>().unwrap().to_string(), "192.0.2.10");
        assert_eq!("[::ffff:192.0.2.0/120]:80".parse::<NetGrant>().unwrap().to_string(), "192.0.2.0/24:80");
        assert!("::ffff:1.2.3.4/64".parse::<NetGrant>().is_err());
        assert!("unix:/a,b".parse::<NetGrant>().is_err());
        for bad in ["", "10.0.0.0/33", "host:0", "host:99999", "-bad-", "a b", "unix:relative", "unix:/a/../b", "[::1"]
        {
            assert!(bad.parse::<NetGrant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_grants_open_and_special_addresses_need_their_own() {
        let scope = grants(&["10.0.0.0/8", "0.0.0.0/0", "db.example.com:5432"]);
        assert!(scope.check(None, at("10.2.3.4:80")).is_ok());
        assert!(scope.check(None, at("203.0.113.9:80")).is_ok(), "the wide grant covers ordinary addresses");
        for special in ["127.0.0.1:5432", "169.254.169.254:80", "0.0.0.0:22", "[::1]:80", "[::ffff:127.0.0.1]:80"] {
            let e = scope.check(None, at(special)).unwrap_err();
            assert!(matches!(e, NetError::NotGranted { why: Some(_), .. }), "{special}: {e}");
        }
        // A name the tenant controls cannot point a host grant at loopback.
        assert!(scope.check(Some("db.example.com"), at("127.0.0.1:5432")).is_err());
        assert!(scope.check(Some("db.example.com"), at("198.51.100.1:5432")).is_ok());
        assert!(grants(&["db.example.com:5432"]).check(Some("db.example.com"), at("198.51.100.1:5433")).is_err());
        // Loopback opens only to a grant that names it.
        let local = grants(&["127.0.0.1/32:5432"]);
        assert!(local.check(None, at("127.0.0.1:5432")).is_ok());
        assert!(local.check(None, at("127.0.0.1:3306")).is_err());
        assert!(NetScope::nowhere().check(None, at("10.0.0.1:1")).is_err());
        assert!(NetScope::Any.check(None, at("127.0.0.1:1")).is_ok());
    }

    #[test]
    fn the_service_itself_is_never_a_tenant_target() {
        let scope = NetScope::Granted { grants: vec!["127.0.0.0/8".parse().unwrap()], own: vec![at("127.0.0.1:8080")] };
        assert!(matches!(scope.check(None, at("127.0.0.1:8080")), Err(NetError::OwnAddress { .. })));
        assert!(matches!(scope.check(None, at("127.0.0.2:8080")), Err(NetError::OwnAddress { .. })));
        assert!(scope.check(None, at("127.0.0.1:8081")).is_ok());
        // The host's own interface addresses and other metadata services need a grant naming them.
        let wide = grants(&["0.0.0.0/0", "::/0"]);
        for ip in NetScope::local_addresses() {
            assert!(wide.check(None, SocketAddr::new(ip, 5432)).is_err(), "{ip}");
        }
        assert!(wide.check(None, at("100.100.100.200:80")).is_err());
    }

    #[test]
    fn names_resolve_only_to_allowed_addresses_and_only_when_a_grant_could_use_them() {
        let e = grants(&["db.example.com"]).resolve("localhost", 5432).unwrap_err();
        assert!(matches!(e, NetError::NotGranted { addr: None, .. }), "no lookup for an ungranted name: {e}");
        let e = grants(&["localhost"]).resolve("localhost", 5432).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let ok = grants(&["127.0.0.1/32"]).resolve("localhost", 5432).unwrap();
        assert!(ok.iter().all(|a| a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)), "{ok:?}");
        assert_eq!(grants(&["127.0.0.1"]).resolve("127.0.0.1", 80).unwrap(), vec![at("127.0.0.1:80")]);
        assert!(grants(&[]).resolve("[::1]", 80).is_err());
    }

    #[test]
    fn unix_sockets_need_a_grant() {
        let scope = grants(&["unix:/run/postgresql"]);
        assert!(scope.check_unix(Path::new("/run/postgresql")).is_ok());
        assert!(scope.check_unix(Path::new("/run/postgresql/.s.PGSQL.5432")).is_ok());
        for escape in ["/run/postgresql/../mysqld/mysqld.sock", "/run/postgresql/x,10.9.8.7"] {
            assert!(scope.check_unix(Path::new(escape)).is_err(), "{escape}");
        }
        assert!(scope.check_unix(Path::new("/run/mysqld/mysqld.sock")).is_err());
        assert!(NetScope::nowhere().check_unix(Path::new("/run/postgresql")).is_err());
    }

    #[test]
    fn scopes_travel_as_json() {
        let scope = grants(&["10.0.0.0/8", "unix:/run/x"]);
        let text = serde_json::to_string(&scope).unwrap();
        assert_eq!(text, r#"{"scope":"granted","grants":["10.0.0.0/8","unix:/run/x"],"own":[]}"#);
        assert_eq!(serde_json::from_str::<NetScope>(&text).unwrap(), scope);
        assert!(serde_json::from_str::<NetScope>(r#"{"scope":"granted","grants":["nope nope"]}"#).is_err());
    }
}
