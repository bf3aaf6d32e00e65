//! A fake Kubernetes API server that accepts `PATCH` on Deployments when the bearer token
//! matches, like an API server with RBAC allowing it.

use std::sync::Arc;

use super::fake_api::{FakeHttp, Recorded, respond};
use warp::http::Method;

/// The fake API server; dropping it stops the server.
pub struct FakeKube {
    pub http: FakeHttp,
}

impl FakeKube {
    /// Accepts requests bearing `token` for deployments in `namespace`; answers 403 to other
    /// tokens and 404 to other namespaces.
    pub async fn start(token: &str, namespace: &str) -> Self {
        let expected = format!("Bearer {token}");
        let prefix = format!("/apis/apps/v1/namespaces/{namespace}/deployments/");
        let http = FakeHttp::start(Arc::new(move |request: &Recorded| {
            if request.header("authorization") != Some(expected.as_str()) {
                return respond(403, r#"{"kind":"Status","reason":"Forbidden"}"#);
            }
            if request.method != Method::PATCH || !request.path.starts_with(&prefix) {
                return respond(404, r#"{"kind":"Status","reason":"NotFound"}"#);
            }
            respond(200, r#"{"kind":"Deployment"}"#)
        }))
        .await;
        FakeKube { http }
    }

    pub fn base(&self) -> String {
        self.http.base()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.http.requests()
    }
}
