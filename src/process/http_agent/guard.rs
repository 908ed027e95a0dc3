//! The SSRF guard (OWASP API7): which addresses an `http.request` task may reach.
//!
//! An address is refused when it falls in one of IANA's special-purpose ranges (loopback,
//! private, link-local with the cloud metadata service, CGNAT, unique-local, multicast,
//! documentation, …) unless the node allows it. The check holds wherever an address comes
//! from:
//! - an IP literal in the URL (which never reaches a resolver): [`AddressPolicy::check_url`]
//!   before the request is sent;
//! - a name: [`GuardedResolver`] is the HTTP client's only resolver and hands the
//!   connector just the allowed addresses, so the addresses checked are exactly those
//!   connected to (a name that resolves to 127.0.0.1, or rebinds between two lookups,
//!   gets nowhere);
//! - a redirect: [`redirect_policy`] checks every hop's URL the same way (its name then
//!   goes through the resolver again) and limits the hops.
//!
//! The HTTP client must also use no proxy, or the proxy would resolve names for us.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// What an address is, when it is not an ordinary public unicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `0.0.0.0/8`, `::`: on Linux a connection to it reaches the host itself.
    Unspecified,
    Loopback,
    /// RFC 1918.
    Private,
    /// RFC 6598 carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// `169.254.0.0/16` (the cloud metadata service lives at 169.254.169.254), `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// `fec0::/10`, deprecated but still routed by some stacks.
    SiteLocal,
    Multicast,
    /// `240.0.0.0/4` with the broadcast address.
    Reserved,
    Documentation,
    Benchmarking,
    /// IETF protocol assignments, discard-only and the like: never a web server.
    Protocol,
    /// Transition ranges (6to4, local NAT64, SIIT, IPv4-compatible) that would tunnel to
    /// an address we cannot see.
    Translation,
}

impl Special {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedAddressSpace => "shared (CGNAT)",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
            Self::SiteLocal => "site-local",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Protocol => "protocol-assignment",
            Self::Translation => "transition",
        }
    }

    /// Not a destination at all, so refused even when internal addresses are allowed.
    fn is_never_a_destination(self) -> bool {
        matches!(self, Self::Unspecified | Self::Multicast | Self::Reserved)
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, 0, 0), len)
}

/// IANA's IPv4 special-purpose registry, and multicast and class E beside it.
const SPECIAL_V4: [(Ipv4Net, Special); 15] = [
    (v4(0, 0, 0, 0, 8), Special::Unspecified),
    (v4(10, 0, 0, 0, 8), Special::Private),
    (v4(100, 64, 0, 0, 10), Special::SharedAddressSpace),
    (v4(127, 0, 0, 0, 8), Special::Loopback),
    (v4(169, 254, 0, 0, 16), Special::LinkLocal),
    (v4(172, 16, 0, 0, 12), Special::Private),
    (v4(192, 0, 0, 0, 24), Special::Protocol),
    (v4(192, 0, 2, 0, 24), Special::Documentation),
    (v4(192, 88, 99, 0, 24), Special::Translation),
    (v4(192, 168, 0, 0, 16), Special::Private),
    (v4(198, 18, 0, 0, 15), Special::Benchmarking),
    (v4(198, 51, 100, 0, 24), Special::Documentation),
    (v4(203, 0, 113, 0, 24), Special::Documentation),
    (v4(224, 0, 0, 0, 4), Special::Multicast),
    (v4(240, 0, 0, 0, 4), Special::Reserved),
];

