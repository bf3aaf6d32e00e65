//! `POST|PUT /api/redis/publish/<stub>`: delivery, durable stubs, body rules.

use std::io::Write as _;
use std::time::{Duration, Instant};

use almagest::bus::Stub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::api::{ADMIN_TOKEN, Api, api_section, json_body};
use crate::support::{RedisServer, Subscription, WAIT, wait_until};

const PUBLISH_WIKI: &str = "/api/redis/publish/wiki";

fn stub(name: &str) -> Stub {
    Stub::parse(name).unwrap()
}

pub(crate) async fn stream_messages(redis: &RedisServer, key: &str) -> Vec<String> {
    let mut connection = redis.connection().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .flat_map(|(_, fields)| fields.into_iter().map(|(_, value)| value))
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_subscriber() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let channel = api.names().queue(&stub("wiki"));
    let subscription = Subscription::start(&redis.client(), &channel).await;

    let response = api
        .post(PUBLISH_WIKI)
        .bearer_auth(ADMIN_TOKEN)
        .body("reload")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["channel"], channel.as_str());
    assert_eq!(body["receivers"], 1);
    wait_until(WAIT, "the subscriber receives the message", || async {
        subscription.payloads() == ["reload"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_json_with_charset_published_verbatim() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let channel = api.names().queue(&stub("wiki"));
    let subscription = Subscription::start(&redis.client(), &channel).await;
    let message = r#"{"page":"Café","tags":["ü"]}"#;

    let response = api
        .client
        .put(api.url(PUBLISH_WIKI))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json; charset=utf-8")
        .body(message)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    wait_until(WAIT, "the subscriber receives the JSON", || async {
        subscription.payloads() == [message]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_stub_appends_stream() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("durable_stubs = [\"jobs.*\"]")).await;

    for path in ["/api/redis/publish/jobs.backup", PUBLISH_WIKI] {
        let response = api
            .post(path)
            .bearer_auth(ADMIN_TOKEN)
            .body("run")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    let names = api.names();
    let durable = stream_messages(&redis, &names.queue_stream(&stub("jobs.backup"))).await;
    assert_eq!(durable, ["run"]);
    let plain = stream_messages(&redis, &names.queue_stream(&stub("wiki"))).await;
    assert!(plain.is_empty(), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publish_honours_durable_stubs() {
    let redis = RedisServer::start();
    let text =
        crate::support::config_text(&redis.url(), &api_section("durable_stubs = [\"jobs.*\"]"));
    let config = crate::support::parse_config(&text);

    let (channel, receivers) = almagest::cli::publish(&config, "jobs.backup", "from the cli")
        .await
        .unwrap();

    assert_eq!(receivers, 0);
    let names = almagest::bus::Names::new(&config.bus.prefix);
    assert_eq!(channel, names.queue(&stub("jobs.backup")));
    let stored = stream_messages(&redis, &names.queue_stream(&stub("jobs.backup"))).await;
    assert_eq!(stored, ["from the cli"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_stub_names_rule() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    for path in [
        "/api/redis/publish/a%20b",
        "/api/redis/publish/-x",
        "/api/redis/publish/",
    ] {
        let response = api
            .post(path)
            .bearer_auth(ADMIN_TOKEN)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body = json_body(response).await;
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("letters, digits"), "{path}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_body_gets_415() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let channel = api.names().queue(&stub("wiki"));
    let subscription = Subscription::start(&redis.client(), &channel).await;

    let response = api
        .post(PUBLISH_WIKI)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body(vec![b'o', b'k', 0xff, 0xfe])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 415);
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("not UTF-8"),
        "{body}"
    );
    assert!(subscription.payloads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_body_published_decoded() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let channel = api.names().queue(&stub("wiki"));
    let subscription = Subscription::start(&redis.client(), &channel).await;

    let response = api
        .post(PUBLISH_WIKI)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-encoding", "gzip")
        .body(gzip("compressed ✓".as_bytes()))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    wait_until(WAIT, "the subscriber receives the decoded text", || async {
        subscription.payloads() == ["compressed ✓"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_encoding_gets_415() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    let response = api
        .post(PUBLISH_WIKI)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-encoding", "br")
        .body("x")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 415);
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("Content-Encoding"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_body_gets_400() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    let response = api
        .post(PUBLISH_WIKI)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_body_gets_413() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("max_body_bytes = 1024")).await;

    let response = api
        .post(PUBLISH_WIKI)
        .bearer_auth(ADMIN_TOKEN)
        .body("x".repeat(1025))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("1024 bytes"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_at_cap_accepted() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("max_body_bytes = 1024")).await;

    let response = api
        .post(PUBLISH_WIKI)
        .bearer_auth(ADMIN_TOKEN)
        .body("x".repeat(1024))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
}

/// Sends a chunked upload of 256-byte chunks, one every 50 ms, and stops as soon as the
/// server responds. Returns the status line and how many chunks were sent by then.
async fn slow_chunked_upload(api: &Api, path: &str, max_chunks: usize) -> (String, usize) {
    let address = api.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("100\r\n{}\r\n", "y".repeat(256));
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    for sent in 0..max_chunks {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        // A short read window between chunks: the response shows up while still uploading.
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buffer)).await
        {
            response.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&response).into_owned();
            let status = text.lines().next().unwrap_or_default().to_string();
            return (status, sent + 1);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !response.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => response.extend_from_slice(&buffer[..read]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    (
        text.lines().next().unwrap_or_default().to_string(),
        max_chunks,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_chunked_upload_stopped_at_cap() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("max_body_bytes = 1024")).await;
    let channel = api.names().queue(&stub("wiki"));
    let subscription = Subscription::start(&redis.client(), &channel).await;

    let (status, chunks_sent) = slow_chunked_upload(&api, PUBLISH_WIKI, 40).await;

    assert!(status.starts_with("HTTP/1.1 413"), "{status:?}");
    // 1024 bytes are 4 chunks; the response comes with the 5th, long before the 40th.
    assert!(
        chunks_sent <= 8,
        "responded only after {chunks_sent} chunks"
    );
    assert!(subscription.payloads().is_empty());
}
