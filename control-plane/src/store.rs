//! The policy store: one redb file holding every resource, the global revision and the leases.
//!
//! Tables:
//! - `resources`: `Kind/name` -> the resource as JSON, including its `revision`;
//! - `meta`: `revision` -> the global revision counter;
//! - `leases`: endpoint name -> id of the proxy that registered it;
//! - `trust_roots`: SHA-256 fingerprint -> a CA certificate the mesh trusts ([`TrustRoot`]);
//!   every snapshot carries all of them as its trust bundle, so a change bumps the revision;
//! - `tokens`: token id -> a bootstrap token ([`TokenRecord`]): the identity it proves and a
//!   hash of its secret, never the secret. Token writes do not bump the revision: no snapshot
//!   holds them.
//!
//! Every write is one write transaction committed with [`Durability::Immediate`] (fsync), so
//! what a caller was told succeeded survives a crash. Each transaction that changes a resource
//! bumps the global revision exactly once and stamps that revision on every resource it wrote,
//! so a resource's revision doubles as its optimistic-concurrency token and a snapshot's version
//! says which writes it contains. redb runs one write transaction at a time, which is what makes
//! the read-check-write of a revision check atomic.
//!
//! The store is synchronous (redb is); async callers go through [`Store::run`], which moves the
//! work (and its fsync) to the blocking pool.

use std::path::Path;
use std::sync::Arc;

use ferrule_config::{Endpoint, Kind, Resource, Snapshot};
use redb::{Database, Durability, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<&str, &str> = TableDefinition::new("leases");
const TRUST_ROOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("trust_roots");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const REVISION_KEY: &str = "revision";

/// The revision of a freshly created store. It is 1, not 0, because snapshot version 0 means
/// "no snapshot" to a proxy, and the empty store is a perfectly good snapshot to serve.
pub const INITIAL_REVISION: u64 = 1;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource does not exist; the payload names it (`Service/echo`).
    #[error("{0} not found")]
    NotFound(String),
    /// A revision check failed or the resource already exists; the payload says what to do.
    #[error("{0}")]
    Conflict(String),
    /// The database failed (I/O, corruption detected by redb, ...). Boxed: redb's error is
    /// large, and every store result would otherwise carry its size.
    #[error("storage error: {0}")]
    Db(Box<redb::Error>),
    /// A stored value could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The blocking task running the operation died.
    #[error("store task failed: {0}")]
    Task(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What a write did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// It did not exist and now does.
    Created,
    /// Its content changed.
    Updated,
    /// The content sent equals the stored content: nothing was written.
    Unchanged,
    /// It was removed.
    Deleted,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
        })
    }
}

/// The outcome of a write for one resource, as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// `Service` or `Endpoint`.
    pub kind: String,
    /// The resource's name.
    pub name: String,
    /// Its revision after the write (for a delete: the global revision of the delete).
    pub revision: u64,
    /// What happened.
    pub action: Action,
}

impl Applied {
    fn new(r: &Resource, action: Action) -> Self {
        Applied {
            kind: r.kind().as_str().to_owned(),
            name: r.name().to_owned(),
            revision: r.revision(),
            action,
        }
    }
}

/// Where a trusted root came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootSource {
    /// Made by this control plane; its key is a file in the data directory.
    Generated,
    /// The operator's root or intermediate (`--ca-cert`, `--ca-key`); its key is never stored.
    Operator,
}

/// A CA certificate the mesh trusts, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustRoot {
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub fingerprint: String,
    /// The certificate (PEM).
    pub certificate: String,
    /// Whether this root signs new workload certificates (exactly one does).
    pub issuing: bool,
    /// Who made it.
    pub source: RootSource,
    /// When it was added (Unix milliseconds); the bundle lists roots in this order.
    pub added_ms: u64,
}

/// A bootstrap token, as stored: the identity it proves and a hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The public half of the token, which names it in the API.
    pub id: String,
    /// The SPIFFE ID a certificate signed with this token carries.
    pub identity: String,
    /// SHA-256 of the secret half, lower-case hex.
    pub secret_hash: String,
    /// Creation time (Unix seconds).
    pub created_at: u64,
    /// Expiry (Unix seconds).
    pub expires_at: u64,
    /// Revocation time (Unix seconds), if revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// The embedded policy database.
