//! Helpers for error messages shared by the agent and the controller.

/// The whole chain of an error, for messages that say why (TLS alerts hide in sources): each
/// source's text is appended after `": "` unless an earlier message already contains it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{msg}")]
    struct E {
        msg: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(msg: &'static str, source: Option<E>) -> E {
        E { msg, source: source.map(Box::new) }
    }

    #[test]
    fn every_source_is_named_once() {
        let inner = e("alert: unknown ca", None);
        let mid = e("tls handshake failed", Some(inner));
        assert_eq!(
            error_chain(&e("cannot reach 127.0.0.1:7443", Some(mid))),
            "cannot reach 127.0.0.1:7443: tls handshake failed: alert: unknown ca"
        );
        let repeated = e("transport error: tls handshake failed", Some(e("tls handshake failed", None)));
        assert_eq!(error_chain(&repeated), "transport error: tls handshake failed");
    }
}