/// IANA's IPv6 special-purpose registry, more specific ranges first. IPv4-mapped
/// (`::ffff:0:0/96`) and well-known NAT64 (`64:ff9b::/96`) addresses are judged by the
/// IPv4 address inside them instead.
const SPECIAL_V6: [(Ipv6Net, Special); 15] = [
    (v6(0, 0, 0, 0, 0, 0, 128), Special::Unspecified),
    (
        Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
        Special::Loopback,
    ),
    (v6(0, 0, 0, 0, 0, 0, 96), Special::Translation),
    (v6(0, 0, 0, 0, 0xffff, 0, 96), Special::Translation),
    (v6(0x64, 0xff9b, 1, 0, 0, 0, 48), Special::Translation),
    (v6(0x100, 0, 0, 0, 0, 0, 64), Special::Protocol),
    (v6(0x2001, 0xdb8, 0, 0, 0, 0, 32), Special::Documentation),
    (v6(0x2001, 0, 0, 0, 0, 0, 23), Special::Protocol),
    (v6(0x2002, 0, 0, 0, 0, 0, 16), Special::Translation),
    (v6(0x3fff, 0, 0, 0, 0, 0, 20), Special::Documentation),
    (v6(0x5f00, 0, 0, 0, 0, 0, 16), Special::Protocol),
    (v6(0xfc00, 0, 0, 0, 0, 0, 7), Special::UniqueLocal),
    (v6(0xfe80, 0, 0, 0, 0, 0, 10), Special::LinkLocal),
    (v6(0xfec0, 0, 0, 0, 0, 0, 10), Special::SiteLocal),
    (v6(0xff00, 0, 0, 0, 0, 0, 8), Special::Multicast),
];

const NAT64: Ipv6Net = v6(0x64, 0xff9b, 0, 0, 0, 0, 96);

/// The IPv4 address an IPv6 one stands for: IPv4-mapped or well-known NAT64.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if NAT64.contains(&ip) {
        let [.., a, b, c, d] = ip.octets();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// What `ip` is, or `None` for an ordinary public unicast address.
pub fn classify(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(ip) => SPECIAL_V4
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, kind)| *kind),
        IpAddr::V6(ip) => match embedded_v4(ip) {
            Some(v4) => classify(IpAddr::V4(v4)),
            None => SPECIAL_V6
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, kind)| *kind),
        },
    }
}

/// An address the policy refuses to connect to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address} is a {} address, which http.request may not reach", kind.as_str())]
pub struct Blocked {
    pub address: IpAddr,
    pub kind: Special,
}

/// A redirect to a refused address: where it led, and why that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the redirect to {to} is refused")]
pub struct BlockedRedirect {
    pub to: Url,
    #[source]
    pub blocked: Blocked,
}

/// A redirect the agent does not follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectRefused {
    #[error("a redirect to a {0}: URL is not followed")]
    Scheme(String),
    #[error("more than {0} redirects")]
    TooMany(usize),
}

/// Which addresses requests may reach.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Internal addresses are allowed too (never unspecified, multicast or reserved ones).
    pub allow_private: bool,
    /// Allowed even though internal.
    pub allowed_networks: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn check(&self, address: IpAddr) -> Result<(), Blocked> {
        let Some(kind) = classify(address) else {
            return Ok(());
        };
        let canonical = address.to_canonical();
        let listed = self
            .allowed_networks
            .iter()
            .any(|net| net.contains(&address) || net.contains(&canonical));
        if kind.is_never_a_destination() || !(self.allow_private || listed) {
            Err(Blocked { address, kind })
        } else {
            Ok(())
        }
    }

    /// Checks a URL whose host is an IP literal; a name is left to [`GuardedResolver`].
    pub fn check_url(&self, url: &Url) -> Result<(), Blocked> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }
}

/// Resolves names with the system resolver and keeps only the addresses the policy
/// allows; a name with none left fails with [`Blocked`].
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }

    /// The allowed addresses of `host`, in the resolver's order.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(ResolveError::Lookup)?
            .collect();
        let mut allowed = Vec::with_capacity(found.len());
        let mut refused = None;
        for address in found {
            match self.policy.check(address.ip()) {
                Ok(()) => allowed.push(address),
                Err(blocked) => {
                    refused.get_or_insert(blocked);
                }
            }
        }
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(blocked)) => Err(ResolveError::Blocked(blocked)),
            (true, None) => Err(ResolveError::NoAddress),
        }
    }
}

