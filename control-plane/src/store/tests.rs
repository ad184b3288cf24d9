//! Store tests: revision checks, atomic apply, durability across reopen, leases.

use super::*;
use crate::test_util::{endpoint, service, TempDir};
use ferrule_config::Protocol;

fn open(dir: &TempDir) -> Store {
    Store::open(&dir.path().join("ferrule.redb")).expect("open store")
}

fn with_protocol(r: &Resource, p: Protocol) -> Resource {
    let mut r = r.clone();
    if let Resource::Service(s) = &mut r {
        s.protocol = p;
    }
    r
}

#[test]
fn create_stamps_the_global_revision_and_refuses_duplicates() {
    let dir = TempDir::new("store");
    let store = open(&dir);
    assert_eq!(store.revision(), INITIAL_REVISION);
    let a = store.create(service("a")).unwrap();
    assert_eq!(a.revision(), INITIAL_REVISION + 1);
    let b = store.create(service("b")).unwrap();
    assert_eq!(b.revision(), INITIAL_REVISION + 2);
    assert_eq!(store.revision(), b.revision());
    let err = store.create(service("a")).unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("already exists")),
        "{err}"
    );
    assert_eq!(
        store.revision(),
        b.revision(),
        "a failed write bumps nothing"
    );
    assert_eq!(store.get(Kind::Service, "a").unwrap(), Some(a));
    assert_eq!(store.get(Kind::Service, "zzz").unwrap(), None);
}

#[test]
fn replace_checks_the_revision_so_no_update_is_lost() {
    let dir = TempDir::new("store");
    let store = open(&dir);
    let v1 = store.create(service("echo")).unwrap();

    // Two writers read v1; the first wins, the second is told to re-read.
    let (first, action) = store.replace(with_protocol(&v1, Protocol::Grpc)).unwrap();
    assert_eq!(action, Action::Updated);
    assert!(first.revision() > v1.revision());
    let err = store
        .replace(with_protocol(&v1, Protocol::Tcp))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("changed by someone else")),
        "{err}"
    );

    // Revision 0 on an existing resource is refused with an explanation.
    let mut blind = with_protocol(&v1, Protocol::Tcp);
    blind.set_revision(0);
    let err = store.replace(blind).unwrap_err().to_string();
    assert!(err.contains("must carry the revision"), "{err}");

    // Identical content: nothing written, no bump.
    let rev = store.revision();
    let (same, action) = store.replace(first.clone()).unwrap();
    assert_eq!(
        (action, same.revision(), store.revision()),
        (Action::Unchanged, first.revision(), rev)
    );

    // Revision 0 on a missing resource creates it; a nonzero one is stale.
    let (_, action) = store.replace(service("new")).unwrap();
    assert_eq!(action, Action::Created);
    let mut ghost = service("ghost");
    ghost.set_revision(3);
    assert!(matches!(store.replace(ghost), Err(StoreError::Conflict(_))));
}

#[test]
fn delete_checks_the_optional_revision() {
    let dir = TempDir::new("store");
    let store = open(&dir);
    let a = store.create(service("a")).unwrap();
    assert!(matches!(
        store.delete(Kind::Service, "a", Some(a.revision() + 7)),
        Err(StoreError::Conflict(_))
    ));
    let rev = store
        .delete(Kind::Service, "a", Some(a.revision()))
        .unwrap();
    assert_eq!(rev, store.revision());
    assert!(
        matches!(store.delete(Kind::Service, "a", None), Err(StoreError::NotFound(ref l)) if l == "Service/a")
    );
}

#[test]
fn apply_is_all_or_nothing_and_one_revision() {
    let dir = TempDir::new("store");
    let store = open(&dir);
    let a = store.create(service("a")).unwrap();
    let before = store.revision();

    // The last document carries a stale revision: nothing of the batch may be written.
    let mut stale = with_protocol(&a, Protocol::Grpc);
    stale.set_revision(a.revision() + 100);
    let err = store
        .apply(vec![service("b"), endpoint("b-1", "b", 9000), stale])
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.revision(), before);
    assert_eq!(store.get(Kind::Service, "b").unwrap(), None);
    assert_eq!(store.get(Kind::Endpoint, "b-1").unwrap(), None);

    // A good batch: one revision for all, with per-resource actions.
    let mut overwrite = with_protocol(&a, Protocol::Grpc);
    overwrite.set_revision(0);
    let out = store
        .apply(vec![service("b"), endpoint("b-1", "b", 9000), overwrite])
        .unwrap();
    let rev = before + 1;
    assert_eq!(store.revision(), rev);
    let got: Vec<_> = out
        .iter()
        .map(|a| (a.name.as_str(), a.action, a.revision))
        .collect();
    assert_eq!(
        got,
        [
            ("b", Action::Created, rev),
            ("b-1", Action::Created, rev),
            ("a", Action::Updated, rev)
        ]
    );

    // Re-applying the same content changes nothing.
    let out = store
        .apply(vec![service("b"), endpoint("b-1", "b", 9000)])
        .unwrap();
    assert!(out
        .iter()
        .all(|a| a.action == Action::Unchanged && a.revision == rev));
    assert_eq!(store.revision(), rev);
}

