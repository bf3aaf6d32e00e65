//! Delivery to the fake Discord API: splitting, retries, classification and mentions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use almagest::bus::{Level, Notification};
use almagest::discord::config::{Destination, DiscordConfig};
use almagest::discord::deliver::{Outcome, Progress, RetryPolicy, SendError, Sender, build_http};
use almagest::discord::render::{AllowedMentions, render, render_plain};
use serenity::model::id::ChannelId;

use super::discord_config;
use crate::support::fake_discord::{FakeDiscord, Scripted};

const TOKEN: &str = "test-bot-token";
const WAIT: Duration = Duration::from_secs(10);

fn config(fake: &FakeDiscord, extra: &str) -> DiscordConfig {
    let text = format!(
        "token = \"{TOKEN}\"\ndefault_channel_id = 10\napi_proxy = \"{}\"\n{extra}",
        fake.url()
    );
    discord_config(&text)
}

fn sender(config: &DiscordConfig) -> Sender {
    Sender::new(Arc::new(build_http(config))).expect("sender builds")
}

/// Retries quickly, so a test of the retry window takes about a second.
fn fast_policy(retry_for: Duration) -> RetryPolicy {
    RetryPolicy {
        retry_for,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

fn channel() -> Destination {
    Destination::Channel(ChannelId::new(10))
}

fn note(text: &str) -> Notification {
    Notification {
        text: text.into(),
        ..Default::default()
    }
}

async fn deliver_note(
    sender: &Sender,
    notification: &Notification,
    policy: &RetryPolicy,
) -> (Outcome, Progress) {
    let parts = render(notification, &AllowedMentions::default());
    let mut progress = Progress::default();
    let outcome = sender
        .deliver(&channel(), &parts, &mut progress, policy)
        .await;
    (outcome, progress)
}

/// 4,500 characters cycling through ASCII, emoji (with a joined sequence and a flag) and CJK.
fn mixed_text(with_newlines: bool) -> String {
    let alphabet: Vec<char> = "Almagest 天文学 🪐 家族 👨‍👩‍👧 🇩🇪 ok — ünïcödé 日本語テキスト"
        .chars()
        .collect();
    let mut text = String::new();
    for index in 0..4_500 {
        if with_newlines && index % 97 == 96 {
            text.push('\n');
        } else {
            text.push(alphabet[index % alphabet.len()]);
        }
    }
    text
}

async fn assert_split_lossless(with_newlines: bool) {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    let text = mixed_text(with_newlines);
    assert_eq!(text.chars().count(), 4_500);

    let (outcome, _) = deliver_note(&sender(&config), &note(&text), &fast_policy(WAIT)).await;
    assert_eq!(outcome, Outcome::Delivered);

    let posts = fake.message_posts();
    assert_eq!(posts.len(), 3);
    let joined: String = posts.iter().map(|post| post.content()).collect();
    assert_eq!(joined, text);
    for post in &posts {
        assert!(post.content().chars().count() <= 2000);
    }
}

#[tokio::test]
async fn split_mixed_text_with_newlines() {
    assert_split_lossless(true).await;
}

#[tokio::test]
async fn split_mixed_text_without_newlines() {
    assert_split_lossless(false).await;
}

#[tokio::test]
async fn split_code_block_reopened() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    let code: String = (0..150)
        .map(|line| format!("println!(\"line {line}\");\n"))
        .collect();
    let text = format!("Build log:\n```rust\n{code}```\ndone");

    let (outcome, _) = deliver_note(&sender(&config), &note(&text), &fast_policy(WAIT)).await;
    assert_eq!(outcome, Outcome::Delivered);

    let posts = fake.message_posts();
    assert_eq!(posts.len(), 2);
    assert!(
        posts[0].content().ends_with("\n```"),
        "{:?}",
        posts[0].content()
    );
    assert!(
        posts[1].content().starts_with("```rust\n"),
        "{:?}",
        posts[1].content()
    );
    let fences = |content: &str| content.lines().filter(|l| l.starts_with("```")).count();
    assert_eq!(fences(posts[0].content()) % 2, 0);
    assert_eq!(fences(posts[1].content()) % 2, 0);
    let restored = format!(
        "{}{}",
        posts[0].content().strip_suffix("\n```").unwrap(),
        posts[1].content().strip_prefix("```rust\n").unwrap()
    );
    assert_eq!(restored, text);
}

#[tokio::test]
async fn rate_limit_then_success() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    fake.script([Scripted::RateLimited {
        retry_after_secs: 0.4,
        global: false,
    }]);

    let started = Instant::now();
    let (outcome, progress) = deliver_note(
        &sender(&config),
        &note("after the limit"),
        &fast_policy(WAIT),
    )
    .await;
    assert_eq!(outcome, Outcome::Delivered);
    assert_eq!(progress.attempts, 2);

    let posts = fake.message_posts();
    assert_eq!(posts.len(), 2);
    // The retry waited for retry_after (0.4 s), not the 50 ms backoff.
    assert!(posts[1].at - posts[0].at >= Duration::from_millis(400));
    assert!(started.elapsed() < WAIT);
}

