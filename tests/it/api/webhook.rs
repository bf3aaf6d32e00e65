//! `POST /api/webhook/<stub>`: requests signed with HMAC-SHA256 instead of a token.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use almagest::bus::Stub;

use crate::support::api::{Api, api_section, json_body};
use crate::support::{RedisServer, Subscription, WAIT, wait_until};

/// Two entries for one stub: the secret being retired and its replacement.
const WEBHOOKS: &str = "\n[[api.webhooks]]\nstub = \"deploy\"\nsecret = \"old-secret\"\n\
                        [[api.webhooks]]\nstub = \"deploy\"\nsecret = \"new-secret\"\n";

/// JSON as a sender writes it: keys out of order, an escaped control character (BEL) and an
/// emoji. The signature covers these exact bytes, so they must be published unchanged.
const PAYLOAD: &str = "{\"zeta\":1,\"action\":\"push\",\"note\":\"bell\\u0007 and 🚀\",\
                       \"nested\":{\"b\":[2,1],\"a\":null}}";

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn start(redis: &RedisServer) -> (Api, Subscription) {
    let api = Api::start(redis, &format!("{}{WEBHOOKS}", api_section(""))).await;
    let channel = api.names().queue(&Stub::parse("deploy").unwrap());
    let subscription = Subscription::start(&redis.client(), &channel).await;
    (api, subscription)
}

async fn deliver(api: &Api, signature: Option<String>) -> reqwest::Response {
    let mut request = api
        .post("/api/webhook/deploy")
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .body(PAYLOAD);
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_good_signature_published() {
    let redis = RedisServer::start();
    let (api, subscription) = start(&redis).await;

    let response = deliver(&api, Some(signature("old-secret", PAYLOAD.as_bytes()))).await;

    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["receivers"], 1);
    wait_until(
        WAIT,
        "the subscriber receives the exact payload",
        || async { subscription.payloads() == [PAYLOAD] },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_second_rotated_secret_accepted() {
    let redis = RedisServer::start();
    let (api, subscription) = start(&redis).await;

    let response = deliver(&api, Some(signature("new-secret", PAYLOAD.as_bytes()))).await;

    assert_eq!(response.status(), 200);
    wait_until(WAIT, "the subscriber receives the payload", || async {
        subscription.payloads() == [PAYLOAD]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_bad_signature_401() {
    let redis = RedisServer::start();
    let (api, subscription) = start(&redis).await;

    let wrong_secret = deliver(&api, Some(signature("guessed", PAYLOAD.as_bytes()))).await;
    let other_body = deliver(&api, Some(signature("new-secret", b"{\"zeta\":1}"))).await;

    assert_eq!(wrong_secret.status(), 401);
    assert_eq!(other_body.status(), 401);
    let body = json_body(wrong_secret).await;
    assert_eq!(body["error"], "missing or invalid signature");
    assert!(subscription.payloads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_missing_signature_401() {
    let redis = RedisServer::start();
    let (api, subscription) = start(&redis).await;

    let response = deliver(&api, None).await;

    assert_eq!(response.status(), 401);
    assert!(subscription.payloads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_unconfigured_stub_401() {
    let redis = RedisServer::start();
    let (api, _subscription) = start(&redis).await;

    let response = api
        .post("/api/webhook/other")
        .header(
            "x-hub-signature-256",
            signature("new-secret", PAYLOAD.as_bytes()),
        )
        .body(PAYLOAD)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
}
