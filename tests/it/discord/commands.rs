//! Slash commands in a daemon: the interaction is handed to the running service as the
//! gateway would hand it over, and the responses are read from the fake Discord API.

use almagest::config::Config;
use almagest::discord::DiscordMsg;
use almagest::discord::gateway::GatewayEvent;
use almagest::service::ServiceMessage;
use serde_json::{Value, json};
use serenity::all::CommandInteraction;

use crate::support::fake_discord::{APPLICATION_ID, FakeDiscord, RecordedRequest};
use crate::support::{
    Daemon, RedisServer, Subscription, WAIT, config_text, parse_config, wait_for,
};

const ALLOWED_USER: u64 = 42;
const TOKEN: &str = "interaction-token";

fn daemon_config(redis: &RedisServer, fake: &FakeDiscord) -> Config {
    let section = format!(
        "[discord]\ntoken = \"t\"\ndefault_channel_id = 10\napi_proxy = \"{}\"\nguild_id = 5\n\
         allowed_user_ids = [{ALLOWED_USER}]\nallowed_role_ids = [77]",
        fake.url()
    );
    parse_config(&config_text(&redis.url(), &section))
}

/// Builds a command interaction as Discord sends it for a guild member.
fn interaction(name: &str, options: Value, user: u64, roles: &[u64]) -> CommandInteraction {
    let roles: Vec<String> = roles.iter().map(u64::to_string).collect();
    serde_json::from_value(json!({
        "id": "900",
        "application_id": APPLICATION_ID.to_string(),
        "type": 2,
        "data": { "id": "1", "name": name, "type": 1, "options": options },
        "guild_id": "5",
        "channel_id": "10",
        "member": {
            "user": {
                "id": user.to_string(), "username": "ada", "discriminator": "0",
                "global_name": null, "avatar": null
            },
            "roles": roles,
            "joined_at": "2025-01-01T00:00:00.000000+00:00",
            "deaf": false, "mute": false, "flags": 0, "permissions": "0"
        },
        "token": TOKEN,
        "version": 1,
        "app_permissions": "0",
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {},
        "context": 0,
        "attachment_size_limit": 8_388_608
    }))
    .expect("interaction JSON matches serenity's model")
}

/// Hands the interaction to the daemon's discord service, as its gateway task does.
async fn invoke(config: &Config, interaction: CommandInteraction) {
    let name = format!("discord@{}", config.bus.instance);
    let service = wait_for(WAIT, "the discord service to run", || {
        let name = name.clone();
        async move { ractor::ActorRef::<ServiceMessage<DiscordMsg>>::where_is(name) }
    })
    .await;
    let event = GatewayEvent::Command(Box::new(interaction));
    service
        .cast(ServiceMessage::Own(DiscordMsg::Gateway(event)))
        .expect("service accepts");
}

fn callback_path() -> String {
    format!("/api/v10/interactions/900/{TOKEN}/callback")
}

fn edit_path() -> String {
    format!("/api/v10/webhooks/{APPLICATION_ID}/{TOKEN}/messages/@original")
}

async fn wait_request(fake: &FakeDiscord, path: String) -> RecordedRequest {
    wait_for(WAIT, "a request to the fake", || {
        let found = fake
            .requests()
            .into_iter()
            .find(|request| request.path == path);
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_user_refused_ephemerally() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake);
    let daemon = Daemon::start(config.clone());

    invoke(&config, interaction("status", json!([]), 43, &[78])).await;
    let callback = wait_request(&fake, callback_path()).await;
    assert_eq!(callback.body["type"], 4);
    assert_eq!(callback.body["data"]["flags"], 64);
    assert!(
        callback.body["data"]["content"]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_registry() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake);
    let mut connection = redis.connection().await;
    let entry = json!({
        "service": "torrent", "instance": "nas", "version": "1.2.0", "state": "down",
        "since": "2026-01-01T00:00:00Z", "last_pong_at": null, "rtt_ms": null, "restarts": 0
    });
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:services", config.bus.prefix))
        .arg("torrent@nas")
        .arg(entry.to_string())
        .query_async(&mut connection)
        .await
        .expect("HSET");
    let daemon = Daemon::start(config.clone());

    // A role listed in allowed_role_ids is enough.
    invoke(&config, interaction("status", json!([]), 1, &[77])).await;
    let callback = wait_request(&fake, callback_path()).await;
    assert_eq!(callback.body["type"], 5);
    let edit = wait_request(&fake, edit_path()).await;
    let content = edit.body["content"].as_str().unwrap();
    assert!(content.contains("🔴 **torrent**@nas 1.2.0"), "{content}");
    assert_eq!(
        edit.body["allowed_mentions"],
        json!({ "parse": [], "roles": [], "users": [] })
    );
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_replies_with_result() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake);
    let control =
        Subscription::start(&redis.client(), &format!("{}:control", config.bus.prefix)).await;
    let daemon = Daemon::start(config.clone());

    let options = json!([{ "name": "target", "type": 3, "value": "web" }]);
    invoke(&config, interaction("rebuild", options, ALLOWED_USER, &[])).await;

    // Play the builder: publish the result on the command's reply_to channel.
    let request = wait_for(WAIT, "the rebuild command on the bus", || {
        let found = control
            .json()
            .into_iter()
            .find(|message| message["type"] == "rebuild");
        async move { found }
    })
    .await;
    assert_eq!(request["target"], "web");
    let result = json!({
        "type": "rebuild.result", "id": request["id"], "target": "web", "tag": "v3",
        "ok": true, "message": "deployed"
    });
    let mut connection = redis.connection().await;
    let _: u64 = redis::cmd("PUBLISH")
        .arg(request["reply_to"].as_str().unwrap())
        .arg(result.to_string())
        .query_async(&mut connection)
        .await
        .expect("PUBLISH");

    let edit = wait_request(&fake, edit_path()).await;
    assert_eq!(edit.body["content"], "✅ Rebuilt **web** v3. deployed");
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_lists_answering_services() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake);
    let daemon = Daemon::start(config.clone());

    invoke(&config, interaction("ping", json!([]), ALLOWED_USER, &[])).await;
    let edit = wait_request(&fake, edit_path()).await;
    let content = edit.body["content"].as_str().unwrap();
    let expected = format!("**discord**@{}", config.bus.instance);
    assert!(content.contains(&expected), "{content}");
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_target_rejected() {
    let redis = RedisServer::start();
    let fake = FakeDiscord::start().await;
    let config = daemon_config(&redis, &fake);
    let daemon = Daemon::start(config.clone());

    let options = json!([{ "name": "target", "type": 3, "value": "web; reboot" }]);
    invoke(&config, interaction("rebuild", options, ALLOWED_USER, &[])).await;
    let callback = wait_request(&fake, callback_path()).await;
    assert_eq!(callback.body["data"]["flags"], 64);
    assert!(
        callback.body["data"]["content"]
            .as_str()
            .unwrap()
            .contains("invalid target")
    );
    daemon.stop().await.expect("daemon stops cleanly");
}