pub struct Store {
    db: Database,
    /// The global revision after each committed change; the snapshot builder waits on it.
    changes: watch::Sender<u64>,
    /// Dropped after `db` (fields drop in declaration order), so a receiver that sees it gone
    /// knows the database file is closed and may be opened again.
    closed: watch::Sender<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("revision", &*self.changes.borrow())
            .finish()
    }
}

fn key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str())
}

fn label(kind: Kind, name: &str) -> String {
    key(kind, name)
}

fn decode(bytes: &[u8]) -> Result<Resource, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode(r: &Resource) -> Vec<u8> {
    serde_json::to_vec(r).expect("resources always serialise")
}

/// Whether two resources differ only in their revision.
fn same_content(a: &Resource, b: &Resource) -> bool {
    let mut b = b.clone();
    b.set_revision(a.revision());
    *a == b
}

/// The open tables of one write transaction, plus the revision it will commit at.
struct Writer<'txn> {
    resources: Table<'txn, &'static str, &'static [u8]>,
    leases: Table<'txn, &'static str, &'static str>,
    trust_roots: Table<'txn, &'static str, &'static [u8]>,
    tokens: Table<'txn, &'static str, &'static [u8]>,
    current: u64,
    /// Set by the first change to a resource; every later change reuses it.
    bumped: Option<u64>,
    /// Something (a resource or a lease) was written: commit rather than abort.
    dirty: bool,
}

