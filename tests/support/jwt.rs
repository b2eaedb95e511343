//! Tokens for the nodes under test, signed here (independently of the node's verifier).

use serde_json::json;

/// The HMAC secret the test configurations give their `hs` provider.
pub const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

/// An HS256 token for `sub` with `roles`, valid for ten minutes, signed with `secret`.
pub fn hs256(sub: &str, roles: &[&str], secret: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": sub, "roles": roles, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The `Authorization` header carrying `token`.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// `[[jwt_provider]] hs`: HS256 with [`SECRET`].
pub fn hs_provider() -> String {
    format!("[[jwt_provider]]\nname = \"hs\"\nalgorithms = [\"HS256\"]\nsecret = \"{SECRET}\"\n")
}
