//! Decodes arbitrary bytes as a torrent client's response body. The first byte picks the
//! decoder: Transmission `session-get`, Transmission `torrent-get` in the legacy or the
//! JSON-RPC 2.0 form, or qBittorrent `torrents/info`.

#![no_main]

use almagest::torrent::model::Torrent;
use almagest::torrent::{qbittorrent, transmission};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let decoded = match selector % 4 {
        0 => {
            let _ = transmission::decode_session_get(body);
            return;
        }
        1 => transmission::decode_torrent_get(body, transmission::Dialect::Legacy),
        2 => transmission::decode_torrent_get(body, transmission::Dialect::JsonRpc),
        _ => qbittorrent::parse_torrents(body),
    };
    if let Ok((torrents, _skipped)) = decoded {
        torrents.iter().for_each(check);
    }
});

fn check(torrent: &Torrent) {
    assert!((0.0..=1.0).contains(&torrent.progress));
    assert!(matches!(torrent.hash.as_str().len(), 40 | 64));
    if !torrent.has_metadata {
        assert_eq!(torrent.size_bytes, None);
        assert_eq!(torrent.left_bytes, None);
    }
}
