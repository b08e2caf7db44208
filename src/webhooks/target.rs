//! Where a webhook may be sent: `http` or `https` URLs whose host resolves only to public
//! addresses — never loopback, private, link-local (cloud metadata), shared (CGNAT),
//! unspecified, multicast or documentation ranges, unless `webhooks.allow_private_targets`.
//! Checked when an endpoint is saved and again on every send (by the sender's resolver), so a
//! name that later resolves to a private address is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hyper::Uri;

use crate::error::AppError;

/// The longest URL accepted.
const MAX_URL: usize = 2048;

/// `url` parsed, if it is an acceptable webhook target in form (scheme, host, no user info).
pub fn parse(url: &str) -> Result<Uri, AppError> {
    let bad = |why: &str| AppError::bad_input(format!("url: {why}"));
    if url.len() > MAX_URL {
        return Err(bad(&format!("at most {MAX_URL} characters")));
    }
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("must be http:// or https://"));
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry a user name or password"));
    }
    if authority.host().is_empty() {
        return Err(bad("names no host"));
    }
    Ok(uri)
}

/// Checks that `uri`'s host resolves, and only to addresses webhooks may go to.
pub async fn check(uri: &Uri, allow_private: bool) -> Result<(), AppError> {
    let host = host_of(uri);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| AppError::bad_input(format!("url: {host} does not resolve")))?
            .map(|a| a.ip())
            .collect(),
    };
    match addresses.iter().find(|ip| !allowed(**ip, allow_private)) {
        Some(ip) => Err(AppError::WebhookUrlNotAllowed(format!(
            "{host} is {ip}, a private, loopback or otherwise internal address"
        ))),
        None if addresses.is_empty() => {
            Err(AppError::bad_input(format!("url: {host} does not resolve")))
        }
        None => Ok(()),
    }
}

/// The host of `uri`, without the brackets of an IPv6 literal.
pub fn host_of(uri: &Uri) -> &str {
    let host = uri.host().unwrap_or_default();
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether a webhook may be sent to `ip`.
pub fn allowed(ip: IpAddr, allow_private: bool) -> bool {
    allow_private || is_public(ip)
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (CGNAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // Benchmarking, 198.18.0.0/15; reserved, 240.0.0.0/4.
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // Documentation, 2001:db8::/32.
        || (first == 0x2001 && ip.segments()[1] == 0xdb8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(!allowed(ip, false), "{internal} must be refused");
            assert!(
                allowed(ip, true),
                "{internal} is allowed when private targets are"
            );
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(allowed(public.parse().unwrap(), false), "{public}");
        }
    }

    #[test]
    fn only_plain_http_and_https_urls_are_targets() {
        assert!(parse("https://hooks.example.com/tollgate").is_ok());
        assert!(parse("http://[::1]:8080/x").is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "/relative",
            "not a url",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let uri = parse("http://[::1]:8080/x").unwrap();
        assert_eq!(host_of(&uri), "::1");
    }
}
