//! `chronicle health`: asks a running server's `/api/health`, so a container's HEALTHCHECK
//! needs no curl in the image.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use url::Url;

use crate::config::Settings;

/// Exits 0 when the server answers 200 `{"status": "ok"}`, 1 otherwise (with one line on
/// stderr saying what it got).
///
/// Without `url` it asks this configuration's own server on loopback, over HTTPS when
/// Chronicle serves TLS itself; that certificate is not checked, since it names the public
/// host and not 127.0.0.1, and nothing secret is sent.
pub async fn check(
    settings: &Settings,
    url: Option<Url>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let (url, own_server) = match url {
        Some(url) => (url, false),
        None => (own_url(settings)?, true),
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .danger_accept_invalid_certs(own_server)
        .build()
        .context("cannot build an HTTP client")?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("health: {url} did not answer"))?;
    let status = response.status();
    let body: Option<serde_json::Value> = response.json().await.ok();
    let ok = body
        .as_ref()
        .and_then(|body| body.get("status"))
        .and_then(|status| status.as_str())
        == Some("ok");
    if status.is_success() && ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("chronicle: health: {url} answered {status}, not {{\"status\": \"ok\"}}");
        Ok(ExitCode::FAILURE)
    }
}

/// `/api/health` of the server `settings` describe, reached on loopback when it listens on
/// every address.
fn own_url(settings: &Settings) -> anyhow::Result<Url> {
    let scheme = if settings.tls.paths().is_some() {
        "https"
    } else {
        "http"
    };
    let address = reachable(settings.bind);
    Url::parse(&format!("{scheme}://{address}/api/health"))
        .with_context(|| format!("health: no URL for bind address {}", settings.bind))
}

fn reachable(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bind.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bind.port())
        }
        _ => bind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_url_is_on_loopback_when_bound_to_every_address() {
        let mut settings = Settings {
            bind: "0.0.0.0:8080".parse().expect("address"),
            ..Settings::default()
        };
        assert_eq!(
            own_url(&settings).expect("url").as_str(),
            "http://127.0.0.1:8080/api/health"
        );
        settings.bind = "[::]:9000".parse().expect("address");
        assert_eq!(
            own_url(&settings).expect("url").as_str(),
            "http://[::1]:9000/api/health"
        );
        settings.bind = "192.0.2.7:1".parse().expect("address");
        settings.tls.cert_path = Some("cert.pem".into());
        settings.tls.key_path = Some("key.pem".into());
        assert_eq!(
            own_url(&settings).expect("url").as_str(),
            "https://192.0.2.7:1/api/health"
        );
    }
}
