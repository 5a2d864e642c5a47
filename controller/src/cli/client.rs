//! The admin-socket client used by `p2c`.

use std::path::Path;

use hyper_util::rt::TokioIo;
use p2c_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

/// Connects to the controller whose state dir is `state_dir`.
pub async fn connect(state_dir: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let sock = crate::config::admin_socket(state_dir);
    if !sock.exists() {
        anyhow::bail!(
            "no controller is running with state dir {} (no socket at {}); start it with `p2c-controller serve --state-dir {}` or pass --state-dir",
            state_dir.display(),
            sock.display(),
            state_dir.display()
        );
    }
    let path = sock.clone();
    let ch = Endpoint::from_static("http://p2c-admin")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the controller at {}: {}; is `p2c-controller serve` running (and are you root)?",
                sock.display(),
                p2c_common::errors::error_chain(&e)
            )
        })?;
    let max = p2c_common::manifest::limits::MAX_MESSAGE;
    Ok(AdminClient::new(ch).max_decoding_message_size(max).max_encoding_message_size(max))
}

/// A gRPC error as an operator-facing error (the message already says what to do).
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}
