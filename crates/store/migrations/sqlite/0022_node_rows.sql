-- Rows that belong to one node (issue 21).
--
-- Active calls: each node writes the snapshot of its own calls, and replaces or clears
-- only its own rows (a node's call ids are its own counter, so the key is the pair).
-- `call_writers` says when each node last wrote; the snapshot is as fresh as its oldest
-- writer. The old one-node snapshot is dropped: it described calls of a stopped server.
DROP TABLE active_calls;
CREATE TABLE active_calls (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    kind TEXT NOT NULL,
    trunk TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    answered_at BIGINT NOT NULL,
    PRIMARY KEY (node, id)
);
CREATE TABLE call_writers (
    node TEXT PRIMARY KEY,
    written_at BIGINT NOT NULL
);
DELETE FROM meta WHERE key = 'calls_written_at';

-- Re-fetch requests, one per node that holds a live phone of the extension when it is
-- asked ('' when none does): every node tells its own phones, where one row per
-- extension let the first node take it and the phones on the others never heard.
CREATE TABLE resync_nodes (
    number TEXT NOT NULL,
    node TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (number, node)
);
INSERT INTO resync_nodes (number, node, created_at) SELECT number, '', created_at FROM resync;
DROP TABLE resync;
ALTER TABLE resync_nodes RENAME TO resync;
