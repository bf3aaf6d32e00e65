//! Health checks, a Redis outage, graceful shutdown and a taken port.

use std::time::Duration;

use almagest::bus::Stub;

use crate::support::api::{ADMIN_TOKEN, Api, EchoWorker, api_section, client, json_body};
use crate::support::{Daemon, RedisServer, WAIT, config_text, parse_config, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_without_token() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("path_prefix = \"/p\"")).await;

    let health = api.get("/healthz").send().await.unwrap();
    let ready = api.get("/readyz").send().await.unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(ready.status(), 200);
    let body = json_body(ready).await;
    assert_eq!(body["bus_connected"], true);
    assert_eq!(body["serving"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_503_then_200() {
    let mut redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("")).await;
    let publish = || {
        api.post("/api/redis/publish/wiki")
            .bearer_auth(ADMIN_TOKEN)
            .body("x")
            .send()
    };
    assert_eq!(publish().await.unwrap().status(), 200);

    redis.stop();
    wait_until(WAIT, "publish returns 503", || async {
        publish()
            .await
            .is_ok_and(|response| response.status() == 503)
    })
    .await;
    let rejected = publish().await.unwrap();
    assert_eq!(rejected.status(), 503);
    assert_eq!(rejected.headers()["retry-after"], "5");
    let body = json_body(rejected).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("the publish was not confirmed"),
        "{body}"
    );
    assert_eq!(api.get("/readyz").send().await.unwrap().status(), 503);
    assert_eq!(api.get("/healthz").send().await.unwrap().status(), 200);

    redis.launch();
    wait_until(WAIT, "publish returns 200 again", || async {
        publish()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert_eq!(api.get("/readyz").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let redis = RedisServer::start();
    let api = Api::start(&redis, &api_section("rproxy_timeout_ms = 10000")).await;
    let channel = api.names().queue(&Stub::parse("wiki").unwrap());
    let worker = EchoWorker::start(&redis, &channel, Duration::from_millis(1_500)).await;
    let in_flight = tokio::spawn(
        api.post("/api/rproxy/wiki")
            .bearer_auth(ADMIN_TOKEN)
            .body("slow")
            .send(),
    );
    wait_until(WAIT, "the worker holds the request", || async {
        worker.requests() == 1
    })
    .await;

    let Api { daemon, base, .. } = api;
    let stopping = tokio::spawn(daemon.stop());
    // A fresh client, so that no pooled connection hides the closed listener.
    let fresh = client();
    wait_until(WAIT, "new connections are rejected", || async {
        fresh.get(format!("{base}/healthz")).send().await.is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended early"
    );

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.text().await.unwrap(), "slow");
    stopping.await.unwrap().expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_unanswered_rproxy_503() {
    let redis = RedisServer::start();
    // A drain deadline of 1 s (half the shutdown timeout) and a worker that never replies.
    let section = format!(
        "[supervisor]\nshutdown_timeout_secs = 2\n{}",
        api_section("rproxy_timeout_ms = 60000")
    );
    let api = Api::start(&redis, &section).await;
    let channel = api.names().queue(&Stub::parse("wiki").unwrap());
    let worker = EchoWorker::start(&redis, &channel, Duration::from_secs(3600)).await;
    let in_flight = tokio::spawn(
        api.post("/api/rproxy/wiki")
            .bearer_auth(ADMIN_TOKEN)
            .body("never answered")
            .send(),
    );
    wait_until(WAIT, "the worker holds the request", || async {
        worker.requests() == 1
    })
    .await;

    let Api { daemon, .. } = api;
    daemon.stop().await.expect("clean stop");

    let response = in_flight
        .await
        .unwrap()
        .expect("a response, not a closed connection");
    assert_eq!(response.status(), 503);
    let body = json_body(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("restarting"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_port_stops_daemon_with_error() {
    let redis = RedisServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let section = format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\n\n[supervisor]\nmax_restarts = 1\nwindow_secs = 60\n"
    );
    let daemon = Daemon::start(parse_config(&config_text(&redis.url(), &section)));

    let outcome = daemon.finished(WAIT).await;

    let error = outcome.expect_err("the daemon must not run without its API");
    let message = error.to_string();
    assert!(
        message.contains("restart cap") || message.contains("cannot listen"),
        "{message}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_api_restarts_and_closes_old_listener() {
    let redis = RedisServer::start();
    let section = format!(
        "{}\n[control]\nping_interval_secs = 60\nallow_crash_command = true\n",
        api_section("")
    );
    let api = Api::start(&redis, &section).await;
    let instance = api.daemon.instance().to_string();
    let status = api
        .get("/api/status")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);

    let crash = format!(r#"{{"type":"crash","service":"api","instance":"{instance}"}}"#);
    let mut connection = redis.connection().await;
    let _: u64 = redis::cmd("PUBLISH")
        .arg(api.names().control())
        .arg(crash)
        .query_async(&mut connection)
        .await
        .unwrap();
    let old = api.base.trim_start_matches("http://").to_string();
    let restarted = crate::support::wait_for(WAIT, "the api to listen again", || {
        let instance = instance.clone();
        let old = old.clone();
        async move {
            almagest::api::local_addr(&instance)
                .await
                .filter(|address| address.to_string() != old)
        }
    })
    .await;

    let fresh = client();
    wait_until(WAIT, "the old listener is closed", || async {
        fresh
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .is_err()
    })
    .await;
    let response = fresh
        .get(format!("http://{restarted}/api/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
