//! The storage contract: every [`Store`] method and its edge cases, run against SQLite and
//! PostgreSQL alike, plus the rules that need a backend of their own (concurrent creates,
//! identical migrations, SQLite durability).
//!
//! PostgreSQL tests use a fresh database per test on the server named by `TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`) and pass with a note on stderr when it
//! is not reachable, unless `ATLAS_REQUIRE_POSTGRES=1`.

mod common {
    pub mod pg;
}

use std::sync::Arc;

use atlas_integrations::domain::ids::{GroupId, ObjectId, OrgId};
use atlas_integrations::domain::integration::IntegrationType;
use atlas_integrations::store::{
    self, now_ms, ApiKey, Org, OrgRole, Project, ProjectRole, ReadHint, SealedRef, Store,
    StoreError, StoredIntegration,
};
use common::pg::TestDb;
use tempfile::TempDir;

/// A store on a fresh, migrated database, with what must outlive it. Fields drop in order:
/// the store (and its connections) before its database.
struct Fresh {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
    _db: Option<TestDb>,
}

async fn fresh_sqlite(pool_size: u32) -> Fresh {
    let dir = TempDir::new().expect("temporary directory");
    let url = store::sqlite::url_for_path(&dir.path().join("atlas.db"));
    let store = store::open(&url, true, pool_size)
        .await
        .expect("open a fresh SQLite store");
    Fresh {
        store,
        _dir: Some(dir),
        _db: None,
    }
}

/// `None` when PostgreSQL is not reachable (and not required): the caller returns early.
async fn fresh_postgres(pool_size: u32) -> Option<Fresh> {
    let db = TestDb::create().await?;
    let store = store::open(db.url(), true, pool_size)
        .await
        .expect("open a fresh PostgreSQL store");
    Some(Fresh {
        store,
        _dir: None,
        _db: Some(db),
    })
}

fn integration(kind: IntegrationType, sealed: &[u8]) -> StoredIntegration {
    StoredIntegration {
        id: ObjectId::generate(),
        kind,
        sealed: sealed.to_vec(),
    }
}

fn org(name: &str, created_at: i64) -> Org {
    Org {
        id: ObjectId::generate(),
        name: name.to_owned(),
        created_at,
    }
}

fn project(org: &Org, name: &str, created_at: i64) -> Project {
    Project {
        id: ObjectId::generate(),
        org_id: org.id,
        name: name.to_owned(),
        created_at,
    }
}

/// An API key as `list_api_keys` returns it, with roles and access list in a fixed order (the
/// contract does not fix theirs).
fn normalized(mut key: ApiKey) -> ApiKey {
    key.project_roles.sort_by_key(|(group, _)| *group);
    key.access_list.sort();
    key
}

async fn listed_key(store: &dyn Store, public_key: &str) -> Option<ApiKey> {
    store
        .list_api_keys()
        .await
        .expect("list_api_keys")
        .into_iter()
        .find(|k| k.public_key == public_key)
        .map(normalized)
}

async fn epoch(store: &dyn Store) -> i64 {
    store.auth_epoch().await.expect("auth_epoch")
}

/// Checks that `auth_epoch` rose above `before`; returns the new value.
async fn rose(store: &dyn Store, before: i64, after_what: &str) -> i64 {
    let now = epoch(store).await;
    assert!(
        now > before,
        "auth_epoch did not rise after {after_what}: {before} -> {now}"
    );
    now
}

async fn integrations(store: &dyn Store, group: GroupId) -> Vec<StoredIntegration> {
    store
        .list_integrations(group)
        .await
        .expect("list_integrations")
}

