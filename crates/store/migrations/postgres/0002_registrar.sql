-- The registrar: a registry version the running server polls (bumped by triggers, so
-- no writer can forget it) and persisted bindings (so registrations survive a restart).

INSERT INTO meta (key, value) VALUES ('registry_version', '0');

-- PostgreSQL: one trigger function moves the counter its trigger names and sends a
-- notification with that name only (a hint to the other nodes, delivered at commit and
-- merged per transaction; the nodes also poll, since a notification can be lost).
CREATE FUNCTION bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE key = TG_ARGV[0];
    PERFORM pg_notify('sipward_versions', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE TRIGGER extensions_insert_version AFTER INSERT ON extensions
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER extensions_update_version AFTER UPDATE ON extensions
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER extensions_delete_version AFTER DELETE ON extensions
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER gateways_insert_version AFTER INSERT ON gateways
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER gateways_update_version AFTER UPDATE ON gateways
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER gateways_delete_version AFTER DELETE ON gateways
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');

CREATE TABLE bindings (
    number TEXT NOT NULL,
    contact TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    source TEXT NOT NULL,
    transport TEXT NOT NULL,
    PRIMARY KEY (number, contact)
);
