-- Failed authentications per account, shared by the nodes on one database (issue 21):
-- a botnet spreading its guesses over several nodes meets the same per-account limit.
-- Each serving process adds its own new failures (a delta per account and minute) once
-- a second under its own `node` token, and reads the other processes' sums. Rows older
-- than the longest window are pruned; the table holds at most accounts x minutes x
-- processes rows, and only accounts under attack have any.
CREATE TABLE auth_failures (
    auth_id TEXT NOT NULL,
    node TEXT NOT NULL,
    minute BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (auth_id, node, minute)
);
CREATE INDEX auth_failures_minute ON auth_failures (minute);
