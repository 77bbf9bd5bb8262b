-- SQLite's 0003 drops its integration table's `(group_id, type)` index, which its key made
-- redundant; PostgreSQL's layout (that index over a heap) is unchanged. This keeps both
-- backends on the same migration versions.
select 1;