/// Why a name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error("the name does not resolve: {0}")]
    Lookup(std::io::Error),
    #[error("the name resolves to no address")]
    NoAddress,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            match resolver.lookup(name.as_str()).await {
                Ok(addresses) => Ok(Box::new(addresses.into_iter()) as Addrs),
                // The blocked address itself, so that callers can find it in the chain.
                Err(ResolveError::Blocked(blocked)) => Err(Box::new(blocked) as _),
                Err(other) => Err(Box::new(other) as _),
            }
        })
    }
}

/// Follows at most `max` redirects, each to http(s) and to an address the policy allows.
pub fn redirect_policy(policy: Arc<AddressPolicy>, max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        // `previous` holds the first URL and each one already followed.
        if attempt.previous().len() > max {
            return attempt.error(RedirectRefused::TooMany(max));
        }
        let scheme = attempt.url().scheme();
        if !matches!(scheme, "http" | "https") {
            let refused = RedirectRefused::Scheme(scheme.to_owned());
            return attempt.error(refused);
        }
        match policy.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(blocked) => {
                let to = attempt.url().clone();
                attempt.error(BlockedRedirect { to, blocked })
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[rstest]
    #[case::loopback("127.0.0.1", Special::Loopback)]
    #[case::loopback_range("127.255.255.254", Special::Loopback)]
    #[case::rfc1918_10("10.0.0.1", Special::Private)]
    #[case::rfc1918_172("172.16.0.1", Special::Private)]
    #[case::rfc1918_172_top("172.31.255.255", Special::Private)]
    #[case::rfc1918_192("192.168.1.1", Special::Private)]
    #[case::metadata("169.254.169.254", Special::LinkLocal)]
    #[case::cgnat("100.64.0.1", Special::SharedAddressSpace)]
    #[case::cgnat_top("100.127.255.255", Special::SharedAddressSpace)]
    #[case::unspecified("0.0.0.0", Special::Unspecified)]
    #[case::this_network("0.1.2.3", Special::Unspecified)]
    #[case::broadcast("255.255.255.255", Special::Reserved)]
    #[case::class_e("240.0.0.1", Special::Reserved)]
    #[case::multicast("224.0.0.1", Special::Multicast)]
    #[case::test_net("192.0.2.10", Special::Documentation)]
    #[case::benchmarking("198.18.0.1", Special::Benchmarking)]
    #[case::ietf("192.0.0.8", Special::Protocol)]
    #[case::v6_loopback("::1", Special::Loopback)]
    #[case::v6_unspecified("::", Special::Unspecified)]
    #[case::v6_unique_local("fd12:3456::1", Special::UniqueLocal)]
    #[case::v6_unique_local_fc("fc00::1", Special::UniqueLocal)]
    #[case::v6_link_local("fe80::1", Special::LinkLocal)]
    #[case::v6_site_local("fec0::1", Special::SiteLocal)]
    #[case::v6_multicast("ff02::1", Special::Multicast)]
    #[case::v6_documentation("2001:db8::1", Special::Documentation)]
    #[case::v6_teredo("2001::1", Special::Protocol)]
    #[case::v6_6to4("2002:7f00:1::1", Special::Translation)]
    #[case::v6_ipv4_compatible("::7f00:1", Special::Translation)]
    #[case::v6_local_nat64("64:ff9b:1::1", Special::Translation)]
    #[case::mapped_loopback("::ffff:127.0.0.1", Special::Loopback)]
    #[case::mapped_private("::ffff:10.0.0.1", Special::Private)]
    #[case::mapped_metadata("::ffff:169.254.169.254", Special::LinkLocal)]
    #[case::nat64_loopback("64:ff9b::7f00:1", Special::Loopback)]
    fn special_addresses_are_classified(#[case] address: &str, #[case] kind: Special) {
        assert_eq!(classify(ip(address)), Some(kind));
        assert_eq!(
            AddressPolicy::default().check(ip(address)),
            Err(Blocked {
                address: ip(address),
                kind
            })
        );
    }

    #[rstest]
    #[case("93.184.215.14")]
    #[case("8.8.8.8")]
    #[case("1.1.1.1")]
    #[case("100.63.255.255")]
    #[case("100.128.0.0")]
    #[case("172.15.255.255")]
    #[case("172.32.0.0")]
    #[case("169.253.255.255")]
    #[case("223.255.255.255")]
    #[case("2606:4700:4700::1111")]
    #[case("2a00:1450:4001::200e")]
    #[case("::ffff:8.8.8.8")]
    #[case("64:ff9b::808:808")]
    fn public_addresses_pass(#[case] address: &str) {
        assert_eq!(classify(ip(address)), None);
        assert_eq!(AddressPolicy::default().check(ip(address)), Ok(()));
    }

    /// Whatever std calls special, we refuse too.
    #[rstest]
    #[case("127.0.0.1")]
    #[case("10.1.1.1")]
    #[case("169.254.0.1")]
    #[case("255.255.255.255")]
    #[case("203.0.113.1")]
    #[case("::1")]
    #[case("fe80::abcd")]
    #[case("fd00::1")]
    #[case("ff05::2")]
    fn std_agrees(#[case] address: &str) {
        let address = ip(address);
        let std_special = match address {
            IpAddr::V4(v4) => {
                v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_broadcast()
                    || v4.is_documentation()
                    || v4.is_multicast()
                    || v4.is_unspecified()
            }
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
                    || v6.is_multicast()
                    || v6.is_unspecified()
            }
        };
        assert!(std_special);
        assert!(classify(address).is_some());
    }

    #[test]
    fn allow_private_opens_internal_unicast_only() {
        let policy = AddressPolicy {
            allow_private: true,
            allowed_networks: Vec::new(),
        };
        for allowed in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fd00::1"] {
            assert_eq!(policy.check(ip(allowed)), Ok(()), "{allowed}");
        }
        for refused in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "ff02::1"] {
            assert!(policy.check(ip(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn allowed_networks_open_just_themselves() {
        let policy = AddressPolicy {
            allow_private: false,
            allowed_networks: vec![
                "127.0.0.1/32".parse().unwrap(),
                "fd00::/16".parse().unwrap(),
            ],
        };
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("fd00::5")), Ok(()));
        assert!(policy.check(ip("127.0.0.2")).is_err());
        assert!(policy.check(ip("::1")).is_err());
        assert!(policy.check(ip("fd01::5")).is_err());
        assert!(policy.check(ip("10.0.0.1")).is_err());
    }

    #[rstest]
    #[case("http://127.0.0.1:8080/x")]
    #[case("http://[::1]/")]
    #[case("http://[::ffff:127.0.0.1]/")]
    #[case("http://2130706433/")]
    #[case("http://0x7f.1/")]
    #[case("http://0177.0.0.1/")]
    #[case("http://10.0.0.1/")]
    #[case("http://169.254.169.254/latest/meta-data/")]
    #[case("http://0/")]
    fn ip_literals_in_urls_are_checked(#[case] url: &str) {
        let url = Url::parse(url).unwrap();
        assert!(AddressPolicy::default().check_url(&url).is_err(), "{url}");
    }

    #[test]
    fn names_in_urls_are_left_to_the_resolver() {
        let url = Url::parse("http://localhost:8080/").unwrap();
        assert_eq!(AddressPolicy::default().check_url(&url), Ok(()));
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let refusing = GuardedResolver::new(Arc::new(AddressPolicy::default()));
        match refusing.lookup("localhost").await {
            Err(ResolveError::Blocked(blocked)) => assert_eq!(blocked.kind, Special::Loopback),
            other => panic!("localhost must be refused: {other:?}"),
        }
        let allowing = GuardedResolver::new(Arc::new(AddressPolicy {
            allow_private: true,
            allowed_networks: Vec::new(),
        }));
        let found = allowing.lookup("localhost").await.unwrap();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
    }
}
