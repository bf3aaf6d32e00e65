//! The gateway client against the fake: it connects only where the fake points it, and
//! outgoing delivery works while it cannot connect.

use std::sync::Arc;
use std::time::Duration;

use almagest::bus::Notification;
use almagest::discord::deliver::{Outcome, Progress, RetryPolicy, Sender, build_http};
use almagest::discord::gateway::{GatewaySettings, intents, spawn_gateway};
use almagest::discord::render::{AllowedMentions, render};
use tokio::sync::mpsc;

use super::discord_config;
use crate::support::fake_discord::FakeDiscord;
use crate::support::{WAIT, wait_until};

#[tokio::test]
async fn gateway_stays_on_fake_while_delivering() {
    let fake = FakeDiscord::start().await;
    let text = format!(
        "token = \"t\"\ndefault_channel_id = 10\napi_proxy = \"{}\"",
        fake.url()
    );
    let config = discord_config(&text);
    let http = Arc::new(build_http(&config));

    let (events, _received) = mpsc::channel(16);
    let settings = GatewaySettings {
        intents: intents(false),
        command_guild: None,
    };
    let _gateway = spawn_gateway(http.clone(), settings, events);

    // The client asked the fake for the gateway URL and tried the WebSocket there.
    wait_until(WAIT, "a WebSocket attempt on the fake", || async {
        fake.requests()
            .iter()
            .any(|request| request.path.starts_with("/gateway-ws"))
    })
    .await;
    let paths: Vec<String> = fake
        .requests()
        .iter()
        .map(|request| request.path.clone())
        .collect();
    assert!(paths.contains(&"/api/v10/gateway".to_owned()), "{paths:?}");

    // Notices still go out over HTTP although the gateway cannot connect.
    let sender = Sender::new(http).unwrap();
    let parts = render(
        &Notification {
            text: "still here".into(),
            ..Default::default()
        },
        &AllowedMentions::default(),
    );
    let policy = RetryPolicy::new(Duration::from_secs(5));
    let destination = config.default_destination.clone().unwrap();
    let outcome = sender
        .deliver(&destination, &parts, &mut Progress::default(), &policy)
        .await;
    assert_eq!(outcome, Outcome::Delivered);
    assert_eq!(fake.message_posts()[0].content(), "still here");
}
