//! The agent's one outbound connection: TCP (optionally through an HTTP CONNECT proxy),
//! TLS 1.3 with the node CA pinned, HTTP/2 for gRPC.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// The helper lives in `p2c_common` (the controller uses it too); kept here for the agent's callers.
pub use p2c_common::errors::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the controller at {addrs}: {reason}")]
    Unreachable { addrs: String, reason: String },
    #[error("proxy {proxy}: {reason}")]
    Proxy { proxy: String, reason: String },
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens a TCP connection to `addr`, through `proxy` (`http://host:port`) if given.
pub async fn tcp(addr: &str, proxy: Option<&str>) -> std::io::Result<TcpStream> {
    let Some(proxy) = proxy else {
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        return Ok(s);
    };
    let hostport = proxy
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .rsplit_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap_or_else(|| proxy.trim_start_matches("http://").trim_end_matches('/').to_string());
    let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&hostport))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("proxy {proxy}: connect timed out"))
        })?
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot reach the proxy {proxy}: {e}")))?;
    s.set_nodelay(true)?;
    let req = format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: p2c-agent\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    let mut b = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        if resp.len() > 8192 {
            return Err(std::io::Error::other("proxy sent an oversized response"));
        }
        if s.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("proxy closed the connection"));
        }
        resp.push(b[0]);
    }
    let status = String::from_utf8_lossy(&resp);
    let line = status.lines().next().unwrap_or_default().to_string();
    if line.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!(
            "proxy {proxy} refused CONNECT {addr}: {line}; have {addr} allowed through it, or set another proxy (--proxy at enrolment, `proxy =` in agent.toml, https_proxy)"
        )));
    }
    Ok(s)
}

/// A gRPC channel to the first controller address that answers.
pub async fn channel(
    addrs: &[String],
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<String>,
) -> Result<Channel, ConnectError> {
    let mut last = String::from("no address configured");
    for addr in addrs {
        let target = addr.clone();
        let tls = tls.clone();
        let proxy = proxy.clone();
        let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
            let addr = target.clone();
            let tls = tls.clone();
            let proxy = proxy.clone();
            async move {
                let tcp = tcp(&addr, proxy.as_deref()).await?;
                let conn = tokio_rustls::TlsConnector::from(tls);
                let stream =
                    tokio::time::timeout(CONNECT_TIMEOUT, conn.connect(p2c_common::pki::server_name(), tcp))
                        .await
                        .map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                        })??;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let ep = Endpoint::from_static("http://p2c-controller")
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(32 * 1024 * 1024))
            .max_frame_size(Some(1 << 20))
            .connect_timeout(CONNECT_TIMEOUT);
        match ep.connect_with_connector(connector).await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = format!("{addr}: {}", error_chain(&e)),
        }
    }
    Err(ConnectError::Unreachable { addrs: addrs.join(", "), reason: last })
}

/// Asks the controller why it refuses this TLS identity: a bare handshake, then one read.
/// Under TLS 1.3 the controller checks the client certificate after the agent considers the
/// handshake done, so a refusal arrives as an alert on the first read, which a failed gRPC
/// call does not always carry (it may only say "operation was canceled"). Returns the error
/// the connection failed with, `None` if it did not fail within a short wait.
pub async fn tls_probe(addr: &str, tls: Arc<rustls::ClientConfig>, proxy: Option<&str>) -> Option<String> {
    let tcp = match tcp(addr, proxy).await {
        Ok(t) => t,
        Err(e) => return Some(e.to_string()),
    };
    let conn = tokio_rustls::TlsConnector::from(tls);
    let mut stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        conn.connect(p2c_common::pki::server_name(), tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Some(e.to_string()),
        Err(_) => return None,
    };
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut b)).await {
        Ok(Err(e)) => Some(e.to_string()),
        _ => None,
    }
}
