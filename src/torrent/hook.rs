//! The message that done-hook scripts publish to `P:torrent:done`:
//! `{"client":NAME,"hash":HEX}`. The service looks the torrent up itself, so nothing the
//! script could get wrong (a name, a size) comes through the hook.

use serde::Deserialize;

use super::model::InfoHash;

/// Maximum message length in bytes; a valid message is under 200 bytes.
const MAX_MESSAGE_BYTES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoneReport {
    pub client: String,
    pub hash: InfoHash,
}

#[derive(Debug, thiserror::Error)]
pub enum DoneReportError {
    #[error("done report of {0} bytes is too long: expected at most {MAX_MESSAGE_BYTES}")]
    TooLong(usize),
    #[error("invalid done report: {0}; expected {{\"client\":NAME,\"hash\":HEX}}")]
    Invalid(#[source] serde_json::Error),
}

impl DoneReport {
    pub fn parse(message: &[u8]) -> Result<Self, DoneReportError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(DoneReportError::TooLong(message.len()));
        }
        serde_json::from_slice(message).map_err(DoneReportError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_parses_and_lowercases_hash() {
        let report = DoneReport::parse(
            br#"{"client":"nas","hash":"52B98EF9D87424FAA7E7AF0BFBA50885EA9D4C0C"}"#,
        )
        .unwrap();
        assert_eq!(report.client, "nas");
        assert_eq!(
            report.hash.as_str(),
            "52b98ef9d87424faa7e7af0bfba50885ea9d4c0c"
        );
    }

    #[test]
    fn report_with_bad_hash_is_rejected() {
        assert!(DoneReport::parse(br#"{"client":"nas","hash":"-"}"#).is_err());
    }

    #[test]
    fn report_with_extra_fields_is_rejected() {
        let message =
            br#"{"client":"nas","hash":"52b98ef9d87424faa7e7af0bfba50885ea9d4c0c","name":"x"}"#;
        assert!(DoneReport::parse(message).is_err());
    }
}
