-- Re-Generate: per-phone provisioning secrets, the old-password grace window, the
-- durable mail outbox and the queue of phones to tell to re-fetch their files.
-- Everything one Re-Generate of one extension writes lands in one transaction, so an
-- extension is always fully old or fully new.

-- Per-phone provisioning secrets (sealed) and the state of the phone's files:
-- `generation` moves on every change that alters the files; `written` is the generation
-- last written to disk. A row with written < generation is rewritten at the next open.
CREATE TABLE provisioning (
    number TEXT PRIMARY KEY REFERENCES extensions (number) ON DELETE CASCADE,
    admin_password_enc TEXT NOT NULL,
    http_password_enc TEXT NOT NULL,
    generation BIGINT NOT NULL,
    written BIGINT NOT NULL
);

-- The password an extension had before its last Re-Generate: accepted until expires_at,
-- only from `sources` (comma-separated IP addresses where it was registered), until the
-- first registration with the new password. HA1s only, never the password.
CREATE TABLE credential_grace (
    number TEXT PRIMARY KEY REFERENCES extensions (number) ON DELETE CASCADE,
    auth_id TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    sources TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Mails to send. The message is sealed (it carries a password). `state` is queued,
-- sending (claimed until lease_until), sent, failed or superseded (a newer change of the
-- same extension made it stale).
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    number TEXT NOT NULL,
    recipient TEXT NOT NULL,
    message_enc TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
-- Superseding a waiting mail looks up the extension's queued ones.
CREATE INDEX outbox_number ON outbox (number, state);

-- Extensions whose registered phones should be told to re-fetch their files; the
-- running server sends the NOTIFYs and deletes the rows.
CREATE TABLE resync (
    number TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

-- Grace changes must reach the running server's directory.
CREATE TRIGGER grace_insert_version AFTER INSERT ON credential_grace
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER grace_update_version AFTER UPDATE ON credential_grace
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER grace_delete_version AFTER DELETE ON credential_grace
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
