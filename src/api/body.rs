//! Request bodies: read with a byte cap counted as the bytes arrive (chunked uploads too),
//! decoded from gzip when the client compressed them, and checked to be UTF-8 text.

use std::io::Read;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::HeaderMap;
use warp::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};

use super::error::ApiError;

/// How long a client may take to send its whole body. Generous for a 1 MiB body on a slow
/// phone connection, short enough that a client trickling bytes cannot hold a connection.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body as warp hands it over.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// Reads the whole body, failing with 413 as soon as more than `cap` bytes arrived (or a
/// `Content-Length` announces more), and with 408 when it takes longer than
/// [`BODY_TIMEOUT`].
pub async fn read_capped(
    body: &mut BodyStream,
    headers: &HeaderMap,
    cap: u64,
) -> Result<Bytes, ApiError> {
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if announced.is_some_and(|length| length > cap) {
        return Err(ApiError::PayloadTooLarge { cap });
    }
    let read = async {
        let mut buffer = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|error| ApiError::BadRequest(format!("cannot read the body: {error}")))?;
            if buffer.len() as u64 + chunk.len() as u64 > cap {
                return Err(ApiError::PayloadTooLarge { cap });
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout))
}

/// Undoes `Content-Encoding: gzip`; other encodings get 415. The decoded size is capped at
/// `cap` too, so a small compressed body cannot expand into a large one.
pub fn decode_content(raw: Bytes, headers: &HeaderMap, cap: u64) -> Result<Bytes, ApiError> {
    let encoding = match headers.get(CONTENT_ENCODING) {
        None => return Ok(raw),
        Some(value) => value.to_str().unwrap_or("").trim().to_ascii_lowercase(),
    };
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => {
            let mut decoded = Vec::new();
            flate2::read::MultiGzDecoder::new(raw.as_ref())
                .take(cap + 1)
                .read_to_end(&mut decoded)
                .map_err(|error| ApiError::BadRequest(format!("invalid gzip body: {error}")))?;
            if decoded.len() as u64 > cap {
                return Err(ApiError::PayloadTooLarge { cap });
            }
            Ok(Bytes::from(decoded))
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {:?}: send the body as is or gzip-compressed",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// The body as text. Any `Content-Type` is accepted, but a `charset` other than UTF-8 (or
/// its subset US-ASCII) and bytes that are not UTF-8 get 415 instead of a mangled message.
pub fn into_text(body: Bytes, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(charset) = declared_charset(headers)
        && !matches!(charset.as_str(), "utf-8" | "utf8" | "us-ascii")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "unsupported charset {:?}: send UTF-8 text",
            charset.chars().take(40).collect::<String>()
        )));
    }
    String::from_utf8(body.into()).map_err(|error| {
        ApiError::UnsupportedMediaType(format!(
            "the body is not UTF-8 text (invalid byte at offset {}): send UTF-8",
            error.utf8_error().valid_up_to()
        ))
    })
}

/// The lower-cased `charset` parameter of `Content-Type`, if any.
fn declared_charset(headers: &HeaderMap) -> Option<String> {
    let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use warp::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    fn stream(chunks: Vec<&'static [u8]>) -> BodyStream {
        Box::pin(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok(Bytes::from_static(chunk))),
        ))
    }

    #[tokio::test]
    async fn chunks_past_cap_rejected() {
        let mut body = stream(vec![b"abcd", b"efgh"]);
        let result = read_capped(&mut body, &HeaderMap::new(), 6).await;
        assert!(matches!(result, Err(ApiError::PayloadTooLarge { cap: 6 })));
    }

    #[tokio::test]
    async fn body_at_cap_accepted() {
        let mut body = stream(vec![b"abc", b"def"]);
        let result = read_capped(&mut body, &HeaderMap::new(), 6).await.unwrap();
        assert_eq!(result, "abcdef");
    }

    #[tokio::test]
    async fn announced_length_past_cap_rejected() {
        let mut body = stream(vec![]);
        let result = read_capped(&mut body, &headers(&[("content-length", "7")]), 6).await;
        assert!(matches!(result, Err(ApiError::PayloadTooLarge { .. })));
    }

    #[test]
    fn gzip_decoded() {
        let body = decode_content(
            gzip(b"hello"),
            &headers(&[("content-encoding", "gzip")]),
            100,
        );
        assert_eq!(body.unwrap(), "hello");
    }

    #[test]
    fn gzip_bomb_capped() {
        let body = decode_content(
            gzip(&[b'a'; 10_000]),
            &headers(&[("content-encoding", "gzip")]),
            1_000,
        );
        assert!(matches!(body, Err(ApiError::PayloadTooLarge { .. })));
    }

    #[test]
    fn brotli_unsupported() {
        let body = decode_content(
            Bytes::from_static(b"x"),
            &headers(&[("content-encoding", "br")]),
            100,
        );
        assert!(matches!(body, Err(ApiError::UnsupportedMediaType(_))));
    }

    #[test]
    fn charset_parameter_accepted() {
        let text = into_text(
            Bytes::from_static("é".as_bytes()),
            &headers(&[("content-type", "text/plain; charset=UTF-8")]),
        );
        assert_eq!(text.unwrap(), "é");
    }

    #[test]
    fn latin1_charset_rejected() {
        let text = into_text(
            Bytes::from_static(b"abc"),
            &headers(&[("content-type", "text/plain; charset=iso-8859-1")]),
        );
        assert!(matches!(text, Err(ApiError::UnsupportedMediaType(_))));
    }

    #[test]
    fn invalid_utf8_rejected() {
        let text = into_text(Bytes::from_static(b"ab\xff"), &HeaderMap::new());
        let Err(ApiError::UnsupportedMediaType(message)) = text else {
            panic!("expected 415, got {text:?}");
        };
        assert!(message.contains("offset 2"), "{message}");
    }
}