/// Every trait method and its edge cases, on an empty store.
async fn story(store: &dyn Store) {
    store.ping().await.expect("ping");
    let base = now_ms();
    let unknown = ObjectId::generate();

    // Organizations, oldest first whatever the insertion order.
    assert!(store.list_orgs().await.expect("list_orgs").is_empty());
    let org_a = org("Org A", base);
    let org_b = org("Org B", base + 1);
    store.create_org(&org_b).await.expect("create org B");
    store.create_org(&org_a).await.expect("create org A");
    assert_eq!(
        store.list_orgs().await.expect("list_orgs"),
        [org_a.clone(), org_b.clone()]
    );

    // Projects.
    let start = epoch(store).await;
    let p1 = project(&org_a, "p1", base + 10);
    let p2 = project(&org_a, "p2", base + 11);
    let p3 = project(&org_b, "p3", base + 12);
    store.create_project(&p1).await.expect("create p1");
    let mut e = rose(store, start, "create_project").await;
    store.create_project(&p3).await.expect("create p3");
    store.create_project(&p2).await.expect("create p2");
    rose(store, e, "create_project").await;
    let orphan = project(&org_a, "orphan", base + 13);
    let orphan = Project {
        org_id: unknown,
        ..orphan
    };
    let refused = store.create_project(&orphan).await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "create_project with an unknown org: expected NotFound, got {refused:?}"
    );
    assert_eq!(store.project(orphan.id).await.expect("project"), None);
    assert_eq!(
        store.project(p1.id).await.expect("project"),
        Some(p1.clone())
    );
    assert_eq!(store.project(unknown).await.expect("project"), None);
    assert_eq!(
        store
            .list_projects(Some(org_a.id))
            .await
            .expect("list_projects"),
        [p1.clone(), p2.clone()]
    );
    assert_eq!(
        store
            .list_projects(Some(org_b.id))
            .await
            .expect("list_projects"),
        std::slice::from_ref(&p3)
    );
    assert_eq!(
        store.list_projects(None).await.expect("list_projects"),
        [p1.clone(), p2.clone(), p3.clone()]
    );
    assert!(store
        .list_projects(Some(unknown))
        .await
        .expect("list_projects")
        .is_empty());

    // Integrations: none of these writes touches auth_epoch.
    let e_before_integrations = epoch(store).await;
    assert!(integrations(store, p1.id).await.is_empty());
    let pager_duty = integration(IntegrationType::PagerDuty, b"pager duty v1");
    let slack = integration(IntegrationType::Slack, &[0, 1, 127, 128, 255, 0]);
    let datadog = integration(IntegrationType::Datadog, b"datadog v1");
    for it in [&pager_duty, &slack, &datadog] {
        store
            .create_integration(p1.id, it)
            .await
            .unwrap_or_else(|err| panic!("create {}: {err}", it.kind));
    }
    let again = integration(IntegrationType::PagerDuty, b"pager duty again");
    let refused = store.create_integration(p1.id, &again).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "second create of PAGER_DUTY: expected Conflict, got {refused:?}"
    );
    let refused = store
        .create_integration(unknown, &integration(IntegrationType::Slack, b"x"))
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "create_integration on an unknown project: expected NotFound, got {refused:?}"
    );
    // Every write path to a project that does not exist is refused the same way, and
    // leaves nothing behind.
    let orphan = integration(IntegrationType::Slack, b"x");
    let refused = [
        store.replace_integration(unknown, &orphan).await.map(drop),
        store
            .create_integration_listed(unknown, &orphan)
            .await
            .map(drop),
        store
            .replace_integration_listed(unknown, &orphan)
            .await
            .map(drop),
    ];
    for (write, refused) in ["replace", "create_listed", "replace_listed"]
        .iter()
        .zip(refused)
    {
        assert!(
            matches!(refused, Err(StoreError::NotFound)),
            "{write} on an unknown project: expected NotFound, got {refused:?}"
        );
    }
    assert_eq!(integrations(store, unknown).await, []);
    assert_eq!(
        integrations(store, p1.id).await,
        [pager_duty.clone(), slack.clone(), datadog.clone()],
        "list in creation order, the refused create changing nothing"
    );
    assert_eq!(
        store
            .get_integration(p1.id, IntegrationType::Slack)
            .await
            .expect("get_integration"),
        Some(slack.clone())
    );
    assert_eq!(
        store
            .get_integration(p1.id, IntegrationType::Webhook)
            .await
            .expect("get_integration"),
        None
    );

    // Replace keeps the id and the position.
    let slack_v2 = integration(IntegrationType::Slack, b"slack v2");
    assert_eq!(
        store
            .replace_integration(p1.id, &slack_v2)
            .await
            .expect("replace SLACK"),
        slack.id
    );
    let slack = StoredIntegration {
        sealed: slack_v2.sealed.clone(),
        ..slack
    };
    assert_eq!(
        integrations(store, p1.id).await,
        [pager_duty.clone(), slack.clone(), datadog.clone()]
    );

    // Replace of a missing type creates it, with the given id, at the end.
    let webhook = integration(IntegrationType::Webhook, b"webhook v1");
    assert_eq!(
        store
            .replace_integration(p1.id, &webhook)
            .await
            .expect("replace WEBHOOK"),
        webhook.id
    );
    assert_eq!(
        integrations(store, p1.id).await,
        [
            pager_duty.clone(),
            slack.clone(),
            datadog.clone(),
            webhook.clone()
        ]
    );

    // Delete, then create again: at the end, with the new id.
    assert!(store
        .delete_integration(p1.id, IntegrationType::PagerDuty)
        .await
        .expect("delete PAGER_DUTY"));
    assert!(!store
        .delete_integration(p1.id, IntegrationType::PagerDuty)
        .await
        .expect("delete PAGER_DUTY again"));
    assert!(!store
        .delete_integration(p1.id, IntegrationType::Prometheus)
        .await
        .expect("delete missing PROMETHEUS"));
    assert_eq!(
        store
            .get_integration(p1.id, IntegrationType::PagerDuty)
            .await
            .expect("get_integration"),
        None
    );
    let pager_duty = integration(IntegrationType::PagerDuty, b"pager duty v2");
    store
        .create_integration(p1.id, &pager_duty)
        .await
        .expect("create PAGER_DUTY again");
    let p1_integrations = [
        slack.clone(),
        datadog.clone(),
        webhook.clone(),
        pager_duty.clone(),
    ];
    assert_eq!(integrations(store, p1.id).await, p1_integrations);

    // Projects have separate integrations: the same type in another project is no conflict.
    let p2_pager_duty = integration(IntegrationType::PagerDuty, b"p2 pager duty");
    store
        .create_integration(p2.id, &p2_pager_duty)
        .await
        .expect("create PAGER_DUTY in p2");
    assert_eq!(
        integrations(store, p2.id).await,
        std::slice::from_ref(&p2_pager_duty)
    );
    assert!(store
        .delete_integration(p2.id, IntegrationType::PagerDuty)
        .await
        .expect("delete PAGER_DUTY in p2"));
    assert_eq!(integrations(store, p1.id).await, p1_integrations);
    assert!(integrations(store, p2.id).await.is_empty());
    store
        .create_integration(p2.id, &p2_pager_duty)
        .await
        .expect("create PAGER_DUTY in p2 again");
    let p3_slack = integration(IntegrationType::Slack, b"p3 slack");
    store
        .replace_integration(p3.id, &p3_slack)
        .await
        .expect("replace SLACK in p3");
    assert_eq!(
        integrations(store, p3.id).await,
        std::slice::from_ref(&p3_slack)
    );
    assert_eq!(
        epoch(store).await,
        e_before_integrations,
        "integration writes must not change auth_epoch"
    );

    // API keys.
    let key1 = ApiKey {
        id: ObjectId::generate(),
        org_id: org_a.id,
        public_key: "abcdefgh".to_owned(),
        sealed_private_key: vec![9, 0, 255, 1],
        description: "first key".to_owned(),
        org_role: OrgRole::ReadOnly,
        created_at: base + 20,
        project_roles: vec![(p1.id, ProjectRole::Owner), (p2.id, ProjectRole::ReadOnly)],
        access_list: vec!["10.0.0.0/8".to_owned(), "192.168.1.1".to_owned()],
    };
    let key2 = ApiKey {
        id: ObjectId::generate(),
        org_id: org_b.id,
        public_key: "ijklmnop".to_owned(),
        sealed_private_key: b"sealed private 2".to_vec(),
        description: String::new(),
        org_role: OrgRole::Owner,
        created_at: base + 21,
        project_roles: Vec::new(),
        access_list: Vec::new(),
    };
    e = epoch(store).await;
    store.create_api_key(&key1).await.expect("create key 1");
    e = rose(store, e, "create_api_key").await;
    store.create_api_key(&key2).await.expect("create key 2");
    e = rose(store, e, "create_api_key").await;
    let duplicate = ApiKey {
        id: ObjectId::generate(),
        ..key2.clone()
    };
    let refused = store.create_api_key(&duplicate).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "create_api_key with a public key in use: expected Conflict, got {refused:?}"
    );
    let homeless = ApiKey {
        id: ObjectId::generate(),
        org_id: unknown,
        public_key: "qrstuvwx".to_owned(),
        ..key2.clone()
    };
    let refused = store.create_api_key(&homeless).await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "create_api_key with an unknown org: expected NotFound, got {refused:?}"
    );
    let badly_roled = ApiKey {
        id: ObjectId::generate(),
        public_key: "qrstuvwx".to_owned(),
        project_roles: vec![(unknown, ProjectRole::Owner)],
        access_list: vec!["10.1.0.0/16".to_owned()],
        ..key2.clone()
    };
    let refused = store.create_api_key(&badly_roled).await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "create_api_key with a role on an unknown project: expected NotFound, got {refused:?}"
    );
    let keys = store.list_api_keys().await.expect("list_api_keys");
    assert_eq!(
        keys.len(),
        2,
        "refused creates must leave nothing behind: {keys:?}"
    );
    assert_eq!(
        listed_key(store, "abcdefgh").await,
        Some(normalized(key1.clone()))
    );
    assert_eq!(
        listed_key(store, "ijklmnop").await,
        Some(normalized(key2.clone()))
    );

    // Project roles.
    store
        .set_project_role("ijklmnop", p3.id, ProjectRole::ReadOnly)
        .await
        .expect("set_project_role");
    e = rose(store, e, "set_project_role (insert)").await;
    assert_eq!(
        listed_key(store, "ijklmnop")
            .await
            .expect("key 2")
            .project_roles,
        [(p3.id, ProjectRole::ReadOnly)]
    );
    store
        .set_project_role("ijklmnop", p3.id, ProjectRole::Owner)
        .await
        .expect("set_project_role");
    e = rose(store, e, "set_project_role (change)").await;
    assert_eq!(
        listed_key(store, "ijklmnop")
            .await
            .expect("key 2")
            .project_roles,
        [(p3.id, ProjectRole::Owner)]
    );
    let refused = store
        .set_project_role("zzzzzzzz", p3.id, ProjectRole::Owner)
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "set_project_role for an unknown key: expected NotFound, got {refused:?}"
    );
    let refused = store
        .set_project_role("ijklmnop", unknown, ProjectRole::Owner)
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "set_project_role on an unknown project: expected NotFound, got {refused:?}"
    );
    assert!(store
        .remove_project_role("ijklmnop", p3.id)
        .await
        .expect("remove_project_role"));
    e = rose(store, e, "remove_project_role").await;
    assert!(!store
        .remove_project_role("ijklmnop", p3.id)
        .await
        .expect("remove_project_role again"));
    assert!(listed_key(store, "ijklmnop")
        .await
        .expect("key 2")
        .project_roles
        .is_empty());

    // Access list.
    store
        .add_access_entry("ijklmnop", "203.0.113.0/24")
        .await
        .expect("add_access_entry");
    e = rose(store, e, "add_access_entry").await;
    store
        .add_access_entry("ijklmnop", "203.0.113.0/24")
        .await
        .expect("add_access_entry again (idempotent)");
    store
        .add_access_entry("ijklmnop", "2001:db8::/32")
        .await
        .expect("add_access_entry");
    e = rose(store, e, "add_access_entry").await;
    assert_eq!(
        listed_key(store, "ijklmnop")
            .await
            .expect("key 2")
            .access_list,
        ["2001:db8::/32", "203.0.113.0/24"]
    );
    let refused = store.add_access_entry("zzzzzzzz", "10.0.0.1").await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "add_access_entry for an unknown key: expected NotFound, got {refused:?}"
    );
    assert!(store
        .remove_access_entry("ijklmnop", "203.0.113.0/24")
        .await
        .expect("remove_access_entry"));
    e = rose(store, e, "remove_access_entry").await;
    assert!(!store
        .remove_access_entry("ijklmnop", "203.0.113.0/24")
        .await
        .expect("remove_access_entry again"));
    assert_eq!(
        listed_key(store, "ijklmnop")
            .await
            .expect("key 2")
            .access_list,
        ["2001:db8::/32"]
    );

    // Deleting a project removes its integrations and the roles on it, nothing else.
    assert!(store.delete_project(p2.id).await.expect("delete p2"));
    rose(store, e, "delete_project").await;
    assert_eq!(store.project(p2.id).await.expect("project"), None);
    assert_eq!(
        store.list_projects(None).await.expect("list_projects"),
        [p1.clone(), p3.clone()]
    );
    assert!(integrations(store, p2.id).await.is_empty());
    assert_eq!(
        store
            .get_integration(p2.id, IntegrationType::PagerDuty)
            .await
            .expect("get_integration"),
        None
    );
    assert_eq!(integrations(store, p1.id).await, p1_integrations);
    assert_eq!(
        listed_key(store, "abcdefgh")
            .await
            .expect("key 1")
            .project_roles,
        [(p1.id, ProjectRole::Owner)]
    );
    assert!(!store.delete_project(p2.id).await.expect("delete p2 again"));

    // Metadata: the first value stays.
    assert_eq!(store.meta("salt").await.expect("meta"), None);
    assert_eq!(
        store
            .put_meta_if_absent("salt", b"first")
            .await
            .expect("put_meta_if_absent"),
        b"first"
    );
    assert_eq!(
        store
            .put_meta_if_absent("salt", b"second")
            .await
            .expect("put_meta_if_absent again"),
        b"first"
    );
    assert_eq!(
        store.meta("salt").await.expect("meta"),
        Some(b"first".to_vec())
    );
    let check: &[u8] = &[0, 200, 13, 10];
    store
        .put_meta_if_absent("check", check)
        .await
        .expect("put_meta_if_absent");

    // Every sealed value, and nothing else.
    let mut expected: Vec<(SealedRef, Vec<u8>)> = p1_integrations
        .iter()
        .map(|it| {
            let at = SealedRef::Integration {
                group: p1.id,
                kind: it.kind,
            };
            (at, it.sealed.clone())
        })
        .collect();
    expected.push((
        SealedRef::Integration {
            group: p3.id,
            kind: IntegrationType::Slack,
        },
        p3_slack.sealed.clone(),
    ));
    for key in [&key1, &key2] {
        let at = SealedRef::ApiKey { id: key.id };
        expected.push((at, key.sealed_private_key.clone()));
    }
    expected.push((
        SealedRef::Meta {
            name: "salt".to_owned(),
        },
        b"first".to_vec(),
    ));
    expected.push((
        SealedRef::Meta {
            name: "check".to_owned(),
        },
        check.to_vec(),
    ));
    let sealed = store.sealed_values().await.expect("sealed_values");
    assert_eq!(
        sealed.len(),
        expected.len(),
        "sealed_values: {sealed:?}, expected {expected:?}"
    );
    for entry in &expected {
        assert!(
            sealed.contains(entry),
            "sealed_values lacks {entry:?}: {sealed:?}"
        );
    }

    // Reseal is compare-and-swap, for each kind of sealed value.
    let at = SealedRef::Integration {
        group: p1.id,
        kind: IntegrationType::Datadog,
    };
    assert!(!store
        .reseal(&at, b"not the stored value", b"resealed")
        .await
        .expect("reseal"));
    assert_eq!(integrations(store, p1.id).await, p1_integrations);
    assert!(store
        .reseal(&at, &datadog.sealed, b"datadog resealed")
        .await
        .expect("reseal"));
    assert!(
        !store
            .reseal(&at, &datadog.sealed, b"again")
            .await
            .expect("reseal"),
        "reseal with a stale old value"
    );
    let datadog = StoredIntegration {
        sealed: b"datadog resealed".to_vec(),
        ..datadog
    };
    let p1_integrations = [slack, datadog, webhook, pager_duty];
    assert_eq!(integrations(store, p1.id).await, p1_integrations);
    let missing = SealedRef::Integration {
        group: p1.id,
        kind: IntegrationType::Prometheus,
    };
    assert!(!store
        .reseal(&missing, b"", b"new")
        .await
        .expect("reseal missing"));

    let at = SealedRef::ApiKey { id: key1.id };
    assert!(!store.reseal(&at, b"wrong", b"new").await.expect("reseal"));
    assert!(store
        .reseal(&at, &key1.sealed_private_key, b"key 1 resealed")
        .await
        .expect("reseal"));
    assert_eq!(
        listed_key(store, "abcdefgh")
            .await
            .expect("key 1")
            .sealed_private_key,
        b"key 1 resealed"
    );

    let at = SealedRef::Meta {
        name: "salt".to_owned(),
    };
    assert!(!store.reseal(&at, b"second", b"new").await.expect("reseal"));
    assert!(store
        .reseal(&at, b"first", b"salt resealed")
        .await
        .expect("reseal"));
    assert_eq!(
        store.meta("salt").await.expect("meta"),
        Some(b"salt resealed".to_vec())
    );
    let at = SealedRef::Meta {
        name: "absent".to_owned(),
    };
    assert!(!store
        .reseal(&at, b"", b"new")
        .await
        .expect("reseal missing"));
    assert_eq!(store.meta("absent").await.expect("meta"), None);

    // Deleting keys, with their roles and access lists.
    e = epoch(store).await;
    assert!(store
        .delete_api_key("ijklmnop")
        .await
        .expect("delete key 2"));
    e = rose(store, e, "delete_api_key").await;
    assert_eq!(listed_key(store, "ijklmnop").await, None);
    assert!(!store
        .delete_api_key("ijklmnop")
        .await
        .expect("delete key 2 again"));
    assert!(store
        .delete_api_key("abcdefgh")
        .await
        .expect("delete key 1"));
    rose(store, e, "delete_api_key").await;
    assert!(store
        .list_api_keys()
        .await
        .expect("list_api_keys")
        .is_empty());
    let refused = store.add_access_entry("abcdefgh", "10.0.0.1").await;
    assert!(
        matches!(refused, Err(StoreError::NotFound)),
        "add_access_entry for a deleted key: expected NotFound, got {refused:?}"
    );
    // The same key created again starts without the old roles and access list.
    let reborn = ApiKey {
        project_roles: Vec::new(),
        access_list: Vec::new(),
        ..key1.clone()
    };
    store
        .create_api_key(&reborn)
        .await
        .expect("create key 1 again");
    assert_eq!(listed_key(store, "abcdefgh").await, Some(reborn));
    let sealed = store.sealed_values().await.expect("sealed_values");
    assert_eq!(
        sealed
            .iter()
            .filter(|(at, _)| matches!(at, SealedRef::ApiKey { .. }))
            .count(),
        1,
        "sealed_values after deleting key 2: {sealed:?}"
    );
}

