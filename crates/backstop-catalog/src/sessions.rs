//! Browser sessions of the web UI. Logging in with a token makes a
//! session: a random secret that becomes the browser's cookie (only its
//! hash is stored, like a token's) and a random CSRF token every form of
//! that session carries. A session acts as its token — same tenant, same
//! role — and ends when it expires, when the browser logs out, or when its
//! token is revoked. Sessions live in the catalog, so every coordinator on
//! one database knows them.

use backstop_types::Token;
use sqlx::Row;

use crate::resources::token_hash;
use crate::secrets::hex_encode;
use crate::{Catalog, Result};

/// A new session: the cookie's secret (shown to the browser only) and its CSRF token.
#[derive(Debug)]
pub struct NewSession {
    pub secret: String,
    pub csrf: String,
}

/// A live session: the token it acts as, and its CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: Token,
    pub csrf: String,
}

fn random_hex() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random number generator works");
    hex_encode(&raw)
}

impl Catalog {
    /// Start a session acting as token `token_id`, ending `ttl_ms` from `now`.
    pub async fn create_session(&self, token_id: &str, now: i64, ttl_ms: i64) -> Result<NewSession> {
        // Expired sessions are removed as new ones start.
        sqlx::query(&self.sql("DELETE FROM ui_sessions WHERE expires_ms <= ?")).bind(now).execute(self.pool()).await?;
        let session = NewSession { secret: format!("bss_{}", random_hex()), csrf: random_hex() };
        sqlx::query(
            &self.sql("INSERT INTO ui_sessions (hash, token_id, csrf, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?)"),
        )
        .bind(token_hash(&session.secret))
        .bind(token_id)
        .bind(&session.csrf)
        .bind(now)
        .bind(now + ttl_ms)
        .execute(self.pool())
        .await?;
        Ok(session)
    }

    /// The live session with this secret: not expired, its token not revoked.
    pub async fn session(&self, secret: &str, now: i64) -> Result<Option<Session>> {
        let row = sqlx::query(&self.sql(
            "SELECT t.id, t.tenant, t.name, t.role, t.created_ms, t.last_used_ms, s.csrf \
             FROM ui_sessions s JOIN tokens t ON t.id = s.token_id \
             WHERE s.hash = ? AND s.expires_ms > ? AND t.revoked_ms IS NULL",
        ))
        .bind(token_hash(secret))
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Session { token: crate::resources::token_from_row(&row)?, csrf: row.try_get("csrf")? }))
    }

    /// End the session with this secret (logging out); ending one that is gone is no error.
    pub async fn end_session(&self, secret: &str) -> Result<()> {
        sqlx::query(&self.sql("DELETE FROM ui_sessions WHERE hash = ?"))
            .bind(token_hash(secret))
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
