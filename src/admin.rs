//! The admin CLI: organizations, projects, API keys and master keys, on the same database as
//! the server. Every command prints JSON on stdout; errors are one line on stderr and a
//! non-zero exit (see `main.rs`). Changes reach running servers through `auth_epoch`.

use anyhow::{anyhow, bail, Context};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::config::{
    AccessListCommand, ApiKeysCommand, Global, KeysCommand, OrgsCommand, ProjectsCommand,
};
use crate::crypto::MasterKey;
use crate::domain::ids::{is_public_key, ObjectId};
use crate::startup::{new_api_key, open_database};
use crate::store::{now_ms, ApiKey, Org, OrgRole, Project, ProjectRole, StoreError};

fn parse_id(text: &str, what: &str) -> anyhow::Result<ObjectId> {
    ObjectId::parse(text).ok_or_else(|| anyhow!("{what} {text:?} is not a 24-hex id"))
}

fn check_public_key(text: &str) -> anyhow::Result<()> {
    if is_public_key(text) {
        Ok(())
    } else {
        bail!("{text:?} is not a public key (8 lowercase letters)")
    }
}

fn org_json(org: &Org) -> Value {
    json!({"id": org.id.to_string(), "name": org.name})
}

fn project_json(p: &Project) -> Value {
    json!({"id": p.id.to_string(), "orgId": p.org_id.to_string(), "name": p.name})
}

fn key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id.to_string(),
        "publicKey": key.public_key,
        "orgId": key.org_id.to_string(),
        "description": key.description,
        "roles": std::iter::once(json!({"orgId": key.org_id.to_string(), "roleName": key.org_role.as_str()}))
            .chain(key.project_roles.iter().map(|(g, r)| json!({"groupId": g.to_string(), "roleName": r.as_str()})))
            .collect::<Vec<_>>(),
        "accessList": key.access_list,
    })
}

fn not_found(err: StoreError, what: String) -> anyhow::Error {
    match err {
        StoreError::NotFound => anyhow!("{what} does not exist"),
        other => other.into(),
    }
}

/// `orgs ...`
pub async fn orgs(global: &Global, command: OrgsCommand) -> anyhow::Result<Value> {
    let (store, _) = open_database(global, true).await?;
    match command {
        OrgsCommand::Create { name } => {
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            let org = Org {
                id: ObjectId::generate(),
                name,
                created_at: now_ms(),
            };
            store.create_org(&org).await?;
            Ok(org_json(&org))
        }
        OrgsCommand::List => Ok(Value::Array(
            store.list_orgs().await?.iter().map(org_json).collect(),
        )),
    }
}

/// `projects ...`
pub async fn projects(global: &Global, command: ProjectsCommand) -> anyhow::Result<Value> {
    let (store, _) = open_database(global, true).await?;
    match command {
        ProjectsCommand::Create { org, name } => {
            let org_id = parse_id(&org, "organization")?;
            if name.trim().is_empty() {
                bail!("--name must not be empty");
            }
            let project = Project {
                id: ObjectId::generate(),
                org_id,
                name,
                created_at: now_ms(),
            };
            store
                .create_project(&project)
                .await
                .map_err(|e| not_found(e, format!("organization {org}")))?;
            Ok(project_json(&project))
        }
        ProjectsCommand::List { org } => {
            let org = org.map(|o| parse_id(&o, "organization")).transpose()?;
            Ok(Value::Array(
                store
                    .list_projects(org)
                    .await?
                    .iter()
                    .map(project_json)
                    .collect(),
            ))
        }
        ProjectsCommand::Delete { group_id } => {
            let id = parse_id(&group_id, "project")?;
            if !store.delete_project(id).await? {
                bail!("project {group_id} does not exist");
            }
            Ok(json!({"deleted": group_id}))
        }
    }
}

