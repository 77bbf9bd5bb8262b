-- Organizations, projects, API keys and their roles, integrations, and server metadata.
create table org (
    id text primary key,
    name text not null,
    created_at bigint not null
);

create table project (
    id text primary key,
    org_id text not null references org (id),
    name text not null,
    created_at bigint not null
);

create index project_org on project (org_id);

create table api_key (
    id text primary key,
    org_id text not null references org (id),
    public_key text not null unique,
    -- the private key, sealed with the master key (AES-256-GCM)
    private_key bytea not null,
    description text not null default '',
    org_role text not null,
    created_at bigint not null
);

create table api_key_project (
    api_key_id text not null references api_key (id) on delete cascade,
    project_id text not null references project (id) on delete cascade,
    role text not null,
    primary key (api_key_id, project_id)
);

create table api_key_access (
    api_key_id text not null references api_key (id) on delete cascade,
    cidr text not null,
    created_at bigint not null,
    primary key (api_key_id, cidr)
);

-- One row per (project, type); seq gives the creation order that lists follow.
create table integration (
    seq bigserial primary key,
    group_id text not null references project (id) on delete cascade,
    type text not null,
    id text not null,
    -- the whole configuration as JSON, sealed with the master key
    config bytea not null,
    created_at bigint not null,
    updated_at bigint not null,
    unique (group_id, type)
);

create table meta (
    name text primary key,
    value bytea not null
);

-- Bumped by every change to keys, roles, access lists or projects, so that every server
-- process sharing the database drops its authentication cache.
create table auth_epoch (
    id integer primary key,
    value bigint not null
);

insert into auth_epoch (id, value) values (1, 0);
