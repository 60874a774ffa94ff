//! Credentials: bearer tokens of three kinds (operator, node, pool enrolment), stored only as
//! their SHA-256.
//!
//! Why a plain SHA-256 and not a slow password hash: tokens are 256 random bits made here,
//! never chosen by a person, so there is nothing to brute-force; a fast hash keeps a check-in
//! cheap and still means a stolen database holds no usable credential (as GitHub does with
//! its tokens). Lookups are by hash, so no comparison of secrets happens in our code.
//!
//! Token text: `bro_…` (operator), `brn_…` (node), `bre_…` (enrolment), then 43 characters of
//! URL-safe base64. The prefix names the kind so a token pasted into the wrong place is refused
//! with a clear message, and secret scanners can recognise it.

use base64::Engine as _;

use crate::store::TokenKind;

/// Where random bytes come from (the system's generator in production; tests pass their own).
pub trait Random: Send + Sync + std::fmt::Debug {
    /// Fills `buf`; an error means no secure randomness is available.
    fn fill(&self, buf: &mut [u8]) -> Result<(), String>;
}

/// The operating system's generator (`getrandom`), through ring.
#[derive(Debug)]
pub struct SystemRandom(ring::rand::SystemRandom);

impl Default for SystemRandom {
    fn default() -> Self {
        SystemRandom(ring::rand::SystemRandom::new())
    }
}

impl Random for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), String> {
        ring::rand::SecureRandom::fill(&self.0, buf)
            .map_err(|_| "the system random number generator failed".to_owned())
    }
}

fn prefix(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Operator => "bro_",
        TokenKind::Node => "brn_",
        TokenKind::Enroll => "bre_",
    }
}

/// A new token of `kind`: (the text to hand out once, its hash to store).
pub fn generate(kind: TokenKind, random: &dyn Random) -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    random.fill(&mut bytes)?;
    let text = format!(
        "{}{}",
        prefix(kind),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash(&text);
    Ok((text, hash))
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The kind a token's text claims (checked against the stored kind too).
pub fn claimed_kind(token: &str) -> Option<TokenKind> {
    [TokenKind::Operator, TokenKind::Node, TokenKind::Enroll]
        .into_iter()
        .find(|k| token.starts_with(prefix(*k)))
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 256)
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_their_kind_and_a_stable_hash() {
        let random = SystemRandom::default();
        let (a, ha) = generate(TokenKind::Node, &random).expect("token");
        let (b, _) = generate(TokenKind::Node, &random).expect("token");
        assert_ne!(a, b);
        assert!(a.starts_with("brn_") && a.len() == 4 + 43, "{a}");
        assert_eq!(hash(&a), ha);
        assert_eq!(claimed_kind(&a), Some(TokenKind::Node));
        assert_eq!(claimed_kind("xyz"), None);
        assert_ne!(ha, a, "never stored in clear");
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer(&format!("Bearer {}", "x".repeat(300))), None);
    }
}