#[tokio::test]
async fn server_errors_past_window_dead() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    fake.answer_always(Some(Scripted::Status(500)));

    let started = Instant::now();
    let window = Duration::from_secs(1);
    let (outcome, progress) = deliver_note(
        &sender(&config),
        &note("never arrives"),
        &fast_policy(window),
    )
    .await;

    let Outcome::Dead { error } = outcome else {
        panic!("expected dead letter, got {outcome:?}")
    };
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(started.elapsed() >= window);
    assert!(
        progress.attempts >= 3,
        "only {} attempts",
        progress.attempts
    );
    assert_eq!(fake.message_posts().len() as u32, progress.attempts);
}

#[tokio::test]
async fn html_bad_gateway_is_retried() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    fake.script([Scripted::Status(502), Scripted::Status(503)]);

    let (outcome, progress) =
        deliver_note(&sender(&config), &note("eventually"), &fast_policy(WAIT)).await;
    assert_eq!(outcome, Outcome::Delivered);
    assert_eq!(progress.attempts, 3);
}

#[tokio::test]
async fn bad_request_dead_at_once() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    fake.script([Scripted::Status(400)]);

    let (outcome, progress) =
        deliver_note(&sender(&config), &note("invalid"), &fast_policy(WAIT)).await;
    let Outcome::Dead { error } = outcome else {
        panic!("expected dead letter, got {outcome:?}")
    };
    assert!(error.contains("HTTP 400"), "{error}");
    assert!(error.contains("Invalid Form Body"), "{error}");
    assert_eq!(progress.attempts, 1);
}

#[tokio::test]
async fn unknown_channel_dead_at_once() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    fake.script([Scripted::Status(404)]);

    let (outcome, progress) =
        deliver_note(&sender(&config), &note("nowhere"), &fast_policy(WAIT)).await;
    let Outcome::Dead { error } = outcome else {
        panic!("expected dead letter, got {outcome:?}")
    };
    assert!(error.contains("Unknown Channel"), "{error}");
    assert_eq!(progress.attempts, 1);
}

#[tokio::test]
async fn unauthorized_stops_then_resumes() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    let sender = sender(&config);
    let text = format!("{}\n{}", "a".repeat(1500), "b".repeat(1500));
    let parts = render(&note(&text), &AllowedMentions::default());
    assert_eq!(parts.len(), 2);

    // The first part goes through, then the token is revoked.
    fake.script([Scripted::Normal, Scripted::Status(401)]);
    let mut progress = Progress::default();
    let outcome = sender
        .deliver(&channel(), &parts, &mut progress, &fast_policy(WAIT))
        .await;
    let Outcome::Stopped { error } = outcome else {
        panic!("expected stop, got {outcome:?}")
    };
    assert!(
        matches!(error, SendError::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    assert!(error.remedy().contains("token"));
    assert_eq!(progress.next_part, 1);

    // Nothing was lost: resuming sends the second part only.
    let outcome = sender
        .deliver(&channel(), &parts, &mut progress, &fast_policy(WAIT))
        .await;
    assert_eq!(outcome, Outcome::Delivered);
    let posts = fake.message_posts();
    assert_eq!(posts.len(), 3);
    assert_eq!(posts[2].content(), parts[1].content.as_deref().unwrap());
}

#[tokio::test]
async fn forbidden_stops_with_permission_hint() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    fake.script([Scripted::Status(403)]);

    let (outcome, _) = deliver_note(&sender(&config), &note("x"), &fast_policy(WAIT)).await;
    let Outcome::Stopped { error } = outcome else {
        panic!("expected stop, got {outcome:?}")
    };
    assert!(error.remedy().contains("Send Messages"));
}

