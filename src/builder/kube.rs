//! The restart step: a rolling restart of a Deployment through the Kubernetes API, done the
//! way `kubectl rollout restart` does it, by setting the pod template annotation
//! `kubectl.kubernetes.io/restartedAt`. The pod's service account authenticates the request,
//! so the image needs no kubectl; `examples/builder-rbac.yaml` grants the permission.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use super::config::{Deployment, KubernetesConfig};
use super::releases::read_capped;

/// The annotation whose change makes the Deployment controller roll out new pods.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// One PATCH to the local API server; it answers in milliseconds when healthy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no Kubernetes API: KUBERNETES_SERVICE_HOST is not set, so set builder.kubernetes.api_base"
    )]
    NoApi,
    #[error("reading the service-account token {path} failed: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the cluster CA {path} failed: {reason}")]
    Ca { path: String, reason: String },
    #[error("restarting {deployment} failed: {source}")]
    Request {
        deployment: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "restarting {deployment} was refused ({status}): the service account needs get and \
         patch on deployments in that namespace (see examples/builder-rbac.yaml)"
    )]
    Forbidden {
        deployment: String,
        status: StatusCode,
    },
    #[error("restarting {deployment} failed: deployment not found")]
    NotFound { deployment: String },
    #[error("restarting {deployment} returned {status}: {body}")]
    Status {
        deployment: String,
        status: StatusCode,
        body: String,
    },
}

/// The strategic merge patch `kubectl rollout restart` sends.
pub fn restart_patch(at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT: at.to_rfc3339_opts(SecondsFormat::Secs, true)
        }}}}
    })
}

/// Restarts `deployment`. The token file is read on every call because the kubelet rotates
/// projected service-account tokens.
pub async fn restart_deployment(
    config: &KubernetesConfig,
    deployment: &Deployment,
    at: DateTime<Utc>,
) -> Result<(), KubeError> {
    let api_base = config.api_base.as_ref().ok_or(KubeError::NoApi)?;
    let token = tokio::fs::read_to_string(&config.token_file)
        .await
        .map_err(|source| KubeError::Token {
            path: config.token_file.display().to_string(),
            source,
        })?;
    let http = client(config, api_base.scheme() == "https").await?;

    let name = deployment.to_string();
    let url = format!(
        "{}/apis/apps/v1/namespaces/{}/deployments/{}",
        api_base.as_str().trim_end_matches('/'),
        deployment.namespace,
        deployment.name
    );
    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
        KubeError::Token {
            path: config.token_file.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a header value"),
        }
    })?;
    bearer.set_sensitive(true);
    let response = http
        .patch(&url)
        .header(AUTHORIZATION, bearer)
        .header(CONTENT_TYPE, "application/strategic-merge-patch+json")
        .header(ACCEPT, "application/json")
        .body(restart_patch(at).to_string())
        .send()
        .await
        .map_err(|source| KubeError::Request {
            deployment: name.clone(),
            source,
        })?;

    let status = response.status();
    match status {
        _ if status.is_success() => Ok(()),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(KubeError::Forbidden {
            deployment: name,
            status,
        }),
        StatusCode::NOT_FOUND => Err(KubeError::NotFound { deployment: name }),
        _ => {
            let body = read_capped(response, 2048).await.unwrap_or_default();
            Err(KubeError::Status {
                deployment: name,
                status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            })
        }
    }
}

/// A client that trusts only the cluster CA for `https` API servers.
async fn client(config: &KubernetesConfig, https: bool) -> Result<reqwest::Client, KubeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_error = |reason: String| KubeError::Ca {
        path: config.ca_file.display().to_string(),
        reason,
    };
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("almagest/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT);
    if https {
        let pem = tokio::fs::read(&config.ca_file)
            .await
            .map_err(|error| ca_error(error.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| ca_error(error.to_string()))?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().map_err(|error| ca_error(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_matches_kubectl() {
        let at: DateTime<Utc> = "2025-03-01T10:20:30Z".parse().unwrap();
        let patch = restart_patch(at);
        let value = &patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT];
        assert_eq!(value, "2025-03-01T10:20:30Z");
    }
}
