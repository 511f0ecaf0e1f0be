//! The address checks of a scan's webhook: which URLs a tenant may give, which addresses a
//! delivery must not reach, and how errors and logs name a target without its secrets.
use std::net::IpAddr;

/// Whether an address is one a tenant's webhook must not reach: loopback, private, link-local,
/// unique-local, unspecified, multicast or documentation ranges (the deployment's own network).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // Addresses that carry an IPv4 one: NAT64 (64:ff9b::/96), IPv4-compatible (::/96),
            // 6to4 (2002::/16) reach that IPv4 address.
            // So do IPv4-translated addresses (SIIT, ::ffff:0:a.b.c.d).
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
                || (s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified())
            {
                return is_internal(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_internal(embedded(s[1], s[2]));
            }
            // Teredo (2001::/32) tunnels to an IPv4 address obfuscated in its last bits and
            // relayed by a server named in the address: refused whole, as are documentation
            // (2001:db8::/32) and discard-only (100::/64) addresses.
            v6.is_loopback()
                || (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0x0db8))
                || s[..4] == [0x100, 0, 0, 0]
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                || (s[0] & 0xffc0) == 0xfec0
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// How errors and logs name a webhook target: its scheme, host and port only. A URL's path and
/// query may carry a secret (a token in `?key=`), which must not reach an error column, the
/// alerts API or a log line.
pub fn shown_target(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let scheme: String = scheme
        .chars()
        .take(8)
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host_port: String = host_port
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        .take(260)
        .collect();
    let has_port = host_port.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with(':')
            && !p.is_empty()
            && p.chars().all(|c| c.is_ascii_digit())
            && (!h.starts_with('[') || h.ends_with(']'))
    });
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => "",
    };
    if has_port {
        format!("{scheme}://{host_port}")
    } else {
        format!("{scheme}://{host_port}{default_port}")
    }
}

/// The host and port of a webhook URL, checked lexically: http or https, no credentials, and,
/// unless `allow_internal`, no internal address literal or `localhost`. Names are resolved and
/// checked again at each delivery.
pub fn check_webhook_url(url: &str, allow_internal: bool) -> Result<(String, u16), String> {
    if url.len() > 2048 {
        return Err("at most 2048 characters".into());
    }
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else if let Some(r) = url.strip_prefix("http://") {
        (r, 80)
    } else {
        return Err(format!(
            "`{}`: an http:// or https:// URL",
            shown_target(url)
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in the URL are not accepted".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an unclosed [ in the host")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("port `{p}`"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(format!("`{}`: no host", shown_target(url)));
    }
    // Plain names and address literals only: a backslash, a percent escape or a non-ASCII name
    // is read differently by different URL parsers, and the host checked must be the host used.
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(format!(
            "`{host}`: a host name of letters, digits, dots and dashes"
        ));
    }
    if !allow_internal {
        let internal = match host.parse::<IpAddr>() {
            Ok(ip) => is_internal(ip),
            Err(_) => {
                let h = host.to_ascii_lowercase();
                h == "localhost" || h.ends_with(".localhost") || h.ends_with(".internal")
            }
        };
        if internal {
            return Err(format!(
                "`{host}` is an internal address; this deployment delivers webhooks only to public hosts"
            ));
        }
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        assert_eq!(
            check_webhook_url("https://hooks.example.com/x", false),
            Ok(("hooks.example.com".into(), 443))
        );
        for bad in [
            "ftp://x",
            "http://user:pw@example.com/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://localhost:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:a00:1::]/",
            "http://[::10.0.0.1]/",
            "http://198.18.0.1/",
            "http://169.254.169.254\\x.example.com/",
            "http://%61.example.com/",
        ] {
            assert!(check_webhook_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_webhook_url("http://127.0.0.1:9/", true).is_ok());
        for ip in [
            "::ffff:0:10.0.0.1",
            "::ffff:0:127.0.0.1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        assert!(!is_internal("2001:4860:4860::8888".parse().expect("ip")));
        assert!(!is_internal("2606:4700::1111".parse().expect("ip")));
        assert!(!is_internal("8.8.8.8".parse().expect("ip")));
    }
}
