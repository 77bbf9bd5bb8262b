-- The integration table without its `(group_id, type)` unique index and its foreign key.
-- Since 0002 the key `rid = project number * 16 + type code` already makes (project, type)
-- unique, every statement of the server finds rows by that key, and the writes check the
-- project themselves (they read its number first; an unknown project writes nothing). The
-- index was a second B-tree that every create and delete changed and every write checked:
-- in the benchmark's mixed workload, one more page read and one more page written to the
-- WAL per write. Deleting a project deletes its integrations by key range (no cascade).

create table integration_slim (
    rid integer primary key,
    -- creation order within the project, which lists follow
    seq integer not null,
    group_id text not null,
    type text not null,
    id text not null,
    -- the whole configuration as JSON, sealed with the master key
    config blob not null,
    created_at bigint not null,
    updated_at bigint not null
);

insert into integration_slim (rid, seq, group_id, type, id, config, created_at, updated_at)
select rid, seq, group_id, type, id, config, created_at, updated_at
from integration
order by rid;

drop table integration;
alter table integration_slim rename to integration;
