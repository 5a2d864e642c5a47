//! A tiny HTTP CONNECT proxy, as a DMZ's egress proxy would be: it reads one `CONNECT
//! host:port` request per connection, logs it, resolves the host from its own table of names
//! (names nothing else resolves, so an agent told such a name can only reach the controller
//! through the proxy), answers `200` and forwards bytes both ways. Or it refuses every
//! request with a status of the test's choice.

use p2c_common::sync::Locked;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with a `CONNECT`.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Forwards to the address its table gives for `host:port`; unknown names get `502`.
    Forward(HashMap<String, SocketAddr>),
    /// Answers every request with this status line (e.g. `403 Forbidden`) and closes.
    Refuse(String),
}

/// A running proxy on 127.0.0.1.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start(policy: Policy) -> std::io::Result<ConnectProxy> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let (policy, log) = (policy.clone(), log2.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(client, &policy, &log).await {
                        tracing::debug!("proxy connection: {e}");
                    }
                });
            }
        });
        Ok(ConnectProxy { addr, log, task })
    }

    /// The URL agents are given (`--proxy`, `proxy =`, `https_proxy`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines received so far (`CONNECT host:port HTTP/1.1`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.log.locked().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, policy: &Policy, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    // The request head, byte by byte so nothing after it is swallowed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read(&mut b).await? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default().to_string();
    tracing::info!(request = %line, "proxy");
    log.locked().push(line.clone());
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let reply = |status: &str| format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let upstream = match policy {
        Policy::Refuse(status) => {
            client.write_all(reply(status).as_bytes()).await?;
            return Ok(());
        }
        Policy::Forward(_) if method != "CONNECT" => {
            client.write_all(reply("405 Method Not Allowed").as_bytes()).await?;
            return Ok(());
        }
        Policy::Forward(table) => match table.get(target) {
            Some(a) => TcpStream::connect(a).await,
            None => Err(std::io::Error::other(format!("unknown host {target}"))),
        },
    };
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(_) => {
            client.write_all(reply("502 Bad Gateway").as_bytes()).await?;
            return Ok(());
        }
    };
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
