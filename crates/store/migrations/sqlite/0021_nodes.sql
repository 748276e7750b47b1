-- Node names held by one live process (issue 21). A node's name owns its bindings and
-- its call leases; two processes under one name would erase each other's phones. At
-- start a process claims its name with one conditional upsert (the row is free, its
-- heartbeat is stale, or it is this very process's), then moves `heartbeat_at` on its
-- background ticker; a process that finds its row held by another `instance` writes no
-- binding again. `hop` is where the node takes internal hops from the other nodes
-- (IP:PORT), '' when it takes none. Portable SQL (SQLite and PostgreSQL). One row per
-- node name: bounded by the operator's nodes, a released name's row is deleted.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    hop TEXT NOT NULL DEFAULT '',
    heartbeat_at BIGINT NOT NULL
);