#[tokio::test]
async fn failed_part_not_resent_before() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    let text = mixed_text(true);
    fake.script([Scripted::Normal, Scripted::Status(500)]);

    let (outcome, _) = deliver_note(&sender(&config), &note(&text), &fast_policy(WAIT)).await;
    assert_eq!(outcome, Outcome::Delivered);

    // Part 1 accepted, part 2 failed once and was sent again, then part 3.
    let posts = fake.message_posts();
    assert_eq!(posts.len(), 4);
    assert_eq!(posts[1].content(), posts[2].content());
    let delivered: String = [&posts[0], &posts[2], &posts[3]]
        .iter()
        .map(|p| p.content())
        .collect();
    assert_eq!(delivered, text);
}

#[tokio::test]
async fn mentions_off_in_request() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    let (outcome, _) = deliver_note(
        &sender(&config),
        &note("@everyone <@&1> done"),
        &fast_policy(WAIT),
    )
    .await;
    assert_eq!(outcome, Outcome::Delivered);

    let posts = fake.message_posts();
    assert_eq!(
        posts[0].body["allowed_mentions"],
        serde_json::json!({ "parse": [] })
    );
}

#[tokio::test]
async fn bot_request_carries_token() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    deliver_note(&sender(&config), &note("x"), &fast_policy(WAIT)).await;

    let post = &fake.message_posts()[0];
    assert_eq!(post.path, "/api/v10/channels/10/messages");
    assert_eq!(post.headers["authorization"], format!("Bot {TOKEN}"));
    assert!(post.headers["user-agent"].starts_with("DiscordBot"));
}

#[tokio::test]
async fn embed_delivered_as_embed() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    let notification = Notification {
        title: Some("Backup finished".into()),
        level: Some(Level::Error),
        ..note("3 files failed")
    };
    deliver_note(&sender(&config), &notification, &fast_policy(WAIT)).await;

    let body = &fake.message_posts()[0].body;
    assert_eq!(body["embeds"][0]["title"], "Backup finished");
    assert_eq!(body["embeds"][0]["description"], "3 files failed");
    assert!(body.get("content").is_none());
}

#[tokio::test]
async fn oversized_embed_sent_as_text() {
    let fake = FakeDiscord::start().await;
    let config = config(&fake, "");
    let notification = Notification {
        title: Some("t".repeat(300)),
        ..note("body")
    };
    let (outcome, _) = deliver_note(&sender(&config), &notification, &fast_policy(WAIT)).await;
    assert_eq!(outcome, Outcome::Delivered);

    let posts = fake.message_posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].content(), render_plain(&notification));
}

#[tokio::test]
async fn webhook_only_mode_posts_webhook() {
    let fake = FakeDiscord::start().await;
    let text = format!(
        "api_proxy = \"{}\"\ndefault_webhook = \"https://discord.com/api/webhooks/77/hook-token\"",
        fake.url()
    );
    let config = discord_config(&text);
    let sender = sender(&config);
    let destination = config.default_destination.clone().unwrap();

    let parts = render(&note("via webhook"), &AllowedMentions::default());
    let mut progress = Progress::default();
    let outcome = sender
        .deliver(&destination, &parts, &mut progress, &fast_policy(WAIT))
        .await;
    assert_eq!(outcome, Outcome::Delivered);

    let post = &fake.wait_for_posts(1, WAIT).await[0];
    assert_eq!(post.path, "/api/v10/webhooks/77/hook-token");
    assert_eq!(post.query, "wait=true");
    assert!(!post.headers.contains_key("authorization"));
    assert_eq!(post.content(), "via webhook");
}

#[tokio::test]
async fn network_error_hides_webhook_token() {
    // A closed port: bind, note the address, drop the listener.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "api_proxy = \"http://{closed}\"\n\
         default_webhook = \"https://discord.com/api/webhooks/77/hook-token\""
    );
    let config = discord_config(&text);
    let destination = config.default_destination.clone().unwrap();

    let parts = render(&note("x"), &AllowedMentions::default());
    let error = sender(&config)
        .send_once(&destination, &parts[0])
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Transient(_)), "{error:?}");
    assert!(!error.to_string().contains("hook-token"), "{error}");
}
