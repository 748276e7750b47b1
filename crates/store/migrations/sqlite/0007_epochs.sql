-- Security epochs and the administrators' audit log.
--
-- `meta.security_epoch` is the last numbered hardening step applied to this data dir. A
-- database that existed before epochs were introduced starts at 0, so the next open
-- hardens it; a new data dir is created at the running version's epoch.
INSERT INTO meta (key, value) VALUES ('security_epoch', '0')
    ON CONFLICT (key) DO NOTHING;

-- Every administrator action and every automatic change made on their behalf (security
-- epochs, restores). Never holds a secret.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
