//! Enrolment tokens: `p2c1.` followed by base64url JSON naming the controller's addresses,
//! the SHA-256 fingerprint of its CA (which the agent pins), a token id, a secret, the agent
//! name and the expiry. The controller stores only a hash of the secret, and a token works
//! once.

use base64::Engine;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "p2c1.";
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("this is not a p2c enrolment token ({0}); copy the whole line printed by `p2c token create`")]
    Malformed(String),
    #[error("the token expired at {0} (unix time); create a new one with `p2c token create`")]
    Expired(u64),
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Addresses (`host:port`) the agent may dial, in order.
    pub addrs: Vec<String>,
    /// SHA-256 of the controller CA's DER, lower-case hex.
    pub ca: String,
    /// Token identifier (hex).
    pub id: String,
    /// The one-time secret (hex).
    pub secret: String,
    /// The agent name the certificate will carry.
    pub name: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("addrs", &self.addrs)
            .field("ca", &self.ca)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Random bytes as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // ring's SystemRandom is getrandom(2); it does not fail on Linux.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a token secret, hex: what the controller stores.
pub fn secret_hash(secret: &str) -> String {
    crate::pki::fingerprint(secret.as_bytes())
}

impl Token {
    pub fn encode(&self) -> String {
        // Serialising a struct of strings and numbers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        let bad = |why: &str| TokenError::Malformed(why.to_string());
        if s.len() > MAX_TOKEN_LEN {
            return Err(bad("too long"));
        }
        let body = s.strip_prefix(PREFIX).ok_or_else(|| bad("it does not start with p2c1."))?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("it is not valid base64url"))?;
        let t: Token = serde_json::from_slice(&json).map_err(|_| bad("its content is not a token"))?;
        if !is_hex(&t.ca, 64) || !is_hex(&t.id, 16) || !is_hex(&t.secret, 64) {
            return Err(bad("its fields are damaged"));
        }
        if t.addrs.is_empty() || t.addrs.iter().any(|a| a.is_empty() || a.len() > 255) {
            return Err(bad("it names no controller address"));
        }
        crate::pki::validate_agent_name(&t.name).map_err(|_| bad("its agent name is invalid"))?;
        Ok(t)
    }

    /// Errors if the token has expired at `now` (seconds since the epoch).
    pub fn check_expiry(&self, now: u64) -> Result<(), TokenError> {
        if now >= self.exp { Err(TokenError::Expired(self.exp)) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Token {
        Token {
            addrs: vec!["127.0.0.1:7443".into()],
            ca: "ab".repeat(32),
            id: random_hex(8),
            secret: random_hex(32),
            name: "web01".into(),
            exp: 2_000_000_000,
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        assert_eq!(Token::decode(&format!("  {}\n", t.encode())).unwrap(), t);
    }

    #[test]
    fn damaged_tokens_are_refused() {
        let good = sample().encode();
        let mut flipped = good.clone().into_bytes();
        let n = flipped.len();
        flipped[n - 5] = if flipped[n - 5] == b'A' { b'B' } else { b'A' };
        let cases = [
            String::new(),
            "p2c1.".into(),
            "hello".into(),
            good[..good.len() - 10].to_string(),
            String::from_utf8(flipped).unwrap(),
            format!("p2c1.{}", "A".repeat(5000)),
        ];
        for c in cases {
            assert!(matches!(Token::decode(&c), Err(TokenError::Malformed(_))), "{c:?}");
        }
    }

    #[test]
    fn expiry() {
        let t = sample();
        assert!(t.check_expiry(t.exp - 1).is_ok());
        assert_eq!(t.check_expiry(t.exp), Err(TokenError::Expired(t.exp)));
    }
}
