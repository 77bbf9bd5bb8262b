-- Integrations keyed by their project's number and their type (rid = num * 16 + type code),
-- so that reading one integration walks one B-tree of this table instead of the unique index
-- and then the table: one page read from disk per lookup instead of two on large databases.
-- The type codes are `IntegrationType::code` and must never change.

-- A stable number per project (rowids of a table without INTEGER PRIMARY KEY may change on
-- VACUUM), given by a trigger to every new project; (id, num) is covering for id -> num.
alter table project add column num integer;
update project set num = rowid;
create unique index project_num on project (num);
create unique index project_id_num on project (id, num);
create trigger project_number after insert on project when new.num is null
begin
    update project set num = (select coalesce(max(num), 0) + 1 from project)
    where rowid = new.rowid;
end;

create table integration_keyed (
    rid integer primary key,
    -- creation order within the project, which lists follow
    seq integer not null,
    group_id text not null references project (id) on delete cascade,
    type text not null,
    id text not null,
    -- the whole configuration as JSON, sealed with the master key
    config blob not null,
    created_at bigint not null,
    updated_at bigint not null,
    unique (group_id, type)
);

insert into integration_keyed (rid, seq, group_id, type, id, config, created_at, updated_at)
select p.num * 16 + case i.type
        when 'PAGER_DUTY' then 0
        when 'SLACK' then 1
        when 'DATADOG' then 2
        when 'NEW_RELIC' then 3
        when 'OPS_GENIE' then 4
        when 'VICTOR_OPS' then 5
        when 'FLOWDOCK' then 6
        when 'WEBHOOK' then 7
        when 'MICROSOFT_TEAMS' then 8
        when 'PROMETHEUS' then 9
        else 15
    end,
    i.seq, i.group_id, i.type, i.id, i.config, i.created_at, i.updated_at
from integration i join project p on p.id = i.group_id
order by 1;

drop table integration;
alter table integration_keyed rename to integration;
