-- The anti-hacking guard's records: bans (each with its reason and expiry) and the
-- allow list (never banned). A version bumped by triggers lets the running server
-- pick up changes made with the CLI.

INSERT INTO meta (key, value) VALUES ('guard_version', '0');

CREATE TABLE bans (
    source TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    times BIGINT NOT NULL
);

CREATE TABLE allow_list (
    network TEXT PRIMARY KEY,
    note TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TRIGGER bans_insert_version AFTER INSERT ON bans
    FOR EACH ROW EXECUTE FUNCTION bump_version('guard_version');
CREATE TRIGGER bans_update_version AFTER UPDATE ON bans
    FOR EACH ROW EXECUTE FUNCTION bump_version('guard_version');
CREATE TRIGGER bans_delete_version AFTER DELETE ON bans
    FOR EACH ROW EXECUTE FUNCTION bump_version('guard_version');
CREATE TRIGGER allow_insert_version AFTER INSERT ON allow_list
    FOR EACH ROW EXECUTE FUNCTION bump_version('guard_version');
CREATE TRIGGER allow_delete_version AFTER DELETE ON allow_list
    FOR EACH ROW EXECUTE FUNCTION bump_version('guard_version');
