//! Tokens, scopes, the path prefix, the key allow list, rate limits and failed-login blocks,
//! plus the read-only routes behind scopes.

use std::time::Duration;

use crate::support::api::{ADMIN_TOKEN, Api, WIKI_TOKEN, api_section, json_body};
use crate::support::{RedisServer, WAIT, wait_for, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_gets_401() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    let response = api
        .post("/api/redis/publish/wiki")
        .body("x")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("missing token"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_gets_401() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    let response = api
        .post("/api/redis/publish/wiki")
        .bearer_auth("not-a-token-0123456789")
        .body("x")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 401);
    let body = json_body(response).await;
    assert_eq!(body["error"], "unknown token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_stub_gets_403() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    for path in ["/api/redis/publish/jobs", "/api/rproxy/jobs"] {
        let response = api
            .post(path)
            .bearer_auth(WIKI_TOKEN)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body = json_body(response).await;
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("\"wiki\"") && message.contains("\"jobs\""),
            "{message}"
        );
    }
    let allowed = api
        .post("/api/redis/publish/wiki.pages")
        .bearer_auth(WIKI_TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_scope_gets_403() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("readable_keys = [\"*\"]")).await;

    for (path, scope) in [
        ("/api/status", "status"),
        ("/metrics", "metrics"),
        ("/api/redis/metrics/wiki", "metrics"),
        ("/api/redis/keys/anything", "keys"),
        ("/api/dns/clients", "dns"),
        ("/api/dns/top?client=10.0.0.7", "dns"),
    ] {
        let response = api.get(path).bearer_auth(WIKI_TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body = json_body(response).await;
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains(&format!("scope \"{scope}\"")),
            "{path}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_gets_405() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    let response = api
        .get("/api/redis/publish/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST, PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_hides_every_route() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("path_prefix = \"/h7Qz3k\"")).await;

    let mut bodies = Vec::new();
    for path in [
        "/api/status",
        "/metrics",
        "/h7Qz3k/nothing",
        "/h7Qz3",
        "/",
        "/h7Qz3k/healthz",
    ] {
        let response = api.get(path).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        bodies.push(response.text().await.unwrap());
    }
    bodies.dedup();
    assert_eq!(bodies, ["not found\n"], "every 404 looks the same");

    let status = api
        .get("/h7Qz3k/api/status")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let health = api.get("/healthz").send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_outside_allow_list_gets_403() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("readable_keys = [\"*:builder:*\"]")).await;
    let names = api.names();
    let readable = names.builder("wiki");
    let secret = format!("{}:secret", names.prefix());
    let mut connection = redis.connection().await;
    let _: () = redis::cmd("HSET")
        .arg(&readable)
        .arg("tag")
        .arg("v1.2.0")
        .query_async(&mut connection)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&secret)
        .arg("hidden")
        .query_async(&mut connection)
        .await
        .unwrap();

    let mut rejections = Vec::new();
    for key in [secret.clone(), format!("{}:missing", names.prefix())] {
        let response = api
            .get(&format!("/api/redis/keys/{key}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{key}");
        rejections.push(response.text().await.unwrap());
    }
    assert_eq!(
        rejections[0], rejections[1],
        "existing and missing keys look the same"
    );
    assert!(!rejections[0].contains("hidden"));

    let response = api
        .get(&format!("/api/redis/keys/{readable}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    assert_eq!(body["type"], "hash");
    assert_eq!(body["value"]["tag"], "v1.2.0");

    let missing = api
        .get(&format!("/api/redis/keys/{}", names.builder("none")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_trips_and_recovers() {
    let redis = RedisServer::start();
    // 600 a minute is one request every 100 ms; a burst of 3 trips on the 4th in a row.
    let section = api_section("rate_limit_per_minute = 600\nrate_limit_burst = 3");
    let api = Api::start(&redis, &section).await;
    let publish = || {
        api.post("/api/redis/publish/wiki")
            .bearer_auth(ADMIN_TOKEN)
            .body("x")
            .send()
    };

    for attempt in 0..3 {
        assert_eq!(publish().await.unwrap().status(), 200, "attempt {attempt}");
    }
    let limited = publish().await.unwrap();

    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    let other_token = api
        .post("/api/redis/publish/wiki")
        .bearer_auth(WIKI_TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(other_token.status(), 200, "each token has its own bucket");
    wait_until(WAIT, "the bucket refills", || async {
        publish()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_401s_block_the_address() {
    let redis = RedisServer::start();
    let section = api_section("max_auth_failures = 3\nauth_block_secs = 2");
    let api = Api::start(&redis, &section).await;
    let status_with = |token: &'static str| {
        let request = api.get("/api/status").bearer_auth(token);
        async move { request.send().await.unwrap() }
    };

    for attempt in 0..3 {
        let response = status_with("guess-0000000000000000").await;
        assert_eq!(response.status(), 401, "attempt {attempt}");
    }
    let blocked = status_with(ADMIN_TOKEN).await;

    assert_eq!(
        blocked.status(),
        429,
        "even a valid token waits out the block"
    );
    let retry_after: u64 = blocked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(api.get("/healthz").send().await.unwrap().status(), 200);
    wait_until(WAIT, "the block ends", || async {
        status_with(ADMIN_TOKEN).await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_blocked_alone() {
    let redis = RedisServer::start();
    let section = api_section(
        "max_auth_failures = 2\nauth_block_secs = 60\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    let api = Api::start(&redis, &section).await;
    let status_from = |client: &'static str, token: &'static str| {
        let request = api
            .get("/api/status")
            .header("x-forwarded-for", format!("{client}, 127.0.0.1"))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };

    for _ in 0..2 {
        assert_eq!(
            status_from("203.0.113.9", "guess-0000000000000000").await,
            401
        );
    }

    assert_eq!(status_from("203.0.113.9", ADMIN_TOKEN).await, 429);
    assert_eq!(status_from("203.0.113.10", ADMIN_TOKEN).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_header_ignored_from_untrusted_peer() {
    let redis = RedisServer::start();
    let section = api_section(
        "max_auth_failures = 2\nauth_block_secs = 60\ntrusted_proxies = [\"192.0.2.1\"]",
    );
    let api = Api::start(&redis, &section).await;
    let status_from = |client: &'static str, token: &'static str| {
        let request = api
            .get("/api/status")
            .header("x-forwarded-for", client)
            .bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };

    for _ in 0..2 {
        assert_eq!(
            status_from("203.0.113.9", "guess-0000000000000000").await,
            401
        );
    }

    // The loopback peer is not a trusted proxy, so it was counted, whatever it claimed.
    assert_eq!(status_from("203.0.113.10", ADMIN_TOKEN).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_registry_entries() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let entry = r#"{"service":"control","instance":"nas","version":"0.1.0","state":"up","since":"2026-12-04T17:00:00.000Z","last_pong_at":"2026-12-04T17:05:00.000Z","rtt_ms":2,"restarts":0}"#;
    let mut connection = redis.connection().await;
    let _: () = redis::cmd("HSET")
        .arg(api.names().services())
        .arg("control@nas")
        .arg(entry)
        .arg("broken@nas")
        .arg("{not json")
        .query_async(&mut connection)
        .await
        .unwrap();

    let response = api
        .get("/api/status")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body = json_body(response).await;
    let services = body["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{body}");
    assert_eq!(services[0]["service"], "control");
    assert_eq!(services[0]["state"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_empty_before_control_writes() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;

    let response = api
        .get("/api/status")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await,
        serde_json::json!({"services": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_routes_read_rankings() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let names = api.names();
    let day = "2026-12-04";
    let mut connection = redis.connection().await;
    for (key, score, member) in [
        (names.dns_clients(day), 5, "10.0.0.7"),
        (names.dns_clients(day), 9, "10.0.0.8"),
        (names.dns_client("10.0.0.7", day), 3, "example.org"),
        (names.dns_client("10.0.0.7", day), 2, "example.net"),
    ] {
        let _: f64 = redis::cmd("ZINCRBY")
            .arg(key)
            .arg(score)
            .arg(member)
            .query_async(&mut connection)
            .await
            .unwrap();
    }

    let clients = api
        .get(&format!("/api/dns/clients?day={day}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(clients.status(), 200);
    let clients = json_body(clients).await;
    assert_eq!(
        clients["clients"][0],
        serde_json::json!({"client": "10.0.0.8", "queries": 9})
    );
    assert_eq!(clients["clients"][1]["client"], "10.0.0.7");

    let top = api
        .get(&format!("/api/dns/top?client=10.0.0.7&day={day}&limit=1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(top.status(), 200);
    let top = json_body(top).await;
    assert_eq!(
        top["domains"],
        serde_json::json!([{"domain": "example.org", "queries": 3}])
    );

    let invalid = api
        .get("/api/dns/top?client=nas")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_list_routes() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let response = api
        .post("/api/redis/publish/wiki")
        .bearer_auth(ADMIN_TOKEN)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let text = wait_for(
        Duration::from_secs(5),
        "the publish to show in /metrics",
        || async {
            let response = api
                .get("/metrics")
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?;
            let text = response.text().await.ok()?;
            text.contains("almagest_api_requests_total{route=\"publish\",status=\"200\"}")
                .then_some(text)
        },
    )
    .await;

    assert!(
        text.contains("almagest_api_request_duration_seconds_bucket{route=\"publish\""),
        "{text}"
    );
    assert!(!text.contains(ADMIN_TOKEN));
}