/// `api-keys ...`
pub async fn api_keys(global: &Global, command: ApiKeysCommand) -> anyhow::Result<Value> {
    let (store, keyring) = open_database(global, true).await?;
    match command {
        ApiKeysCommand::Create {
            org,
            role,
            description,
        } => {
            let org_id = parse_id(&org, "organization")?;
            let role = OrgRole::parse(&role)
                .ok_or_else(|| anyhow!("--role must be ORG_OWNER or ORG_READ_ONLY"))?;
            let (key, private_key) = new_api_key(&keyring, org_id, role, &description);
            store
                .create_api_key(&key)
                .await
                .map_err(|e| not_found(e, format!("organization {org}")))?;
            let mut out = key_json(&key);
            out["privateKey"] = json!(private_key.expose_secret());
            Ok(out)
        }
        ApiKeysCommand::Assign {
            public_key,
            project,
            role,
        } => {
            check_public_key(&public_key)?;
            let group = parse_id(&project, "project")?;
            let role = ProjectRole::parse(&role)
                .ok_or_else(|| anyhow!("--role must be GROUP_OWNER or GROUP_READ_ONLY"))?;
            store
                .set_project_role(&public_key, group, role)
                .await
                .map_err(|e| not_found(e, format!("API key {public_key} or project {project}")))?;
            Ok(json!({"publicKey": public_key, "groupId": project, "roleName": role.as_str()}))
        }
        ApiKeysCommand::Unassign {
            public_key,
            project,
        } => {
            check_public_key(&public_key)?;
            let group = parse_id(&project, "project")?;
            let removed = store
                .remove_project_role(&public_key, group)
                .await
                .map_err(|e| not_found(e, format!("API key {public_key}")))?;
            if !removed {
                bail!("API key {public_key} has no role on project {project}");
            }
            Ok(json!({"publicKey": public_key, "groupId": project, "removed": true}))
        }
        ApiKeysCommand::AccessList(AccessListCommand::Add { public_key, cidr }) => {
            check_public_key(&public_key)?;
            let net = crate::auth::parse_cidr(&cidr)
                .ok_or_else(|| anyhow!("{cidr:?} is not an IPv4/IPv6 address or CIDR block"))?;
            store
                .add_access_entry(&public_key, &net.to_string())
                .await
                .map_err(|e| not_found(e, format!("API key {public_key}")))?;
            Ok(json!({"publicKey": public_key, "cidrBlock": net.to_string()}))
        }
        ApiKeysCommand::AccessList(AccessListCommand::Remove { public_key, cidr }) => {
            check_public_key(&public_key)?;
            let entry =
                crate::auth::parse_cidr(&cidr).map_or_else(|| cidr.clone(), |net| net.to_string());
            let removed = store
                .remove_access_entry(&public_key, &entry)
                .await
                .map_err(|e| not_found(e, format!("API key {public_key}")))?;
            if !removed {
                bail!("{cidr} is not on the access list of API key {public_key}");
            }
            Ok(json!({"publicKey": public_key, "cidrBlock": entry, "removed": true}))
        }
        ApiKeysCommand::List => Ok(Value::Array(
            store.list_api_keys().await?.iter().map(key_json).collect(),
        )),
        ApiKeysCommand::Delete { public_key } => {
            check_public_key(&public_key)?;
            if !store.delete_api_key(&public_key).await? {
                bail!("API key {public_key} does not exist");
            }
            Ok(json!({"deleted": public_key}))
        }
    }
}

/// `keys ...`
pub async fn keys(global: &Global, command: KeysCommand) -> anyhow::Result<Value> {
    match command {
        KeysCommand::Generate { path } => {
            let key = MasterKey::generate();
            key.write_new_file(&path)?;
            Ok(json!({"path": path.display().to_string(), "keyId": key.id().to_string()}))
        }
        KeysCommand::Rotate { new_key_file } => {
            let new_key = MasterKey::load_file(&new_key_file)
                .with_context(|| format!("cannot read the new key {}", new_key_file.display()))?;
            let (store, keyring) = open_database(global, true).await?;
            let report = crate::rotation::rotate(store.as_ref(), &keyring, new_key).await?;
            Ok(report)
        }
    }
}
