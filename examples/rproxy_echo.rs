//! An rproxy worker in Rust that echoes each request's body back, replying to
//! requests concurrently. It is the worker of the API benchmark, and a starting point for workers
//! that need more speed than the shell example.
//!
//! ```sh
//! cargo run --release --example rproxy_echo -- redis://127.0.0.1:6379 almagest wiki
//! ```
//!
//! Arguments: the Redis URL (`redis://…` or `redis+unix:///…`), the daemon's `bus.prefix` and
//! the stub to serve.

use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let prefix = args.next().unwrap_or_else(|| "almagest".into());
    let stub = args
        .next()
        .ok_or("usage: rproxy_echo REDIS_URL PREFIX STUB")?;

    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(format!("{prefix}:q:{stub}")).await?;
    let publisher = client.get_multiplexed_async_connection().await?;
    eprintln!("serving {prefix}:q:{stub}");

    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let Ok(request) = serde_json::from_slice::<Value>(message.get_payload_bytes()) else {
            continue;
        };
        // Plain messages published for the stub share the channel.
        if request["type"] != "http.request" {
            continue;
        }
        let Some(reply_to) = request["reply_to"].as_str().map(str::to_string) else {
            continue;
        };
        let reply = json!({
            "id": request["id"],
            "status": 200,
            "headers": {"content-type": ["text/plain; charset=utf-8"]},
            "body": request["body"],
            "body_base64": request["body_base64"],
        });
        let mut connection = publisher.clone();
        tokio::spawn(async move {
            let sent: redis::RedisResult<u64> = redis::cmd("PUBLISH")
                .arg(reply_to)
                .arg(reply.to_string())
                .query_async(&mut connection)
                .await;
            if let Err(error) = sent {
                eprintln!("reply not sent: {error}");
            }
        });
    }
    Err("the subscription ended: Redis closed the connection".into())
}
