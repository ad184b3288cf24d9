//! Bootstrap tokens: a secret an operator hands to one sidecar, which proves one service
//! identity until it expires or is revoked. A sidecar presents it to get its first certificate
//! (`POST /v1/certificates`) and may present it on the push stream.
//!
//! A token reads `<id>.<secret>`. The id names it in the API (list, revoke); the store keeps
//! only a SHA-256 of the secret, so a copy of the database proves nothing. Secrets are 256
//! random bits, which is why a plain hash is enough (no password stretching).
//!
//! [`Tokens`] owns creating, checking and revoking them, and uses only the store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferrule_config::identity::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::error::TokenError;
use crate::store::{Store, TokenRecord};
use crate::time::{from_unix_secs, rfc3339, unix_secs};

/// A token as the API lists it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// Its id.
    pub id: String,
    /// The identity it proves.
    pub identity: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
    /// `valid`, `expired` or `revoked`.
    pub state: String,
}

/// A token just made: the only time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// Its id.
    pub id: String,
    /// The whole token, `<id>.<secret>`.
    pub token: String,
    /// The identity it proves.
    pub identity: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
}

/// The bootstrap tokens.
#[derive(Debug)]
pub struct Tokens {
    store: Arc<Store>,
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

fn view(t: &TokenRecord, now: u64) -> TokenView {
    let state = if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at <= now {
        "expired"
    } else {
        "valid"
    };
    TokenView {
        id: t.id.clone(),
        identity: t.identity.clone(),
        created_at: rfc3339(from_unix_secs(t.created_at)),
        expires_at: rfc3339(from_unix_secs(t.expires_at)),
        state: state.to_owned(),
    }
}

impl Tokens {
    /// Tokens kept in `store`.
    pub fn new(store: Arc<Store>) -> Tokens {
        Tokens { store }
    }

    /// Makes a token for `identity` that expires after `ttl`.
    pub async fn create(
        &self,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<CreatedToken, TokenError> {
        if ttl < Duration::from_secs(1) {
            return Err(TokenError::Invalid("ttl: must be at least 1s".to_owned()));
        }
        let id = hex(&rand::random::<[u8; 12]>());
        let secret = hex(&rand::random::<[u8; 32]>());
        let now = unix_secs(SystemTime::now());
        let record = TokenRecord {
            id: id.clone(),
            identity: identity.to_string(),
            secret_hash: hash(&secret),
            created_at: now,
            expires_at: now.saturating_add(ttl.as_secs()),
            revoked_at: None,
        };
        let expires_at = rfc3339(from_unix_secs(record.expires_at));
        self.store.run(move |s| s.create_token(record)).await?;
        tracing::info!(%id, %identity, "bootstrap token created");
        Ok(CreatedToken {
            token: format!("{id}.{secret}"),
            id,
            identity: identity.to_string(),
            expires_at,
        })
    }

    /// Every token, without secrets.
    pub async fn list(&self) -> Result<Vec<TokenView>, TokenError> {
        let now = unix_secs(SystemTime::now());
        let all = self.store.run(|s| s.tokens()).await?;
        Ok(all.iter().map(|t| view(t, now)).collect())
    }

    /// Revokes a token: it proves nothing from now on.
    pub async fn revoke(&self, id: &str) -> Result<TokenView, TokenError> {
        let now = unix_secs(SystemTime::now());
        let owned = id.to_owned();
        let t = self
            .store
            .run(move |s| s.revoke_token(&owned, now))
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound(_) => TokenError::NoSuchToken(id.to_owned()),
                e => e.into(),
            })?;
        tracing::info!(%id, identity = %t.identity, "bootstrap token revoked");
        Ok(view(&t, now))
    }

    /// The identity a presented token proves: unknown tokens (or wrong secrets) are
    /// [`TokenError::Unknown`], expired and revoked ones say so.
    pub async fn verify(&self, presented: &str) -> Result<SpiffeId, TokenError> {
        let Some((id, secret)) = presented.trim().split_once('.') else {
            return Err(TokenError::Unknown);
        };
        let (id, secret) = (id.to_owned(), secret.to_owned());
        let lookup = id.clone();
        let record = self
            .store
            .run(move |s| s.token(&lookup))
            .await?
            .ok_or(TokenError::Unknown)?;
        if !crate::auth::constant_time_eq(hash(&secret).as_bytes(), record.secret_hash.as_bytes()) {
            return Err(TokenError::Unknown);
        }
        if record.revoked_at.is_some() {
            return Err(TokenError::Revoked(id));
        }
        if record.expires_at <= unix_secs(SystemTime::now()) {
            return Err(TokenError::Expired {
                id,
                at: rfc3339(from_unix_secs(record.expires_at)),
            });
        }
        SpiffeId::parse(&record.identity)
            .map_err(|e| TokenError::Store(crate::store::StoreError::Corrupt(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    #[tokio::test]
    async fn create_verify_revoke() {
        let dir = TempDir::new("tokens");
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let tokens = Tokens::new(store.clone());
        let id = SpiffeId::new("cluster.local", "default", "payments").unwrap();
        let t = tokens.create(&id, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(tokens.verify(&t.token).await.unwrap(), id);
        // The secret is not stored.
        let secret = t.token.split_once('.').unwrap().1;
        let stored = store.token(&t.id).unwrap().unwrap();
        assert!(!serde_json::to_string(&stored).unwrap().contains(secret));
        // A wrong secret is unknown, not "revoked" or "expired".
        let wrong = format!("{}.{}", t.id, "0".repeat(64));
        assert!(matches!(
            tokens.verify(&wrong).await,
            Err(TokenError::Unknown)
        ));
        assert!(matches!(
            tokens.verify("nonsense").await,
            Err(TokenError::Unknown)
        ));
        tokens.revoke(&t.id).await.unwrap();
        assert!(matches!(
            tokens.verify(&t.token).await,
            Err(TokenError::Revoked(_))
        ));
        assert_eq!(tokens.list().await.unwrap()[0].state, "revoked");
        assert!(matches!(
            tokens.revoke("nope").await,
            Err(TokenError::NoSuchToken(_))
        ));
    }
}
