//! Decodes arbitrary bytes as a notification stream entry, as the Discord consumer does, and
//! renders it. A notification that decodes must encode and decode to the same value, and
//! every rendered message must fit Discord's 2000-character limit.

#![no_main]

use almagest::bus::wire::Notification;
use almagest::discord::render::{AllowedMentions, render};
use almagest::discord::split::MAX_CONTENT_CHARS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(notification) = Notification::decode(payload) else {
        return;
    };
    assert_eq!(
        Notification::decode(&notification.encode()),
        Ok(notification.clone())
    );
    for message in render(&notification, &AllowedMentions::default()) {
        if let Some(content) = message.content {
            assert!(!content.trim().is_empty());
            assert!(content.chars().count() <= MAX_CONTENT_CHARS);
        }
    }
});
