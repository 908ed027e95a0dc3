//! Who the client is at the network level: the peer's address, or behind a trusted reverse
//! proxy (`CHRONICLE_TRUSTED_PROXIES`) the address that proxy saw. `X-Forwarded-For` and
//! `X-Forwarded-Proto` from anyone else are the client's own words and are ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use super::AppState;

const FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The client's address, left in each request's extensions by [`layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// How the request reached Chronicle, by the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaHttps(pub bool);

/// The networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|network| network.contains(&ip))
    }

    /// The client of a request from `peer`: the peer itself unless it is a trusted proxy;
    /// then the rightmost `X-Forwarded-For` hop that is not a trusted proxy (hops to its
    /// left were written by the client and prove nothing).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for hop in hops.iter().rev() {
            // A hop that is not an address ends the trail: keep the last proxy's word.
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }

    /// Whether the request came over HTTPS: `tls` when Chronicle terminates it, else the
    /// `X-Forwarded-Proto` of a trusted proxy peer.
    pub fn via_https(&self, tls: bool, peer: IpAddr, headers: &HeaderMap) -> bool {
        if tls {
            return true;
        }
        if !self.trusts(peer) {
            return false;
        }
        // The last value is the nearest proxy's.
        headers
            .get_all(FORWARDED_PROTO)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .next_back()
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
    }
}

impl ClientIp {
    /// The key the per-IP rate limits count under: an IPv4 address, or the /64 of an IPv6
    /// one (one subscriber's usual allocation, so that a client does not get 2^64 budgets).
    pub fn rate_key(self) -> IpAddr {
        match self.0 {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
            v4 => v4,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `203.0.113.7`, `2001:db8::1`, `203.0.113.7:4711` or `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .map(canonical)
}

/// Puts [`ClientIp`] and [`ViaHttps`] in the request's extensions.
pub async fn layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    let client = state.proxies.client(peer, request.headers());
    let https = state.proxies.via_https(
        state.settings.tls.paths().is_some(),
        peer,
        request.headers(),
    );
    request.extensions_mut().insert(ClientIp(client));
    request.extensions_mut().insert(ViaHttps(https));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap(),
        ])
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            proxies().client(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &headers),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        // The client claims to be 1.1.1.1; the proxies appended what they saw.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(
            proxies().client(ip("10.0.0.1"), &headers),
            ip("203.0.113.9")
        );
        let headers = forwarded(&["203.0.113.9:4711"]);
        assert_eq!(
            proxies().client(ip("192.0.2.1"), &headers),
            ip("203.0.113.9")
        );
        let headers = forwarded(&["[2001:db8::7]:80"]);
        assert_eq!(
            proxies().client(ip("10.0.0.1"), &headers),
            ip("2001:db8::7")
        );
        // IPv4-mapped peers are their IPv4 selves.
        assert_eq!(
            proxies().client(ip("::ffff:10.0.0.1"), &forwarded(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn garbage_or_no_header_leaves_the_nearest_proxy() {
        assert_eq!(
            proxies().client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        let headers = forwarded(&["203.0.113.9, nonsense, 10.2.2.2"]);
        assert_eq!(proxies().client(ip("10.0.0.1"), &headers), ip("10.2.2.2"));
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        assert_eq!(ClientIp(ip("203.0.113.9")).rate_key(), ip("203.0.113.9"));
        assert_eq!(
            ClientIp(ip("2001:db8:1:2:aaaa::1")).rate_key(),
            ClientIp(ip("2001:db8:1:2:bbbb::2")).rate_key()
        );
        assert_ne!(
            ClientIp(ip("2001:db8:1:2::1")).rate_key(),
            ClientIp(ip("2001:db8:1:3::1")).rate_key()
        );
    }

    #[test]
    fn only_a_trusted_proxy_says_https() {
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static("https"));
        assert!(proxies().via_https(false, ip("10.0.0.1"), &headers));
        assert!(!proxies().via_https(false, ip("198.51.100.1"), &headers));
        assert!(!proxies().via_https(false, ip("10.0.0.1"), &HeaderMap::new()));
        assert!(proxies().via_https(true, ip("198.51.100.1"), &HeaderMap::new()));
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static("https, http"));
        assert!(!proxies().via_https(false, ip("10.0.0.1"), &headers));
    }
}
