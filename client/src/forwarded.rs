//! Where a request came from: the peer's address, or `X-Forwarded-For` when the peer is a
//! trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::request::Parts;

use crate::error::Error;

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for IpNet {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("trustedProxies", format!("{text:?} is not an IP network"));
        let (addr, prefix) = text
            .split_once('/')
            .map_or((text, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer's, or when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` that is not one.
pub(crate) fn client_ip(trusted_proxies: &[IpNet], request: &Parts) -> Option<IpAddr> {
    let peer = peer_addr(request)?;
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(peer) {
        return Some(peer);
    }
    // Every X-Forwarded-For line in order (a proxy may add a line of its own rather than
    // extend the last), read from the nearest hop back.
    let mut hops = Vec::new();
    for value in request.headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return Some(peer);
        };
        hops.extend(value.split(','));
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return Some(client);
        };
        client = ip;
        if !trusted(ip) {
            return Some(ip);
        }
    }
    Some(client)
}

fn peer_addr(request: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = request
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    request.extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_ip_of(trusted: &[&str], peer: &str, lines: &[&str]) -> Option<IpAddr> {
        let nets: Vec<IpNet> = trusted
            .iter()
            .map(|t| t.parse().expect("network"))
            .collect();
        let mut request = http::Request::builder().uri("/");
        for line in lines {
            request = request.header("x-forwarded-for", *line);
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        parts
            .extensions
            .insert(SocketAddr::new(peer.parse().expect("ip"), 443));
        client_ip(&nets, &parts)
    }
    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip_of(&[], "198.51.100.1", &["6.6.6.6"]),
            ip("198.51.100.1")
        );
        // A trusted proxy: the nearest untrusted hop, across every header line.
        let proxies = ["10.0.0.0/8", "127.0.0.1"];
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["6.6.6.6, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["6.6.6.6", "203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["203.0.113.9, 10.1.2.3"]),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the last address believed.
        assert_eq!(
            client_ip_of(&proxies, "127.0.0.1", &["203.0.113.9, junk"]),
            ip("127.0.0.1")
        );
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!(
            "::ffff:10.1.1.1"
                .parse::<IpAddr>()
                .is_ok_and(|a| "10.0.0.0/8".parse::<IpNet>().expect("net").contains(a))
        );
    }
}
