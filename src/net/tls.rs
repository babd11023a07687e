//! DICOM TLS (PS3.15 Annex B, the BCP 195 profile) for the receiver (`[dicom.tls]`: callers must
//! present a certificate chaining to `client_ca`) and the sender (`[export.tls]`: the PACS's
//! certificate must chain to `ca` and name the peer's host), with rustls and its ring provider:
//! TLS 1.2 and 1.3, ECDHE key exchange, AES-GCM or ChaCha20-Poly1305 only. Also what `doctor`
//! checks of the files: readable, the key matching the certificate, the dates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ExportTls, ReceiverTls};

/// Why TLS cannot be set up from the configured files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = \"{}\": {reason}", path.display())]
pub struct TlsError {
    /// The config key of the file.
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

// ring: ECDHE (X25519, P-256, P-384) with AES-GCM and ChaCha20-Poly1305, all BCP 195 allows;
// rustls marks it deprecated for lacking post-quantum key exchange, which DICOM TLS does not ask.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError { key, path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| err(format!("not PEM certificates: {e:?}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in it (PEM, \"BEGIN CERTIFICATE\")".into()));
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let err = |reason: String| TlsError { key, path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| err(format!("no PEM private key in it: {e:?}")))
}

fn roots(key: &'static str, path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(key, path)? {
        store.add(c).map_err(|e| TlsError { key, path: path.to_path_buf(), reason: format!("not a usable CA certificate: {e}") })?;
    }
    Ok(Arc::new(store))
}

/// The receiver's TLS configuration: our certificate and key, and every caller must present a
/// certificate chaining to `client_ca`.
pub fn server_config(t: &ReceiverTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs("dicom.tls.certificate", &t.certificate)?;
    let key = private_key("dicom.tls.private_key", &t.private_key)?;
    let roots = roots("dicom.tls.client_ca", &t.client_ca)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(|e| TlsError {
        key: "dicom.tls.client_ca",
        path: t.client_ca.clone(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError { key: "dicom.tls.certificate", path: t.certificate.clone(), reason: e.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError { key: "dicom.tls.private_key", path: t.private_key.clone(), reason: format!("does not go with dicom.tls.certificate: {e}") })?;
    Ok(Arc::new(config))
}

/// The sender's TLS configuration: the PACS's certificate must chain to `ca`; our client
/// certificate when one is configured.
pub fn client_config(t: &ExportTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots("export.tls.ca", &t.ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError { key: "export.tls.ca", path: t.ca.clone(), reason: e.to_string() })?
        .with_root_certificates(roots);
    let config = match (&t.certificate, &t.private_key) {
        (Some(c), Some(k)) => builder.with_client_auth_cert(certs("export.tls.certificate", c)?, private_key("export.tls.private_key", k)?).map_err(|e| TlsError {
            key: "export.tls.private_key",
            path: k.clone(),
            reason: format!("does not go with export.tls.certificate: {e}"),
        })?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The PACS's TLS configuration and host name (what its certificate must name), when
/// `[export.tls]` is set. Read at each association, so a renewed file is used at once; a file
/// that does not work is a refusal by configuration (it waits the longest back-off).
pub fn for_peer(settings: &crate::config::ExportSettings) -> Result<Option<(Arc<rustls::ClientConfig>, String)>, super::Error> {
    let Some(t) = &settings.tls else { return Ok(None) };
    let config = client_config(t).map_err(|e| super::Error::Refused(format!("export.tls: {e}")))?;
    let host = settings.peer.rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')).unwrap_or(&settings.peer).to_string();
    Ok(Some((config, host)))
}

/// What `doctor` says of one certificate file: its first certificate's end of validity, and a
/// warning within 30 days of it (an error once past).
pub fn expiry(key: &'static str, path: &Path, now_unix: i64) -> Result<(i64, Option<String>), TlsError> {
    let first = certs(key, path)?.remove(0);
    let not_after = not_after(first.as_ref()).ok_or_else(|| TlsError { key, path: path.to_path_buf(), reason: "its validity cannot be read".into() })?;
    let days = (not_after - now_unix) as f64 / 86400.0;
    let warn = if days < 0.0 {
        return Err(TlsError { key, path: path.to_path_buf(), reason: format!("expired {:.0} days ago", -days) });
    } else if days < 30.0 {
        Some(format!("{key} expires in {days:.0} days: renew it"))
    } else {
        None
    };
    Ok((not_after, warn))
}

/// A DER element at `at`: (tag, content start, content end).
fn der(bytes: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let tag = *bytes.get(at)?;
    let first = *bytes.get(at + 1)? as usize;
    let (len, start) = if first < 0x80 {
        (first, at + 2)
    } else {
        let n = first & 0x7F;
        if n == 0 || n > 4 {
            return None;
        }
        let len = bytes.get(at + 2..at + 2 + n)?.iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, at + 2 + n)
    };
    (start + len <= bytes.len()).then_some((tag, start, start + len))
}

/// A certificate's notAfter (unix seconds), from its DER.
fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, c0, _) = der(cert, 0)?; // Certificate
    let (_, t0, t1) = der(cert, c0)?; // tbsCertificate
    let mut at = t0;
    let mut fields = Vec::new();
    while at < t1 {
        let (tag, s, e) = der(cert, at)?;
        fields.push((tag, s, e));
        at = e;
    }
    // [0] version (optional), serialNumber, signature, issuer, validity, …
    let skip = usize::from(fields.first()?.0 == 0xA0);
    let (_, v0, _) = *fields.get(skip + 3)?;
    let (_, _, nb_end) = der(cert, v0)?;
    let (tag, s, e) = der(cert, nb_end)?;
    let text = std::str::from_utf8(&cert[s..e]).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(0..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(0..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| rest.get(r).and_then(|x| x.parse::<i64>().ok());
    let (month, day, hour, min, sec) = (n(0..2)?, n(2..4)?, n(4..6)?, n(6..8)?, n(8..10)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hour * 3600 + min * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_validity_is_read_from_the_der() {
        // A certificate's validity as openssl writes it: UTCTime 2026-12-04 and GeneralizedTime 2051.
        let utc = b"261204210000Z";
        let gen = b"20510101000000Z";
        let mut tbs = vec![0xA0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01, 0x30, 0x00, 0x30, 0x00];
        let mut validity = vec![0x17, utc.len() as u8];
        validity.extend_from_slice(utc);
        validity.extend_from_slice(&[0x18, gen.len() as u8]);
        validity.extend_from_slice(gen);
        tbs.extend_from_slice(&[0x30, validity.len() as u8]);
        tbs.extend_from_slice(&validity);
        let mut cert = vec![0x30, (tbs.len() + 2) as u8, 0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        assert_eq!(not_after(&cert), Some(2556144000), "2051-01-01T00:00:00Z");
    }
}
