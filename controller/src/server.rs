//! The daemon's wiring: the agent endpoint (TLS on TCP: enrolment, sessions, transfers) and
//! the operator's admin socket (gRPC on a root-only Unix socket), both over one
//! [`Controller`] (`crate::context`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use p2c_common::manifest::limits::MAX_MESSAGE;
use p2c_common::pki;
use p2c_proto::v1;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::Settings;
pub use crate::context::Controller;
use crate::context::OpenError;
use crate::state::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("admin socket {path}: {source}")]
    Admin { path: String, source: std::io::Error },
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A running controller (for the daemon, the demo and tests).
pub struct Running {
    pub controller: Controller,
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, closes sessions and waits for the servers to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Stops at once, as a crash would (tests use it to kill the controller).
    pub fn abort(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.controller.abort_all();
    }
}

/// Binds both endpoints and serves them in the background.
pub async fn start(settings: Settings) -> Result<Running, ServeError> {
    let ctl = Controller::new(settings)?;
    let s = &ctl.settings;
    let listener = TcpListener::bind(s.listen)
        .await
        .map_err(|e| ServeError::Listen { addr: s.listen.to_string(), source: e })?;
    let addr =
        listener.local_addr().map_err(|e| ServeError::Listen { addr: s.listen.to_string(), source: e })?;
    let sock_path = s.admin_socket();
    let _ = std::fs::remove_file(&sock_path);
    let admin_err = |e| ServeError::Admin { path: sock_path.display().to_string(), source: e };
    let uds = UnixListener::bind(&sock_path).map_err(admin_err)?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600)).map_err(admin_err)?;

    let tls = pki::server_config(&ctl.pki.ca, &ctl.pki.server, ctl.revoked.clone())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (shutdown, shut_rx) = watch::channel(false);
    let (conn_tx, conn_rx) = mpsc::channel(64);
    let mut tasks = Vec::new();

    let mut accept_shut = shut_rx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => { warn!("accept failed: {e}"); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
                },
                _ = accept_shut.changed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = conn_tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(15), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => info!(%peer, "TLS handshake refused: {e}"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    }));

    let svc = crate::session::AgentService::new(ctl.clone());
    let agent_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024))
        // Chunk data arrives in frames of up to 1 MiB instead of HTTP/2's default 16 KiB.
        .max_frame_size(Some(1 << 20))
        .add_service(v1::enrollment_server::EnrollmentServer::new(crate::enroll::EnrollService::new(
            ctl.clone(),
        )))
        .add_service(
            v1::agent_session_server::AgentSessionServer::new(svc)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        );
    let mut shut = shut_rx.clone();
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
        if let Err(e) = agent_server
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shut.changed().await;
            })
            .await
        {
            warn!("agent endpoint stopped: {e}");
        }
    }));

    let admin = tonic::transport::Server::builder().add_service(
        v1::admin_server::AdminServer::new(crate::admin::AdminService::new(ctl.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    );
    let mut shut = shut_rx.clone();
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);
        if let Err(e) = admin
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shut.changed().await;
            })
            .await
        {
            warn!("admin socket stopped: {e}");
        }
    }));
    crate::migrate::recover(&ctl)?;
    info!(%addr, admin = %sock_path.display(), "controller listening");
    Ok(Running { controller: ctl, addr, shutdown, tasks })
}

/// The daemon: serve until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> Result<(), ServeError> {
    let running = start(settings).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ServeError::Listen { addr: "signal".into(), source: e })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}
