//! Webhook signatures: senders such as GitHub sign the raw body with HMAC-SHA256 and a
//! shared secret (`X-Hub-Signature-256: sha256=<hex>`) instead of sending a bearer token.
//! A stub may have several secrets at once, so a secret can be rotated without downtime.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use warp::http::{HeaderMap, HeaderName};

use super::config::Webhook;
use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Reason a webhook request is not authenticated. The client only ever gets one message,
/// and the reason goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFailure {
    /// No secret is configured for the stub.
    UnknownStub,
    /// The signature header is absent.
    Missing,
    /// A header is present but not `sha256=` and 64 hex digits.
    Malformed,
    /// No secret of the stub produces this signature.
    Mismatch,
}

impl SignatureFailure {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureFailure::UnknownStub => "webhook_not_configured",
            SignatureFailure::Missing => "missing_signature",
            SignatureFailure::Malformed => "malformed_signature",
            SignatureFailure::Mismatch => "invalid_signature",
        }
    }
}

struct Key {
    secret: Secret,
    header: HeaderName,
}

/// The configured secrets, by stub.
pub struct WebhookKeys {
    by_stub: HashMap<String, Vec<Key>>,
}

impl WebhookKeys {
    pub fn new(config: &[Webhook]) -> WebhookKeys {
        let mut by_stub: HashMap<String, Vec<Key>> = HashMap::new();
        for webhook in config {
            // Validation already rejected invalid header names.
            let Ok(header) = HeaderName::from_bytes(webhook.header.as_bytes()) else {
                continue;
            };
            by_stub.entry(webhook.stub.clone()).or_default().push(Key {
                secret: webhook.secret.clone(),
                header,
            });
        }
        WebhookKeys { by_stub }
    }

    /// Checks the signature of `body` (the bytes as received) for `stub`.
    pub fn verify(
        &self,
        stub: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SignatureFailure> {
        let keys = self
            .by_stub
            .get(stub)
            .ok_or(SignatureFailure::UnknownStub)?;
        let mut failure = SignatureFailure::Missing;
        for key in keys {
            let Some(value) = headers.get(&key.header) else {
                continue;
            };
            let Some(signature) = parse_signature(value.as_bytes()) else {
                failure = SignatureFailure::Malformed;
                continue;
            };
            let mut mac = HmacSha256::new_from_slice(key.secret.expose().as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(body);
            // verify_slice compares in constant time.
            if mac.verify_slice(&signature).is_ok() {
                return Ok(());
            }
            failure = SignatureFailure::Mismatch;
        }
        Err(failure)
    }
}

/// Parses `sha256=<64 hex digits>` into the digest. The `sha256=` prefix is optional,
/// because some senders (Gitea's `X-Gitea-Signature`) send the bare hex digest.
fn parse_signature(value: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let hex_digits = text.strip_prefix("sha256=").unwrap_or(text);
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut digest).ok()?;
    Some(digest)
}

/// Computes the `sha256=<hex>` signature of `body` with `secret`, as a sender does.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use warp::http::HeaderValue;

    use super::*;

    fn keys() -> WebhookKeys {
        let entry = |secret: &str| Webhook {
            stub: "deploy".into(),
            secret: Secret::new(secret),
            header: "X-Hub-Signature-256".into(),
        };
        WebhookKeys::new(&[entry("old-secret"), entry("new-secret")])
    }

    fn signed(signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            HeaderValue::from_str(signature).unwrap(),
        );
        headers
    }

    // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
    #[test]
    fn github_example_signature() {
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn either_rotated_secret_accepted() {
        let body = b"{\"b\":1,\"a\":\"\\u0007\"}";
        assert_eq!(
            keys().verify("deploy", &signed(&sign("old-secret", body)), body),
            Ok(())
        );
        assert_eq!(
            keys().verify("deploy", &signed(&sign("new-secret", body)), body),
            Ok(())
        );
    }

    #[test]
    fn other_secret_rejected() {
        let body = b"hello";
        let result = keys().verify("deploy", &signed(&sign("guess", body)), body);
        assert_eq!(result, Err(SignatureFailure::Mismatch));
    }

    #[test]
    fn missing_header_rejected() {
        let result = keys().verify("deploy", &HeaderMap::new(), b"hello");
        assert_eq!(result, Err(SignatureFailure::Missing));
    }

    #[test]
    fn malformed_header_rejected() {
        let result = keys().verify("deploy", &signed("sha256=xyz"), b"hello");
        assert_eq!(result, Err(SignatureFailure::Malformed));
    }

    #[test]
    fn unconfigured_stub_rejected() {
        let body = b"hello";
        let result = keys().verify("other", &signed(&sign("new-secret", body)), body);
        assert_eq!(result, Err(SignatureFailure::UnknownStub));
    }
}
