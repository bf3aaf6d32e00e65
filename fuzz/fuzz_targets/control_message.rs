//! Decodes arbitrary bytes as a message on the control channel. A message that decodes must
//! encode and decode to the same value.

#![no_main]

use almagest::bus::wire::ControlMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = ControlMessage::decode(payload) {
        assert_eq!(ControlMessage::decode(&message.encode()), Ok(message));
    }
});
