//! Bearer tokens: which token a request carries and what it may do.
//!
//! Tokens are compared as SHA-256 digests with a constant-time equality, and every configured
//! token is compared on every request, so the time taken reveals neither how much of a
//! guess matched nor which entry matched. Only a token's name is ever logged.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use warp::http::HeaderMap;
use warp::http::header::AUTHORIZATION;

use super::config::{ApiToken, Globs, Scope};

/// Why a request is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A bearer token that matches no configured token.
    Unknown,
}

impl AuthFailure {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_token",
            AuthFailure::Unknown => "unknown_token",
        }
    }
}

/// A configured token, as the request path needs it.
pub struct Token {
    pub name: String,
    digest: [u8; 32],
    stubs: Globs,
    scopes: Vec<Scope>,
}

impl Token {
    /// Whether the token may publish to and call `stub`.
    pub fn allows_stub(&self, stub: &str) -> bool {
        self.stubs.is_match(stub)
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Every configured token, in config order (the index keys the rate limiters).
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    pub fn new(config: &[ApiToken]) -> Tokens {
        let tokens = config
            .iter()
            .map(|token| Token {
                name: token.name.clone(),
                digest: Sha256::digest(token.token.expose().as_bytes()).into(),
                stubs: token.stubs.clone(),
                scopes: token.scopes.iter().copied().collect(),
            })
            .collect();
        Tokens { tokens }
    }

    pub fn get(&self, index: usize) -> &Token {
        &self.tokens[index]
    }

    /// Finds the token of a request's `Authorization: Bearer` header and returns its index.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<usize, AuthFailure> {
        let presented = bearer_token(headers).ok_or(AuthFailure::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (index, token) in self.tokens.iter().enumerate() {
            let equal: Choice = token.digest.ct_eq(&digest);
            if bool::from(equal) {
                found = Some(index);
            }
        }
        found.ok_or(AuthFailure::Unknown)
    }
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive.
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    let token = value[scheme.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use warp::http::HeaderValue;

    use super::*;
    use crate::config::Secret;

    fn tokens() -> Tokens {
        let entry = |name: &str, secret: &str| ApiToken {
            name: name.to_string(),
            token: Secret::new(secret),
            stubs: Globs::empty(),
            scopes: BTreeSet::from([Scope::Status]),
            rate_limit: None,
        };
        Tokens::new(&[
            entry("phone", "aaaaaaaaaaaaaaaa"),
            entry("laptop", "bbbbbbbbbbbbbbbb"),
        ])
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_token_found() {
        let index = tokens().authenticate(&headers("Bearer bbbbbbbbbbbbbbbb"));
        assert_eq!(index, Ok(1));
    }

    #[test]
    fn bearer_scheme_case_insensitive() {
        let index = tokens().authenticate(&headers("bearer aaaaaaaaaaaaaaaa"));
        assert_eq!(index, Ok(0));
    }

    #[test]
    fn missing_header_is_missing() {
        let result = tokens().authenticate(&HeaderMap::new());
        assert_eq!(result, Err(AuthFailure::Missing));
    }

    #[test]
    fn other_scheme_is_missing() {
        let result = tokens().authenticate(&headers("Basic YWxhZGRpbjpvcGVuc2VzYW1l"));
        assert_eq!(result, Err(AuthFailure::Missing));
    }

    #[test]
    fn prefix_of_token_is_unknown() {
        let result = tokens().authenticate(&headers("Bearer aaaaaaaa"));
        assert_eq!(result, Err(AuthFailure::Unknown));
    }
}
