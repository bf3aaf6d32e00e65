//! `ANY /api/rproxy/<stub>`: request/reply through Redis with a worker, and its failures.

use std::time::{Duration, Instant};

use almagest::bus::Stub;

use crate::support::api::{ADMIN_TOKEN, Api, EchoWorker, api_section, json_body};
use crate::support::{RedisServer, WAIT, wait_until};

fn queue(api: &Api, name: &str) -> String {
    api.names().queue(&Stub::parse(name).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rproxy_round_trip() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let _worker = EchoWorker::start(&redis, &queue(&api, "wiki"), Duration::ZERO).await;

    let response = api
        .post("/api/rproxy/wiki/pages/a%20b?x=1&wait=true")
        .bearer_auth(ADMIN_TOKEN)
        .body("hello ✓")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    assert_eq!(headers["x-echo-method"], "POST");
    assert_eq!(headers["x-echo-path"], "/pages/a%20b");
    assert_eq!(headers["x-echo-query"], "x=1");
    assert_eq!(
        headers["x-echo-authorization"], "null",
        "the token was forwarded"
    );
    assert!(
        headers
            .get("connection")
            .is_none_or(|value| value != "close")
    );
    assert_eq!(response.text().await.unwrap(), "hello ✓");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rproxy_binary_body_round_trip() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let _worker = EchoWorker::start(&redis, &queue(&api, "wiki"), Duration::ZERO).await;
    let body: Vec<u8> = (0..=255).collect();

    let response = api
        .client
        .put(api.url("/api/rproxy/wiki"))
        .bearer_auth(ADMIN_TOKEN)
        .body(body.clone())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
    assert_eq!(response.bytes().await.unwrap().to_vec(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rproxy_malformed_reply_502_at_once() {
    use futures_util::StreamExt;

    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("rproxy_timeout_ms = 10000")).await;
    // A worker whose reply names the request but has a status of the wrong type.
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub.subscribe(queue(&api, "wiki")).await.unwrap();
    let mut publisher = redis.connection().await;
    let _worker = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let request: serde_json::Value =
                serde_json::from_slice(message.get_payload_bytes()).unwrap();
            let reply = serde_json::json!({"id": request["id"], "status": "fine"});
            let _: Result<u64, _> = redis::cmd("PUBLISH")
                .arg(request["reply_to"].as_str().unwrap())
                .arg(reply.to_string())
                .query_async(&mut publisher)
                .await;
        }
    }));

    let response = api
        .get("/api/rproxy/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    // 502 rather than the 504 that the timeout would give.
    assert_eq!(response.status(), 502);
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("reply is invalid"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rproxy_without_worker_503_at_once() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("rproxy_timeout_ms = 10000")).await;

    let started = Instant::now();
    let response = api
        .get("/api/rproxy/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("no worker"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rproxy_slow_worker_504() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("rproxy_timeout_ms = 300")).await;
    let worker = EchoWorker::start(&redis, &queue(&api, "wiki"), Duration::from_secs(2)).await;

    let response = api
        .get("/api/rproxy/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 504);
    assert_eq!(worker.requests(), 1);
    let metrics = api
        .get("/api/redis/metrics/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let metrics = json_body(metrics).await;
    assert_eq!(metrics["rproxy"]["status_504"], 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rproxy_wait_false_202() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let worker = EchoWorker::start(&redis, &queue(&api, "wiki"), Duration::ZERO).await;

    let response = api
        .post("/api/rproxy/wiki/jobs?wait=false")
        .bearer_auth(ADMIN_TOKEN)
        .body("later")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 202);
    let body = json_body(response).await;
    assert_eq!(body["id"].as_str().map(str::len), Some(32), "{body}");
    assert_eq!(body["channel"], queue(&api, "wiki").as_str());
    wait_until(WAIT, "the worker receives the request", || async {
        worker.requests() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_metrics_count_traffic() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    for _ in 0..2 {
        let response = api
            .post("/api/redis/publish/wiki")
            .bearer_auth(ADMIN_TOKEN)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = api
        .get("/api/rproxy/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let _worker = EchoWorker::start(&redis, &queue(&api, "wiki"), Duration::ZERO).await;

    let response = api
        .get("/api/redis/metrics/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["subscribers"], 1, "{body}");
    assert_eq!(body["messages"]["total"], 2, "{body}");
    assert_eq!(body["rproxy"]["total"], 1, "{body}");
    assert_eq!(body["rproxy"]["status_503"], 1, "{body}");
    assert!(body["last_publish_at"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_worker_example_round_trip() {
    let mut redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rproxy-worker.sh");
    let mut worker = std::process::Command::new("bash");
    worker
        .arg(script)
        .arg("wiki")
        .env("REDIS_SOCKET", redis.socket())
        .env("ALMAGEST_PREFIX", api.names().prefix())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut worker, 0);
    let worker = ProcessGroup(worker.spawn().expect("start the worker script"));
    let channel = queue(&api, "wiki");
    wait_for_subscriber(&redis, &channel, "the worker script subscribes").await;
    let response = api
        .post("/api/rproxy/wiki/echo?q=1")
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body("from curl")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "from curl");

    // The worker outlives a Redis restart: it subscribes again by itself.
    redis.stop();
    redis.launch();
    wait_for_subscriber(&redis, &channel, "the worker script subscribes again").await;
    wait_until(
        WAIT,
        "an rproxy call after the restart succeeds",
        || async {
            api.post("/api/rproxy/wiki/echo")
                .bearer_auth(ADMIN_TOKEN)
                .body("again")
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        },
    )
    .await;
    drop(worker);
}

async fn wait_for_subscriber(redis: &RedisServer, channel: &str, what: &str) {
    wait_until(WAIT, what, || async {
        let Ok(mut connection) = redis.client().get_multiplexed_async_connection().await else {
            return false;
        };
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        counts.first().is_some_and(|(_, count)| *count > 0)
    })
    .await;
}

/// A child process leading its own process group; dropping it kills the whole group
/// (the script's pipeline of redis-cli and jq).
struct ProcessGroup(std::process::Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process group we created, with a valid signal.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}
