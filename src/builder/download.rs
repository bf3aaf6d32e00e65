//! The download step: streams a release asset to a file with a size cap, hashing it on the way,
//! and checks the hash against the `sha256:` digest the API publishes for the asset.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use super::releases::{Asset, auth_header};
use crate::config::Secret;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("asset {name:?} has no download URL")]
    NoUrl { name: String },
    #[error("asset {name:?} is {size} bytes, over the limit of {limit} (raise max_asset_bytes)")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("downloading {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading {url} returned {status}")]
    Status { url: String, status: StatusCode },
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("asset {name:?} has an invalid digest {digest:?}: expected sha256: and 64 hex digits")]
    InvalidDigest { name: String, digest: String },
    #[error(
        "asset {name:?} failed its digest check: expected sha256:{expected}, got sha256:{actual}"
    )]
    DigestMismatch {
        name: String,
        expected: String,
        actual: String,
    },
}

/// A downloaded asset file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub path: PathBuf,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Whether the API published a digest that was checked.
    pub verified: bool,
}

/// Downloads `asset` into a new file at `dest`. The token goes only to URLs on the API's own
/// origin; reqwest drops it on redirects to another host. The caller removes `dest` on error.
pub async fn download_asset(
    http: &reqwest::Client,
    asset: &Asset,
    api_base: &Url,
    token: Option<&Secret>,
    dest: &Path,
    limit: u64,
) -> Result<Downloaded, DownloadError> {
    let too_large = |size| DownloadError::TooLarge {
        name: asset.name.clone(),
        size,
        limit,
    };
    if asset.size > limit {
        return Err(too_large(asset.size));
    }
    let expected = expected_sha256(asset)?;

    // GitHub's API URL serves private assets too; Gitea only has the browser URL.
    let (url, octet_stream) = match (&asset.url, &asset.browser_download_url) {
        (Some(url), _) => (url.as_str(), true),
        (None, Some(url)) => (url.as_str(), false),
        (None, None) => {
            return Err(DownloadError::NoUrl {
                name: asset.name.clone(),
            });
        }
    };
    let request_error = |source| DownloadError::Request {
        url: url.to_string(),
        source,
    };
    let parsed = Url::parse(url).map_err(|_| DownloadError::NoUrl {
        name: asset.name.clone(),
    })?;
    let mut request = http.get(parsed.clone());
    if octet_stream {
        request = request.header(ACCEPT, "application/octet-stream");
    }
    if let Some(token) = token
        && parsed.origin() == api_base.origin()
    {
        request = request.header(AUTHORIZATION, auth_header(token));
    }
    let response = request.send().await.map_err(request_error)?;
    if !response.status().is_success() {
        return Err(DownloadError::Status {
            url: url.to_string(),
            status: response.status(),
        });
    }
    if let Some(length) = response.content_length()
        && length > limit
    {
        return Err(too_large(length));
    }

    let write_error = |source| DownloadError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await
        .map_err(write_error)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(request_error)?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(too_large(bytes));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_error)?;
    }
    file.sync_all().await.map_err(write_error)?;

    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = &expected
        && *expected != actual
    {
        return Err(DownloadError::DigestMismatch {
            name: asset.name.clone(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(Downloaded {
        path: dest.to_path_buf(),
        bytes,
        sha256: actual,
        verified: expected.is_some(),
    })
}

/// Returns the lowercase SHA-256 the API published for the asset. Digests of other
/// algorithms are not checked, and a `sha256:` digest that is not 64 hex digits is an error.
fn expected_sha256(asset: &Asset) -> Result<Option<String>, DownloadError> {
    let Some(digest) = &asset.digest else {
        return Ok(None);
    };
    let Some(hex_digits) = digest.strip_prefix("sha256:") else {
        return Ok(None);
    };
    let valid = hex_digits.len() == 64 && hex_digits.chars().all(|c| c.is_ascii_hexdigit());
    if !valid {
        return Err(DownloadError::InvalidDigest {
            name: asset.name.clone(),
            digest: digest.clone(),
        });
    }
    Ok(Some(hex_digits.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(digest: Option<&str>) -> Asset {
        Asset {
            name: "site.tar.gz".to_string(),
            digest: digest.map(str::to_string),
            ..Asset::default()
        }
    }

    #[test]
    fn sha256_digest_is_lowercased() {
        let upper = "AB".repeat(32);
        let digest = format!("sha256:{upper}");
        let expected = expected_sha256(&asset(Some(&digest))).unwrap();
        assert_eq!(expected, Some("ab".repeat(32)));
    }

    #[test]
    fn other_algorithms_are_not_checked() {
        assert_eq!(expected_sha256(&asset(Some("sha512:00"))).unwrap(), None);
    }

    #[test]
    fn short_sha256_digest_rejected() {
        let error = expected_sha256(&asset(Some("sha256:abc"))).unwrap_err();
        assert!(matches!(error, DownloadError::InvalidDigest { .. }));
    }
}
