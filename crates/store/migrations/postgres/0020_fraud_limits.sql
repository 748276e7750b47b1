-- Fraud limits kept in the database (issue 21), so that every node sharing it holds an
-- extension to the same limits exactly. Portable SQL (SQLite and PostgreSQL).
--
-- An external call holds a lease while it counts: the node that placed it renews it,
-- and a dead node's leases lapse at `expires_at`. `call_gates` has one row per account
-- that was ever leased to; taking a lease first writes the account's gate row, which
-- orders concurrent admissions of one account on every backend (PostgreSQL holds the
-- row lock to the commit; SQLite writes one transaction at a time).
CREATE TABLE call_gates (
    account TEXT PRIMARY KEY,
    turns BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE call_leases (
    lease TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    node TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX call_leases_account ON call_leases (account, expires_at);
CREATE INDEX call_leases_node ON call_leases (node);

-- Attempts per minute and international calls per day: one row per account, counter
-- and period, moved by one conditional upsert (`used + 1 <= cap`), pruned after
-- `ends_at`.
CREATE TABLE fraud_counts (
    account TEXT NOT NULL,
    counter TEXT NOT NULL,
    period BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (account, counter, period)
);
CREATE INDEX fraud_counts_ends ON fraud_counts (ends_at);
