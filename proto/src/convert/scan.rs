//! `ScanRequest` ↔ [`ScanOptions`]. Paths travel as bytes and are held as escaped text
//! (`\xNN` for bytes that are not UTF-8) in the domain type.

use p2c_common::paths::{escape_bytes, unescape_bytes};
use p2c_common::scan::ScanOptions;

use super::ConvertError;
use crate::v1;

impl From<&ScanOptions> for v1::ScanRequest {
    fn from(o: &ScanOptions) -> Self {
        let bytes = |v: &[String]| v.iter().map(|s| unescape_bytes(s)).collect();
        v1::ScanRequest {
            mac_addresses: o.mac_addresses.clone(),
            mac_scan_roots: bytes(&o.mac_scan_roots),
            excludes: bytes(&o.excludes),
        }
    }
}

/// Validates a request from the controller; no MAC roots on the wire means the defaults.
impl TryFrom<v1::ScanRequest> for ScanOptions {
    type Error = ConvertError;
    fn try_from(r: v1::ScanRequest) -> Result<Self, Self::Error> {
        let text = |v: Vec<Vec<u8>>| v.iter().map(|b| escape_bytes(b)).collect();
        let mut o = ScanOptions {
            mac_addresses: r.mac_addresses,
            excludes: text(r.excludes),
            ..ScanOptions::default()
        };
        if !r.mac_scan_roots.is_empty() {
            o.mac_scan_roots = text(r.mac_scan_roots);
        }
        o.validate().map_err(|e| ConvertError::Other(e.to_string()))?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_non_utf8_paths() {
        let o = ScanOptions {
            mac_addresses: vec!["52:54:00:12:34:56".into()],
            excludes: vec![escape_bytes(b"/srv/\xff")],
            ..Default::default()
        };
        let wire = v1::ScanRequest::from(&o);
        assert_eq!(wire.excludes, [b"/srv/\xff".to_vec()]);
        assert_eq!(ScanOptions::try_from(wire).unwrap(), o);
    }

    #[test]
    fn empty_roots_mean_defaults_and_bad_requests_are_refused() {
        let o = ScanOptions::try_from(v1::ScanRequest::default()).unwrap();
        assert_eq!(o, ScanOptions::default());
        let bad = v1::ScanRequest { excludes: vec![b"relative".to_vec()], ..Default::default() };
        assert!(ScanOptions::try_from(bad).is_err());
        let bad = v1::ScanRequest { mac_addresses: vec!["nope".into()], ..Default::default() };
        assert!(ScanOptions::try_from(bad).is_err());
    }
}
