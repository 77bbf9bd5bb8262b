-- SQLite's 0002 re-keys its integration table for single-page lookups; PostgreSQL's layout
-- (a B-tree index on (group_id, type) over a heap) is unchanged. This keeps both backends on
-- the same migration versions.
select 1;