#[tokio::test]
async fn sqlite_story() {
    let fresh = fresh_sqlite(4).await;
    story(fresh.store.as_ref()).await;
}

#[tokio::test]
async fn postgres_story() {
    let Some(fresh) = fresh_postgres(4).await else {
        return;
    };
    story(fresh.store.as_ref()).await;
}

/// 16 tasks create the same `(project, type)` at once: exactly one wins, 15 get `Conflict`,
/// and the winner's row is the one stored.
async fn concurrent_creates(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    let org = org("Org", now_ms());
    store.create_org(&org).await.expect("create org");
    let group = project(&org, "p", now_ms());
    store.create_project(&group).await.expect("create project");
    let group = group.id;
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = Arc::clone(&store);
            let start = Arc::clone(&start);
            let it = integration(IntegrationType::Webhook, format!("config {i}").as_bytes());
            tokio::spawn(async move {
                start.wait().await;
                let result = store.create_integration(group, &it).await;
                (it, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        match task.await.expect("task") {
            (it, Ok(())) => winners.push(it),
            (_, Err(StoreError::Conflict(_))) => conflicts += 1,
            (_, Err(err)) => panic!("expected Ok or Conflict, got {err:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "successful creates: {winners:?}");
    assert_eq!(conflicts, TASKS - 1);
    assert_eq!(
        store
            .list_integrations(group)
            .await
            .expect("list_integrations"),
        winners
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_creates_of_one_type_on_sqlite_give_one_success_and_fifteen_conflicts() {
    let fresh = fresh_sqlite(16).await;
    concurrent_creates(Arc::clone(&fresh.store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_creates_of_one_type_on_postgres_give_one_success_and_fifteen_conflicts()
{
    let Some(fresh) = fresh_postgres(16).await else {
        return;
    };
    concurrent_creates(Arc::clone(&fresh.store)).await;
}

/// Deleting a project deletes its integrations, not only the project: a project created
/// after it (on SQLite it takes the deleted project's number, so its rows the same keys)
/// creates, replaces and lists its own integrations as if the first had never been.
async fn deleted_projects_leave_no_integrations(store: Arc<dyn Store>) {
    let org = org("Org", now_ms());
    store.create_org(&org).await.expect("create org");
    let kept = project(&org, "kept", now_ms());
    store.create_project(&kept).await.expect("create project");
    let kept_rows = [integration(IntegrationType::Slack, b"kept slack")];
    store
        .create_integration(kept.id, &kept_rows[0])
        .await
        .expect("create");
    let gone = project(&org, "gone", now_ms());
    store.create_project(&gone).await.expect("create project");
    for kind in [IntegrationType::Slack, IntegrationType::Webhook] {
        store
            .create_integration(gone.id, &integration(kind, b"gone"))
            .await
            .expect("create");
    }
    let (gone_org, gone_hint) = store_access(store.as_ref(), gone.id)
        .await
        .expect("the project exists");
    assert_eq!(gone_org, org.id);
    assert!(store.delete_project(gone.id).await.expect("delete project"));
    assert_eq!(store_access(store.as_ref(), gone.id).await, None);
    let next = project(&org, "next", now_ms());
    store.create_project(&next).await.expect("create project");
    let slack = integration(IntegrationType::Slack, b"next slack");
    store
        .create_integration(next.id, &slack)
        .await
        .expect("create where the deleted project had the same type");
    let webhook = integration(IntegrationType::Webhook, b"next webhook");
    let listed = store
        .replace_integration_listed(next.id, &webhook)
        .await
        .expect("replace where the deleted project had the same type");
    assert_eq!(listed, [slack.clone(), webhook.clone()]);
    assert_eq!(
        integrations(store.as_ref(), next.id).await,
        [slack, webhook]
    );
    assert!(integrations(store.as_ref(), gone.id).await.is_empty());
    assert_eq!(integrations(store.as_ref(), kept.id).await, kept_rows);
    // A read hint is only a hint: the deleted project's (on SQLite, the number `next` has
    // taken over) finds nothing of the deleted project's and each project's own rows.
    let hinted = |group, kind| store.get_integration_hinted(group, kind, gone_hint);
    let slack = IntegrationType::Slack;
    assert_eq!(hinted(gone.id, slack).await.expect("read"), None);
    assert_eq!(
        hinted(next.id, slack).await.expect("read"),
        integrations(store.as_ref(), next.id).await.first().cloned()
    );
    assert_eq!(
        hinted(kept.id, slack).await.expect("read"),
        Some(kept_rows[0].clone())
    );
    let (_, next_hint) = store_access(store.as_ref(), next.id)
        .await
        .expect("the project exists");
    assert_eq!(
        store
            .get_integration_hinted(kept.id, slack, next_hint)
            .await
            .expect("read"),
        Some(kept_rows[0].clone())
    );
}

/// [`Store::project_access`] of an existing or missing project.
async fn store_access(store: &dyn Store, group: GroupId) -> Option<(OrgId, ReadHint)> {
    store.project_access(group).await.expect("project access")
}

#[tokio::test]
async fn a_deleted_sqlite_project_leaves_no_integrations() {
    let fresh = fresh_sqlite(2).await;
    deleted_projects_leave_no_integrations(Arc::clone(&fresh.store)).await;
}

#[tokio::test]
async fn a_deleted_postgres_project_leaves_no_integrations() {
    let Some(fresh) = fresh_postgres(2).await else {
        return;
    };
    deleted_projects_leave_no_integrations(Arc::clone(&fresh.store)).await;
}

/// The writes that answer the project's list (POST and PUT): the list is the one the write
/// left, in creation order, with a replaced row keeping its id and place; a refused create
/// writes nothing.
async fn listed_writes(store: Arc<dyn Store>) {
    let org = org("Org", now_ms());
    store.create_org(&org).await.expect("create org");
    let group = project(&org, "p", now_ms());
    store.create_project(&group).await.expect("create project");
    let group = group.id;
    let slack = integration(IntegrationType::Slack, b"slack 1");
    let webhook = integration(IntegrationType::Webhook, b"webhook 1");
    assert_eq!(
        store
            .create_integration_listed(group, &slack)
            .await
            .expect("create"),
        std::slice::from_ref(&slack)
    );
    assert_eq!(
        store
            .create_integration_listed(group, &webhook)
            .await
            .expect("create"),
        [slack.clone(), webhook.clone()]
    );
    let again = integration(IntegrationType::Slack, b"slack 2");
    assert!(matches!(
        store.create_integration_listed(group, &again).await,
        Err(StoreError::Conflict(_))
    ));
    let replaced = store
        .replace_integration_listed(group, &again)
        .await
        .expect("replace");
    let kept = StoredIntegration {
        id: slack.id,
        ..again.clone()
    };
    assert_eq!(replaced, [kept.clone(), webhook.clone()]);
    assert_eq!(
        integrations(store.as_ref(), group).await,
        [kept, webhook.clone()]
    );

    // Creation order, not type order: a deleted type created again goes last, and so does a
    // type that sorts (and is keyed) before the others.
    assert!(store
        .delete_integration(group, IntegrationType::Slack)
        .await
        .expect("delete"));
    let pager = integration(IntegrationType::PagerDuty, b"pager 1");
    let slack = integration(IntegrationType::Slack, b"slack 3");
    store
        .create_integration(group, &pager)
        .await
        .expect("create");
    let listed = store
        .create_integration_listed(group, &slack)
        .await
        .expect("create");
    assert_eq!(listed, [webhook.clone(), pager.clone(), slack.clone()]);

    // A project deleted and another created (SQLite may give it the deleted one's number)
    // sees none of the old rows; the first project's rows are untouched.
    let doomed = project(&org, "doomed", now_ms());
    store.create_project(&doomed).await.expect("create project");
    let teams = integration(IntegrationType::MicrosoftTeams, b"teams");
    store
        .create_integration(doomed.id, &teams)
        .await
        .expect("create");
    assert!(store
        .delete_project(doomed.id)
        .await
        .expect("delete project"));
    let next = project(&org, "next", now_ms());
    store.create_project(&next).await.expect("create project");
    assert_eq!(integrations(store.as_ref(), next.id).await, []);
    for kind in IntegrationType::ALL {
        assert_eq!(one(store.as_ref(), next.id, kind).await, None, "{kind}");
    }
    let teams_again = integration(IntegrationType::MicrosoftTeams, b"teams 2");
    store
        .create_integration(next.id, &teams_again)
        .await
        .expect("create");
    assert_eq!(
        one(store.as_ref(), next.id, IntegrationType::MicrosoftTeams).await,
        Some(teams_again)
    );
    assert_eq!(
        integrations(store.as_ref(), group).await,
        [webhook, pager, slack]
    );

    // A project read (SQLite remembers its number), deleted, its number given to another
    // project with a row of the same type, then created again under the same id: a read
    // finds the project's new row, never the other project's.
    let datadog = IntegrationType::Datadog;
    let returning = project(&org, "returning", now_ms());
    let first = integration(datadog, b"datadog 1");
    with_row(store.as_ref(), &returning, &first).await;
    assert_eq!(
        one(store.as_ref(), returning.id, datadog).await,
        Some(first)
    );
    assert!(store
        .delete_project(returning.id)
        .await
        .expect("delete project"));
    let other = project(&org, "other", now_ms());
    let others = integration(datadog, b"datadog other");
    with_row(store.as_ref(), &other, &others).await;
    let second = integration(datadog, b"datadog 2");
    with_row(store.as_ref(), &returning, &second).await;
    assert_eq!(
        one(store.as_ref(), returning.id, datadog).await,
        Some(second)
    );
    assert_eq!(one(store.as_ref(), other.id, datadog).await, Some(others));
}

/// Creates `project` and its integration `row`.
async fn with_row(store: &dyn Store, project: &Project, row: &StoredIntegration) {
    store.create_project(project).await.expect("create project");
    store
        .create_integration(project.id, row)
        .await
        .expect("create integration");
}

async fn one(
    store: &dyn Store,
    group: GroupId,
    kind: IntegrationType,
) -> Option<StoredIntegration> {
    store
        .get_integration(group, kind)
        .await
        .expect("get_integration")
}

#[tokio::test]
async fn listed_writes_on_sqlite_answer_the_list_they_left() {
    let fresh = fresh_sqlite(8).await;
    listed_writes(Arc::clone(&fresh.store)).await;
}

#[tokio::test]
async fn listed_writes_on_postgres_answer_the_list_they_left() {
    let Some(fresh) = fresh_postgres(8).await else {
        return;
    };
    listed_writes(Arc::clone(&fresh.store)).await;
}

/// Many reads at once (merged into shared queries by the store): every one gets exactly its
/// own rows — the asked type or none, a project's list in creation order — whether the
/// others asked for the same key, another type, another project or a list. A write
/// acknowledged between two such bursts is seen by every read of the second: a batch's read
/// transaction ends with the batch (a lane left in it would answer from its old snapshot, or
/// fail to begin the next).
async fn concurrent_reads(store: Arc<dyn Store>) {
    const PROJECTS: usize = 12;
    let org = org("Org", now_ms());
    store.create_org(&org).await.expect("create org");
    let mut expected = Vec::new();
    for p in 0..PROJECTS {
        let group = project(&org, &format!("p{p}"), now_ms());
        store.create_project(&group).await.expect("create project");
        // Project p has the first p % 5 kinds, created in an order that differs per project.
        let mut rows = Vec::new();
        for k in 0..p % 5 {
            let kind = READ_KINDS[(k + p) % READ_KINDS.len()];
            let it = integration(kind, format!("{p}:{kind}").as_bytes());
            store
                .create_integration(group.id, &it)
                .await
                .expect("create integration");
            rows.push(it);
        }
        expected.push((group.id, rows));
    }
    read_burst(&store, &expected).await;
    for (p, kind) in [(0, IntegrationType::Slack), (5, IntegrationType::Datadog)] {
        let (group, rows) = &mut expected[p];
        let it = integration(kind, format!("{p}:{kind}:later").as_bytes());
        store
            .create_integration(*group, &it)
            .await
            .expect("create integration");
        rows.push(it);
        read_burst(&store, &expected).await;
    }
}

/// The types [`read_burst`] asks for.
const READ_KINDS: [IntegrationType; 4] = [
    IntegrationType::Slack,
    IntegrationType::PagerDuty,
    IntegrationType::Webhook,
    IntegrationType::Datadog,
];

/// 400 reads started at once over `expected`'s projects (a third of them lists), each
/// checked against `expected`.
async fn read_burst(store: &Arc<dyn Store>, expected: &[(GroupId, Vec<StoredIntegration>)]) {
    const READS: usize = 400;
    let expected = Arc::new(expected.to_vec());
    let start = Arc::new(tokio::sync::Barrier::new(READS));
    let tasks: Vec<_> = (0..READS)
        .map(|i| {
            let store = Arc::clone(store);
            let expected = Arc::clone(&expected);
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                let p = i % expected.len();
                let (group, rows) = &expected[p];
                start.wait().await;
                if i % 3 == 0 {
                    let listed = store.list_integrations(*group).await.expect("list");
                    assert_eq!(&listed, rows, "list of project {p}");
                } else {
                    let kind = READ_KINDS[i % READ_KINDS.len()];
                    let got = one(store.as_ref(), *group, kind).await;
                    let want = rows.iter().find(|r| r.kind == kind);
                    assert_eq!(got.as_ref(), want, "{kind} of project {p}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("read task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_hundred_concurrent_reads_on_sqlite_each_get_their_own_rows() {
    let fresh = fresh_sqlite(8).await;
    concurrent_reads(Arc::clone(&fresh.store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_hundred_concurrent_reads_on_postgres_each_get_their_own_rows() {
    let Some(fresh) = fresh_postgres(8).await else {
        return;
    };
    concurrent_reads(Arc::clone(&fresh.store)).await;
}

#[test]
fn sqlite_and_postgres_migrations_have_the_same_versions_and_descriptions() {
    let versions = |migrator: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
        migrator
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    };
    let sqlite = versions(store::sqlite::migrator());
    let postgres = versions(store::postgres::migrator());
    assert!(!sqlite.is_empty(), "no SQLite migrations embedded");
    assert_eq!(sqlite, postgres);
}

#[tokio::test]
async fn an_sqlite_write_survives_closing_and_reopening_the_file() {
    let dir = TempDir::new().expect("temporary directory");
    let url = store::sqlite::url_for_path(&dir.path().join("atlas.db"));
    let org = org("Org", now_ms());
    let group = project(&org, "p", now_ms());
    let webhook = integration(IntegrationType::Webhook, &[1, 2, 3, 0, 255]);
    {
        let store = store::open(&url, true, 2).await.expect("open");
        store.create_org(&org).await.expect("create org");
        store.create_project(&group).await.expect("create project");
        store
            .create_integration(group.id, &webhook)
            .await
            .expect("create integration");
        store
            .put_meta_if_absent("salt", b"kept")
            .await
            .expect("put_meta_if_absent");
        drop(store);
    }
    // Migrating again is a no-op on a migrated file.
    let store = store::open(&url, true, 2).await.expect("reopen");
    assert_eq!(store.list_orgs().await.expect("list_orgs"), [org]);
    assert_eq!(
        store.project(group.id).await.expect("project"),
        Some(group.clone())
    );
    assert_eq!(
        store
            .list_integrations(group.id)
            .await
            .expect("list_integrations"),
        [webhook]
    );
    assert_eq!(
        store.meta("salt").await.expect("meta"),
        Some(b"kept".to_vec())
    );
}

/// A database written before migration 0002 (integration rows keyed by an autoincrement)
/// keeps every row, its id, sealed bytes and list order once a store opens and migrates it,
/// and takes new writes in the new layout.
#[tokio::test]
async fn an_sqlite_database_from_before_the_keyed_layout_is_migrated_with_its_rows() {
    use sqlx::Connection as _;
    let dir = TempDir::new().expect("temporary directory");
    let url = store::sqlite::url_for_path(&dir.path().join("atlas.db"));
    let org = org("Org", now_ms());
    let first = project(&org, "first", now_ms());
    let second = project(&org, "second", now_ms());
    // In creation order, deliberately not in type order.
    let rows = [
        (first.id, integration(IntegrationType::Webhook, b"w1")),
        (second.id, integration(IntegrationType::Prometheus, b"p2")),
        (first.id, integration(IntegrationType::PagerDuty, b"pd1")),
        (first.id, integration(IntegrationType::Slack, b"s1")),
    ];
    {
        // Only the first migration, as the previous release ran it (sqlx's migrator fields
        // are public for `migrate!`).
        let all = store::sqlite::migrator();
        let before = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(all.iter().take(1).cloned().collect()),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .expect("connect");
        before.run(&mut conn).await.expect("first migration");
        sqlx::query("insert into org (id, name, created_at) values (?, ?, ?)")
            .bind(org.id.to_string())
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&mut conn)
            .await
            .expect("org");
        for p in [&first, &second] {
            sqlx::query("insert into project (id, org_id, name, created_at) values (?, ?, ?, ?)")
                .bind(p.id.to_string())
                .bind(org.id.to_string())
                .bind(&p.name)
                .bind(p.created_at)
                .execute(&mut conn)
                .await
                .expect("project");
        }
        for (group, row) in &rows {
            sqlx::query(
                "insert into integration (group_id, type, id, config, created_at, updated_at) \
                 values (?, ?, ?, ?, 1, 1)",
            )
            .bind(group.to_string())
            .bind(row.kind.as_str())
            .bind(row.id.to_string())
            .bind(&row.sealed)
            .execute(&mut conn)
            .await
            .expect("integration");
        }
        conn.close().await.expect("close");
    }
    let store = store::open(&url, true, 2).await.expect("open and migrate");
    for (group, row) in &rows {
        assert_eq!(
            store.get_integration(*group, row.kind).await.expect("get"),
            Some(row.clone())
        );
    }
    let of = |group: GroupId| -> Vec<StoredIntegration> {
        rows.iter()
            .filter(|(g, _)| *g == group)
            .map(|(_, r)| r.clone())
            .collect()
    };
    assert_eq!(integrations(store.as_ref(), first.id).await, of(first.id));
    assert_eq!(integrations(store.as_ref(), second.id).await, of(second.id));
    let third = project(&org, "third", now_ms());
    store.create_project(&third).await.expect("create project");
    let teams = integration(IntegrationType::MicrosoftTeams, b"t3");
    store
        .create_integration(third.id, &teams)
        .await
        .expect("create");
    let datadog = integration(IntegrationType::Datadog, b"d1");
    store
        .create_integration(first.id, &datadog)
        .await
        .expect("create");
    assert_eq!(
        one(store.as_ref(), third.id, IntegrationType::MicrosoftTeams).await,
        Some(teams)
    );
    let mut expected = of(first.id);
    expected.push(datadog);
    assert_eq!(integrations(store.as_ref(), first.id).await, expected);
}

/// Writes reach the database file itself, not only the WAL, without waiting for the WAL to
/// fill up: a thread checkpoints in the background (a handful of writes would otherwise stay
/// in the WAL until 1,000 pages had gathered there).
#[tokio::test]
async fn sqlite_writes_are_checkpointed_into_the_database_file_in_the_background() {
    use sqlx::Connection as _;
    let dir = TempDir::new().expect("temporary directory");
    let path = dir.path().join("atlas.db");
    let store = store::open(&store::sqlite::url_for_path(&path), true, 2)
        .await
        .expect("open");
    let org = org("Org", now_ms());
    store.create_org(&org).await.expect("create org");
    let group = project(&org, "p", now_ms());
    store.create_project(&group).await.expect("create project");
    for kind in [
        IntegrationType::Slack,
        IntegrationType::Webhook,
        IntegrationType::Datadog,
    ] {
        store
            .create_integration(group.id, &integration(kind, b"sealed"))
            .await
            .expect("create integration");
    }
    // A copy of the database file alone (no WAL) shows what has been checkpointed.
    let copy = dir.path().join("copy.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        std::fs::copy(&path, &copy).expect("copy the database file");
        let mut conn = sqlx::SqliteConnection::connect(&store::sqlite::url_for_path(&copy))
            .await
            .expect("open the copy");
        // Until the checkpoint, the copy may not even have the table.
        let rows: i64 = sqlx::query_scalar("select count(*) from integration")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
        conn.close().await.expect("close the copy");
        for leftover in ["copy.db", "copy.db-wal", "copy.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(leftover));
        }
        if rows == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file holds {rows} of 3 rows after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(store);
}