impl Writer<'_> {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        match self.resources.get(key(kind, name).as_str())? {
            Some(v) => decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn revision(&mut self) -> u64 {
        self.dirty = true;
        *self.bumped.get_or_insert(self.current + 1)
    }

    /// Stores `r` at the transaction's revision and returns it as stored.
    fn put(&mut self, mut r: Resource) -> Result<Resource, StoreError> {
        r.set_revision(self.revision());
        self.resources
            .insert(key(r.kind(), r.name()).as_str(), encode(&r).as_slice())?;
        Ok(r)
    }

    /// Removes a resource (and, for an endpoint, its lease).
    fn remove(&mut self, kind: Kind, name: &str) -> Result<(), StoreError> {
        if self.resources.remove(key(kind, name).as_str())?.is_some() {
            self.revision();
        }
        if kind == Kind::Endpoint && self.leases.remove(name)?.is_some() {
            self.dirty = true;
        }
        Ok(())
    }

    /// Creates or replaces `r` after its revision check (see [`Store::replace`]).
    fn upsert(&mut self, r: Resource, overwrite: bool) -> Result<(Resource, Action), StoreError> {
        let l = r.label();
        match (self.get(r.kind(), r.name())?, r.revision()) {
            (None, 0) => Ok((self.put(r)?, Action::Created)),
            (None, rev) => Err(StoreError::Conflict(format!(
                "{l} does not exist (it may have been deleted), so revision {rev} is stale; \
                 send revision 0 to create it"
            ))),
            (Some(cur), 0) if !overwrite => Err(StoreError::Conflict(format!(
                "{l} already exists at revision {}; a replace must carry the revision it read \
                 (GET it, change it, send it back) so that concurrent writers never overwrite \
                 each other",
                cur.revision()
            ))),
            (Some(cur), rev) if rev != 0 && rev != cur.revision() => {
                Err(StoreError::Conflict(format!(
                    "{l} was changed by someone else: you sent revision {rev} but it is at \
                     revision {}; GET it again and reapply your change",
                    cur.revision()
                )))
            }
            (Some(cur), _) if same_content(&cur, &r) => Ok((cur, Action::Unchanged)),
            (Some(_), _) => Ok((self.put(r)?, Action::Updated)),
        }
    }
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        // Create the tables up front so that read transactions never meet a missing table.
        let txn = db.begin_write()?;
        let revision = {
            txn.open_table(RESOURCES)?;
            txn.open_table(LEASES)?;
            txn.open_table(TRUST_ROOTS)?;
            txn.open_table(TOKENS)?;
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(REVISION_KEY)?.map(|v| v.value());
            match stored {
                Some(rev) => rev,
                None => {
                    meta.insert(REVISION_KEY, INITIAL_REVISION)?;
                    INITIAL_REVISION
                }
            }
        };
        txn.commit()?;
        let (changes, _) = watch::channel(revision);
        let (closed, _) = watch::channel(());
        Ok(Store {
            db,
            changes,
            closed,
        })
    }

    /// Completes once this store has been dropped and its file closed.
    pub fn on_close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            // Nothing is ever sent: `changed` returns only when the sender is dropped.
            while rx.changed().await.is_ok() {}
        }
    }

    /// Runs `f` on the blocking pool: redb reads and commits (fsync) must not stall the
    /// async workers that serve every other request and push stream.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The global revision of the last committed change.
    pub fn revision(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Notifies with the new global revision after every committed change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Runs `f` in one write transaction, committed (with fsync) only if it succeeded and
    /// changed something; on error nothing it did is kept.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write()?;
        // The default already, stated because the API promises it: a write is on disk before
        // its response is sent.
        txn.set_durability(Durability::Immediate);
        let (out, bumped, dirty) = {
            let mut meta = txn.open_table(META)?;
            let current = meta
                .get(REVISION_KEY)?
                .map(|v| v.value())
                .unwrap_or(INITIAL_REVISION);
            let mut w = Writer {
                resources: txn.open_table(RESOURCES)?,
                leases: txn.open_table(LEASES)?,
                trust_roots: txn.open_table(TRUST_ROOTS)?,
                tokens: txn.open_table(TOKENS)?,
                current,
                bumped: None,
                dirty: false,
            };
            let out = f(&mut w)?;
            if let Some(rev) = w.bumped {
                meta.insert(REVISION_KEY, rev)?;
            }
            (out, w.bumped, w.dirty)
        };
        if dirty {
            txn.commit()?;
            if let Some(rev) = bumped {
                self.changes.send_replace(rev);
            }
        } else {
            txn.abort()?;
        }
        Ok(out)
    }

    /// Reads one resource.
    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<Resource>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESOURCES)?;
        match table.get(key(kind, name).as_str())? {
            Some(v) => decode(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every resource of `kind`, ordered by name.
    pub fn list(&self, kind: Kind) -> Result<Vec<Resource>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESOURCES)?;
        list_in(&table, kind)
    }

    /// Every service and endpoint, consistently, at the revision they were read at.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESOURCES)?;
        let meta = txn.open_table(META)?;
        let version = meta
            .get(REVISION_KEY)?
            .map(|v| v.value())
            .unwrap_or(INITIAL_REVISION);
        let roots = roots_in(&txn.open_table(TRUST_ROOTS)?)?;
        let mut snap = Snapshot {
            version,
            trust_bundle: bundle_of(&roots),
            ..Default::default()
        };
        for kind in Kind::ALL {
            for r in list_in(&table, kind)? {
                match r {
                    Resource::Service(s) => snap.services.push(s),
                    Resource::Endpoint(e) => snap.endpoints.push(e),
                }
            }
        }
        Ok(snap)
    }

    /// Creates `r`; a conflict if it exists.
    pub fn create(&self, r: Resource) -> Result<Resource, StoreError> {
        self.write(|w| {
            if let Some(cur) = w.get(r.kind(), r.name())? {
                let (k, n) = (r.kind(), r.name());
                return Err(StoreError::Conflict(format!(
                    "{} already exists (revision {}); to replace it, PUT /v1/{}/{n} with that \
                     revision",
                    label(k, n),
                    cur.revision(),
                    k.plural()
                )));
            }
            w.put(r)
        })
    }

    /// Replaces `r` if its revision equals the stored one; creates it if it is absent and its
    /// revision is 0. A revision of 0 on an existing resource is a conflict: the writer has not
    /// read what it would overwrite. Identical content is left alone (no revision bump).
    pub fn replace(&self, r: Resource) -> Result<(Resource, Action), StoreError> {
        self.write(|w| w.upsert(r, false))
    }

    /// Deletes a resource, checking its revision if `expected` is given; returns the global
    /// revision of the delete.
    pub fn delete(&self, kind: Kind, name: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        self.write(|w| {
            let cur = w
                .get(kind, name)?
                .ok_or_else(|| StoreError::NotFound(label(kind, name)))?;
            if let Some(rev) = expected.filter(|rev| *rev != cur.revision()) {
                return Err(StoreError::Conflict(format!(
                    "{} was changed by someone else: you sent revision {rev} but it is at \
                     revision {}; GET it again before deleting",
                    label(kind, name),
                    cur.revision()
                )));
            }
            w.remove(kind, name)?;
            Ok(w.revision())
        })
    }

    /// Creates or replaces every resource in one transaction: all of them or none.
    ///
    /// A resource carrying a nonzero revision is checked like [`Store::replace`]; revision 0
    /// means "create or overwrite", which is what re-applying a file expects.
    pub fn apply(&self, resources: Vec<Resource>) -> Result<Vec<Applied>, StoreError> {
        self.write(|w| {
            let mut out = Vec::with_capacity(resources.len());
            for r in resources {
                let (stored, action) = w.upsert(r, true)?;
                out.push(Applied::new(&stored, action));
            }
            Ok(out)
        })
    }

    /// Registers (upserts) an endpoint under a lease owned by `proxy`, in one transaction.
    /// The revision is bumped only if the endpoint's content changed. A refused registration
    /// (see [`Store::register_endpoints`]) is a [`StoreError::Conflict`].
    pub fn register_endpoint(&self, ep: Endpoint, proxy: &str) -> Result<Action, StoreError> {
        let mut actions = self.register_endpoints(vec![(ep, proxy.to_owned())])?;
        actions
            .pop()
            .expect("one action per registration")
            .map_err(StoreError::Conflict)
    }

    /// Registers several `(endpoint, owning proxy)` pairs in one transaction (one fsync for
    /// all of them); returns one outcome per pair, in order.
    ///
    /// A sidecar may take over an endpoint that another lease holds only if both carry the
    /// same identity (a rescheduled instance under a new proxy id); it may never overwrite an
    /// endpoint without a lease, which an operator wrote through the API. Both checks are
    /// made here, inside the transaction, so no API write can slip in between check and write.
    pub fn register_endpoints(
        &self,
        regs: Vec<(Endpoint, String)>,
    ) -> Result<Vec<Result<Action, String>>, StoreError> {
        self.write(|w| {
            let mut actions = Vec::with_capacity(regs.len());
            for (mut ep, proxy) in regs {
                // The sidecar does not track store revisions: its registration is "create or
                // overwrite".
                ep.revision = 0;
                let name = ep.name.clone();
                let owner = w.leases.get(name.as_str())?.map(|v| v.value().to_owned());
                if let Some(Resource::Endpoint(cur)) = w.get(Kind::Endpoint, &name)? {
                    if let Err(why) = may_take_over(&cur, owner.is_some(), &ep) {
                        actions.push(Err(why));
                        continue;
                    }
                }
                let (_, action) = w.upsert(Resource::Endpoint(ep), true)?;
                if owner.as_deref() != Some(proxy.as_str()) {
                    w.leases.insert(name.as_str(), proxy.as_str())?;
                    w.dirty = true;
                }
                actions.push(Ok(action));
            }
            Ok(actions)
        })
    }

    /// Removes each `(endpoint, owner)` whose lease is still held by that owner, in one
    /// transaction; returns the names removed. An endpoint re-registered by another proxy, or
    /// deleted through the API meanwhile, is left alone.
    pub fn release_endpoints(
        &self,
        leases: &[(String, String)],
    ) -> Result<Vec<String>, StoreError> {
        self.write(|w| {
            let mut removed = Vec::new();
            for (name, owner) in leases {
                let held = w
                    .leases
                    .get(name.as_str())?
                    .map(|v| v.value() == owner.as_str());
                if held == Some(true) {
                    w.remove(Kind::Endpoint, name)?;
                    removed.push(name.clone());
                }
            }
            Ok(removed)
        })
    }

    /// Every trusted root, in the order they were added.
    pub fn trust_roots(&self) -> Result<Vec<TrustRoot>, StoreError> {
        let txn = self.db.begin_read()?;
        roots_in(&txn.open_table(TRUST_ROOTS)?)
    }

    /// Replaces the set of trusted roots in one transaction. A change bumps the revision, so
    /// the next snapshot carries the new trust bundle; an identical set writes nothing.
    pub fn set_trust_roots(&self, roots: Vec<TrustRoot>) -> Result<(), StoreError> {
        self.write(|w| {
            let mut current = roots_in(&w.trust_roots)?;
            let mut wanted = roots;
            let order = |r: &TrustRoot| (r.added_ms, r.fingerprint.clone());
            current.sort_by_key(order);
            wanted.sort_by_key(order);
            if current == wanted {
                return Ok(());
            }
            for r in &current {
                w.trust_roots.remove(r.fingerprint.as_str())?;
            }
            for r in &wanted {
                let bytes = serde_json::to_vec(r).expect("trust roots always serialise");
                w.trust_roots
                    .insert(r.fingerprint.as_str(), bytes.as_slice())?;
            }
            w.revision();
            Ok(())
        })
    }

    /// Stores a new bootstrap token; a conflict if its id exists.
    pub fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.write(|w| {
            if w.tokens.get(token.id.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "token {} already exists",
                    token.id
                )));
            }
            let bytes = serde_json::to_vec(&token).expect("tokens always serialise");
            w.tokens.insert(token.id.as_str(), bytes.as_slice())?;
            w.dirty = true;
            Ok(())
        })
    }

    /// One bootstrap token.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let found = table.get(id)?;
        found.map(|v| decode_json(v.value())).transpose()
    }

    /// Every bootstrap token, ordered by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(decode_json(v.value())?);
        }
        Ok(out)
    }

    /// Marks a token revoked at `now` (Unix seconds); revoking twice keeps the first time.
    pub fn revoke_token(&self, id: &str, now: u64) -> Result<TokenRecord, StoreError> {
        self.write(|w| {
            let mut token: TokenRecord = match w.tokens.get(id)? {
                Some(v) => decode_json(v.value())?,
                None => return Err(StoreError::NotFound(format!("token {id}"))),
            };
            if token.revoked_at.is_none() {
                token.revoked_at = Some(now);
                let bytes = serde_json::to_vec(&token).expect("tokens always serialise");
                w.tokens.insert(id, bytes.as_slice())?;
                w.dirty = true;
            }
            Ok(token)
        })
    }

    /// Every lease: `(endpoint name, proxy id)`.
    pub fn leases(&self) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEASES)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }
}

