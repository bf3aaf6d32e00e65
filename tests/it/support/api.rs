//! Helpers for the HTTP API tests: a daemon with an `[api]` section listening on a free
//! loopback port, an HTTP client, and an rproxy worker task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{Daemon, RedisServer, WAIT, config_text, parse_config, wait_for, wait_until};

/// A token with every stub and scope in [`api_section`].
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// A token limited to the stubs `wiki*` and no scope.
pub const WIKI_TOKEN: &str = "wiki-token-0123456789";

/// Returns an `[api]` section on a free loopback port with the two tokens above. The
/// `extra` lines go into `[api]` before the tokens.
pub fn api_section(extra: &str) -> String {
    format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [[api.tokens]]\nname = \"admin\"\ntoken = \"{ADMIN_TOKEN}\"\nstubs = [\"*\"]\n\
         scopes = [\"metrics\", \"keys\", \"dns\", \"status\"]\n\
         [[api.tokens]]\nname = \"wiki\"\ntoken = \"{WIKI_TOKEN}\"\nstubs = [\"wiki*\"]\n"
    )
}

/// A daemon running the API, with its base URL.
pub struct Api {
    pub daemon: Daemon,
    /// `http://127.0.0.1:PORT`, without the path prefix.
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    /// Starts a daemon on `redis` with `section` (an `[api]` section and maybe others) and
    /// waits until `/readyz` returns 200.
    pub async fn start(redis: &RedisServer, section: &str) -> Api {
        almagest::telemetry::install_crypto_provider();
        let daemon = Daemon::start(parse_config(&config_text(&redis.url(), section)));
        Api::attach(daemon).await
    }

    /// Waits until the API of a started daemon (whose config has an `[api]` section) listens
    /// and `/readyz` returns 200.
    pub async fn attach(daemon: Daemon) -> Api {
        almagest::telemetry::install_crypto_provider();
        let instance = daemon.instance().to_string();
        let address = wait_for(WAIT, "the api to listen", || {
            let instance = instance.clone();
            async move { almagest::api::local_addr(&instance).await }
        })
        .await;
        let api = Api {
            daemon,
            base: format!("http://{address}"),
            client: client(),
        };
        wait_until(WAIT, "/readyz to return 200", || async {
            api.get("/readyz")
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        })
        .await;
        api
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn names(&self) -> almagest::bus::Names {
        self.daemon.names()
    }
}

/// Builds an HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the HTTP client")
}

/// Parses the JSON body of a response, and panics with the text when it is not JSON.
pub async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("read the body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"))
}

/// A worker that replies to every `http.request` on one queue channel with an echo of its
/// method, path, query and body, after `delay`.
pub struct EchoWorker {
    pub requests: Arc<AtomicU64>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl EchoWorker {
    /// Subscribes `channel` and returns once the subscription is active.
    pub async fn start(redis: &RedisServer, channel: &str, delay: Duration) -> EchoWorker {
        let client = redis.client();
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
        pubsub.subscribe(channel).await.expect("subscribe");
        let mut publisher = redis.connection().await;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                let Ok(request) = serde_json::from_str::<Value>(&payload) else {
                    continue;
                };
                if request["type"] != "http.request" {
                    continue;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let reply = echo_reply(&request);
                let _: Result<u64, _> = redis::cmd("PUBLISH")
                    .arg(request["reply_to"].as_str().unwrap_or_default())
                    .arg(reply.to_string())
                    .query_async(&mut publisher)
                    .await;
            }
        });
        EchoWorker {
            requests,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn echo_reply(request: &Value) -> Value {
    json!({
        "id": request["id"],
        "status": 201,
        "headers": {
            "Content-Type": ["text/plain; charset=utf-8"],
            "X-Echo-Method": [request["method"]],
            "X-Echo-Path": [request["path"]],
            "X-Echo-Query": [request["query"]],
            "X-Echo-Authorization": [request["headers"]["authorization"].to_string()],
            "Connection": ["close"],
        },
        "body": request["body"],
        "body_base64": request["body_base64"],
    })
}