#[test]
fn everything_survives_reopen() {
    let dir = TempDir::new("store");
    let (svc, rev) = {
        let store = open(&dir);
        let svc = store.create(service("echo")).unwrap();
        store.create(endpoint("echo-1", "echo", 9001)).unwrap();
        store
            .register_endpoint(endpoint_of("echo-2", 9002), "proxy-2")
            .unwrap();
        store.delete(Kind::Endpoint, "echo-1", None).unwrap();
        (svc, store.revision())
    };
    let store = open(&dir);
    assert_eq!(store.revision(), rev);
    assert_eq!(store.get(Kind::Service, "echo").unwrap(), Some(svc));
    assert_eq!(store.get(Kind::Endpoint, "echo-1").unwrap(), None);
    assert_eq!(
        store.leases().unwrap(),
        [("echo-2".to_owned(), "proxy-2".to_owned())]
    );
    let snap = store.snapshot().unwrap();
    assert_eq!(snap.version, rev);
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.endpoints.len(), 1);
    // The next write continues the revision sequence rather than restarting it.
    assert_eq!(store.create(service("next")).unwrap().revision(), rev + 1);
}

fn endpoint_of(name: &str, port: u16) -> Endpoint {
    match endpoint(name, "echo", port) {
        Resource::Endpoint(e) => e,
        Resource::Service(_) => unreachable!("endpoint() builds endpoints"),
    }
}

#[test]
fn registration_bumps_only_on_change_and_release_respects_the_owner() {
    let dir = TempDir::new("store");
    let store = open(&dir);
    let mut changes = store.subscribe();
    assert_eq!(
        store
            .register_endpoint(endpoint_of("e", 1000), "p1")
            .unwrap(),
        Action::Created
    );
    let rev = store.revision();
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();

    // Same content, even under a new owner: the lease moves, the revision does not.
    assert_eq!(
        store
            .register_endpoint(endpoint_of("e", 1000), "p2")
            .unwrap(),
        Action::Unchanged
    );
    assert_eq!(store.revision(), rev);
    assert!(!changes.has_changed().unwrap());
    assert_eq!(store.leases().unwrap(), [("e".to_owned(), "p2".to_owned())]);

    // p1 no longer owns it, so its expiry must not remove p2's endpoint.
    assert!(store
        .release_endpoints(&[("e".into(), "p1".into())])
        .unwrap()
        .is_empty());
    assert!(store.get(Kind::Endpoint, "e").unwrap().is_some());
    assert_eq!(
        store
            .release_endpoints(&[("e".into(), "p2".into())])
            .unwrap(),
        ["e"]
    );
    assert!(store.get(Kind::Endpoint, "e").unwrap().is_none());
    assert!(store.leases().unwrap().is_empty());
    assert_eq!(store.revision(), rev + 1);
}

#[test]
fn deleting_a_leased_endpoint_drops_its_lease() {
    let dir = TempDir::new("store");
    let store = open(&dir);
    store
        .register_endpoint(endpoint_of("e", 1000), "p1")
        .unwrap();
    store.delete(Kind::Endpoint, "e", None).unwrap();
    assert!(store.leases().unwrap().is_empty());
}

#[test]
fn a_sidecar_never_overwrites_an_api_endpoint_or_another_identitys() {
    let dir = TempDir::new("store");
    let store = open(&dir);
    store.create(endpoint("static", "echo", 9000)).unwrap();
    let err = store
        .register_endpoint(endpoint_of("static", 9100), "p1")
        .unwrap_err();
    assert!(err.to_string().contains("written through the API"), "{err}");
    assert!(store.leases().unwrap().is_empty());

    let mut mine = endpoint_of("e", 1000);
    mine.identity = Some("spiffe://cluster.local/ns/default/sa/echo".into());
    store.register_endpoint(mine.clone(), "p1").unwrap();
    let mut theirs = endpoint_of("e", 1001);
    theirs.identity = Some("spiffe://cluster.local/ns/default/sa/other".into());
    let err = store.register_endpoint(theirs, "p2").unwrap_err();
    assert!(err.to_string().contains("another identity"), "{err}");
    let anonymous = endpoint_of("e", 1002);
    assert!(store.register_endpoint(anonymous, "p3").is_err());
    // The same identity under a new proxy id takes it over (a rescheduled instance).
    assert_eq!(
        store.register_endpoint(mine, "p4").unwrap(),
        Action::Unchanged
    );
    assert_eq!(store.leases().unwrap(), [("e".to_owned(), "p4".to_owned())]);
}

#[test]
fn trust_roots_are_in_every_snapshot_and_a_change_bumps_the_revision() {
    use crate::store::{RootSource, TrustRoot};
    let dir = TempDir::new("store");
    let store = open(&dir);
    let root = |fp: &str, added_ms| TrustRoot {
        fingerprint: fp.into(),
        certificate: format!("-----BEGIN CERTIFICATE-----\n{fp}\n-----END CERTIFICATE-----\n"),
        issuing: false,
        source: RootSource::Generated,
        added_ms,
    };
    let rev = store.revision();
    store
        .set_trust_roots(vec![root("b", 2), root("a", 1)])
        .unwrap();
    assert_eq!(store.revision(), rev + 1);
    let snap = store.snapshot().unwrap();
    let bundle = snap.trust_bundle.unwrap();
    assert!(
        bundle.find("\na\n").unwrap() < bundle.find("\nb\n").unwrap(),
        "oldest first"
    );
    // The same set again writes nothing.
    store
        .set_trust_roots(vec![root("a", 1), root("b", 2)])
        .unwrap();
    assert_eq!(store.revision(), rev + 1);
    store.set_trust_roots(vec![root("b", 2)]).unwrap();
    assert_eq!(store.revision(), rev + 2);
    assert!(!store
        .snapshot()
        .unwrap()
        .trust_bundle
        .unwrap()
        .contains("\na\n"));
}
