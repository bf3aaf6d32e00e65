//! Versions that Debian does not ship, replayed by fakes: the Transmission session-id
//! handshake with rotation, Transmission 4.1's JSON-RPC 2.0, and qBittorrent 5.x logins and
//! cookies. The response bodies are written from each project's API documentation and
//! release notes (qBittorrent 5.2: 204 on login, cookie `QBT_SID_<port>`, 401 on bad
//! credentials; Transmission 4.1: JSON-RPC 2.0 with snake_case names), not recorded from
//! those versions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use almagest::config::Secret;
use almagest::torrent::client::{ClientError, TorrentClient};
use almagest::torrent::config::{ClientConfig, ClientKind, Credentials};
use almagest::torrent::model::TorrentState;
use almagest::torrent::transmission::{Dialect, Transmission};
use serde_json::json;

use crate::support::fake_http::{FakeServer, Request, Response};

const HASH: &str = "52b98ef9d87424faa7e7af0bfba50885ea9d4c0c";

fn credentials(password: &str) -> Option<Credentials> {
    Some(Credentials {
        username: "almagest".into(),
        password: Secret::new(password),
    })
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts a Transmission 3.00 fake whose current session id the test can change.
async fn transmission_fake(session: Arc<Mutex<String>>) -> FakeServer {
    FakeServer::start(move |request: &Request| {
        let current = session.lock().unwrap().clone();
        if request.header("x-transmission-session-id") != Some(current.as_str()) {
            return Response::new(409, "<h1>409: Conflict</h1>")
                .header("X-Transmission-Session-Id", &current);
        }
        match request.json()["method"].as_str() {
            Some("session-get") => Response::json(json!({
                "arguments": {"rpc-version": 16, "version": "3.00 (bb6b5a062e)"},
                "result": "success",
            })),
            Some("torrent-get") => Response::json(json!({
                "arguments": {"torrents": [{"hashString": HASH, "name": "payload.bin",
                    "percentDone": 1, "leftUntilDone": 0, "sizeWhenDone": 300000, "status": 6,
                    "metadataPercentComplete": 1, "doneDate": 0, "addedDate": 1796402755,
                    "error": 0, "errorString": ""}]},
                "result": "success",
            })),
            _ => Response::json(json!({"arguments": {}, "result": "method name not recognized"})),
        }
    })
    .await
}

fn transmission_client(server: &FakeServer) -> Transmission {
    install_crypto();
    Transmission::new(
        server.url("/transmission/rpc").parse().unwrap(),
        credentials("pw"),
        Duration::from_secs(5),
    )
    .unwrap()
}

#[tokio::test]
async fn session_id_rotation_is_followed() {
    let session = Arc::new(Mutex::new("first-id".to_owned()));
    let server = transmission_fake(session.clone()).await;
    let mut client = transmission_client(&server);

    assert_eq!(client.torrents().await.unwrap().len(), 1);
    *session.lock().unwrap() = "rotated-id".to_owned();
    assert_eq!(client.torrents().await.unwrap().len(), 1);

    let ids: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|request| {
            request
                .header("x-transmission-session-id")
                .map(str::to_owned)
        })
        .collect();
    let expected = [
        None,
        Some("first-id"),
        Some("first-id"),
        Some("first-id"),
        Some("rotated-id"),
    ];
    let expected: Vec<Option<String>> = expected.iter().map(|id| id.map(str::to_owned)).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn endless_409_stops_after_one_retry() {
    let server = FakeServer::start(|_: &Request| {
        let id = uuid::Uuid::new_v4().to_string();
        Response::new(409, "conflict").header("X-Transmission-Session-Id", &id)
    })
    .await;
    let mut client = transmission_client(&server);

    let error = client.torrents().await.unwrap_err();

    assert!(
        matches!(error, ClientError::SessionRejected { .. }),
        "{error}"
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn basic_auth_is_sent() {
    let session = Arc::new(Mutex::new("id".to_owned()));
    let server = transmission_fake(session).await;
    let mut client = transmission_client(&server);

    client.torrents().await.unwrap();

    let requests = server.requests();
    assert_eq!(requests[0].method, "POST");
    // "almagest:pw" in base64.
    assert_eq!(
        requests[0].header("authorization"),
        Some("Basic YWxtYWdlc3Q6cHc=")
    );
}

#[tokio::test]
async fn transmission_4_1_uses_json_rpc() {
    let server = FakeServer::start(|request: &Request| {
        let body = request.json();
        if body.get("jsonrpc").is_none() {
            // Transmission 4.1 still accepts the legacy session-get and reports rpc-version 18.
            return Response::json(json!({
                "arguments": {"rpc-version": 18, "version": "4.1.0 (6b8b1d7c4b)"},
                "result": "success", "tag": body["tag"],
            }));
        }
        assert_eq!(body["method"], "torrent_get");
        Response::json(json!({
            "jsonrpc": "2.0",
            "id": body["id"],
            "result": {"torrents": [{"hash_string": HASH, "name": "payload.bin",
                "percent_done": 0.5, "left_until_done": 150000, "size_when_done": 300000,
                "status": 4, "metadata_percent_complete": 1, "done_date": 0,
                "added_date": 1796402755, "error": 0, "error_string": ""}]},
        }))
    })
    .await;
    let mut client = transmission_client(&server);

    let torrents = client.torrents().await.unwrap();

    assert_eq!(client.dialect(), Some(Dialect::JsonRpc));
    assert_eq!(torrents[0].state, TorrentState::Downloading);
    assert_eq!(torrents[0].left_bytes, Some(150_000));
    let request = server.requests()[1].json();
    assert_eq!(request["jsonrpc"], "2.0");
    assert!(
        request["params"]["fields"]
            .as_array()
            .unwrap()
            .contains(&json!("hash_string"))
    );
}

#[tokio::test]
async fn json_rpc_error_is_reported() {
    let server = FakeServer::start(|request: &Request| {
        let body = request.json();
        if body.get("jsonrpc").is_none() {
            return Response::json(json!({"arguments": {"rpc-version": 18}, "result": "success"}));
        }
        Response::json(json!({"jsonrpc": "2.0", "id": body["id"],
            "error": {"code": -32602, "message": "Invalid params"}}))
    })
    .await;
    let mut client = transmission_client(&server);

    let error = client.torrents().await.unwrap_err();

    assert!(
        error.to_string().contains("Invalid params (code -32602)"),
        "{error}"
    );
}

/// Sessions of a qBittorrent 5.2 fake: the valid session value and the login count.
#[derive(Default)]
struct QbitSessions {
    valid: Option<String>,
    logins: usize,
}

/// Starts a qBittorrent 5.2 fake: login returns 204 with a `QBT_SID_8080` cookie (or 401 for
/// a bad password), and `torrents/info` returns 403 without a valid session.
async fn qbittorrent_5_fake(sessions: Arc<Mutex<QbitSessions>>) -> FakeServer {
    FakeServer::start(move |request: &Request| {
        let mut sessions = sessions.lock().unwrap();
        if request.target == "/api/v2/auth/login" {
            let body = String::from_utf8_lossy(&request.body);
            if body != "username=almagest&password=p%26w+rd" {
                return Response::new(401, "");
            }
            sessions.logins += 1;
            let value = format!("session{}", sessions.logins);
            sessions.valid = Some(value.clone());
            let cookie = format!("QBT_SID_8080={value}; HttpOnly; SameSite=Strict; path=/");
            return Response::new(204, "").header("Set-Cookie", &cookie);
        }
        let expected = sessions
            .valid
            .as_ref()
            .map(|value| format!("QBT_SID_8080={value}"));
        if expected.is_none() || request.header("cookie") != expected.as_deref() {
            return Response::new(403, "Forbidden");
        }
        Response::json(json!([
            {"added_on": 1796402774, "amount_left": 0, "completion_on": 1796402783,
             "has_metadata": true, "hash": HASH, "name": "payload.bin", "progress": 1,
             "size": 300000, "state": "stoppedUP", "total_size": 300000},
            {"added_on": 1796402774, "amount_left": 0, "completion_on": 4294967295u64,
             "has_metadata": false, "hash": "0123456789abcdef0123456789abcdef01234567",
             "name": "magnet", "progress": 0, "size": 0, "state": "forcedMetaDL",
             "total_size": 0}
        ]))
    })
    .await
}

fn qbittorrent_client(server: &FakeServer, password: &str) -> TorrentClient {
    install_crypto();
    let config = ClientConfig {
        name: "qb5".into(),
        kind: ClientKind::Qbittorrent,
        url: server.url("/").parse().unwrap(),
        credentials: credentials(password),
    };
    TorrentClient::new(&config, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn qbittorrent_5_cookie_and_states() {
    let sessions = Arc::new(Mutex::new(QbitSessions::default()));
    let server = qbittorrent_5_fake(sessions.clone()).await;
    let mut client = qbittorrent_client(&server, "p&w rd");

    let torrents = client.torrents().await.unwrap();

    assert_eq!(torrents.len(), 2);
    assert_eq!(torrents[0].state, TorrentState::Stopped);
    assert_eq!(torrents[1].state, TorrentState::FetchingMetadata);
    assert_eq!(torrents[1].done_at, None);
    assert_eq!(sessions.lock().unwrap().logins, 1);
}

#[tokio::test]
async fn expired_session_logs_in_again() {
    let sessions = Arc::new(Mutex::new(QbitSessions::default()));
    let server = qbittorrent_5_fake(sessions.clone()).await;
    let mut client = qbittorrent_client(&server, "p&w rd");
    client.torrents().await.unwrap();

    sessions.lock().unwrap().valid = None;
    let torrents = client.torrents().await.unwrap();

    assert_eq!(torrents.len(), 2);
    assert_eq!(sessions.lock().unwrap().logins, 2);
}

#[tokio::test]
async fn qbittorrent_5_bad_password_is_401() {
    let sessions = Arc::new(Mutex::new(QbitSessions::default()));
    let server = qbittorrent_5_fake(sessions).await;
    let mut client = qbittorrent_client(&server, "wrong");

    let error = client.torrents().await.unwrap_err();

    assert!(
        matches!(error, ClientError::Unauthorized { status: 401, .. }),
        "{error}"
    );
    // One login attempt, no retry loop towards an IP ban.
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn banned_address_is_reported() {
    let server =
        FakeServer::start(|_: &Request| Response::new(403, "Your IP address has been banned"))
            .await;
    let mut client = qbittorrent_client(&server, "pw");

    let error = client.torrents().await.unwrap_err();

    assert!(matches!(error, ClientError::Banned { .. }), "{error}");
}