/// Whether a sidecar's registration `new` may replace the stored endpoint `cur`.
fn may_take_over(cur: &Endpoint, leased: bool, new: &Endpoint) -> Result<(), String> {
    if !leased {
        return Err(format!(
            "Endpoint/{} was written through the API, and a sidecar never overwrites an \
             operator's endpoint; give the sidecar another endpoint name (its proxy id) or \
             delete the API one",
            cur.name
        ));
    }
    if cur.identity != new.identity {
        let holder = cur
            .identity
            .as_deref()
            .unwrap_or("a sidecar without identity");
        return Err(format!(
            "Endpoint/{} is registered by {holder}; another identity cannot take it over",
            cur.name
        ));
    }
    Ok(())
}

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn roots_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<TrustRoot>, StoreError> {
    let mut out: Vec<TrustRoot> = Vec::new();
    for item in table.iter()? {
        let (_, v) = item?;
        out.push(decode_json(v.value())?);
    }
    out.sort_by(|a, b| (a.added_ms, &a.fingerprint).cmp(&(b.added_ms, &b.fingerprint)));
    Ok(out)
}

/// Every root's PEM, concatenated: the trust bundle snapshots carry.
fn bundle_of(roots: &[TrustRoot]) -> Option<String> {
    if roots.is_empty() {
        return None;
    }
    let mut pem = String::new();
    for r in roots {
        pem.push_str(r.certificate.trim_end());
        pem.push('\n');
    }
    Some(pem)
}

fn list_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    kind: Kind,
) -> Result<Vec<Resource>, StoreError> {
    // Keys are `Kind/name`; '0' is the byte after '/', so this range is exactly one kind.
    let (lo, hi) = (format!("{}/", kind.as_str()), format!("{}0", kind.as_str()));
    let mut out = Vec::new();
    for item in table.range(lo.as_str()..hi.as_str())? {
        let (_, v) = item?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
