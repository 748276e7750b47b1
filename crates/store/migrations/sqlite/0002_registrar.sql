-- The registrar: a registry version the running server polls (bumped by triggers, so
-- no writer can forget it) and persisted bindings (so registrations survive a restart).

INSERT INTO meta (key, value) VALUES ('registry_version', '0');

CREATE TRIGGER extensions_insert_version AFTER INSERT ON extensions
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version'; END;
CREATE TRIGGER extensions_update_version AFTER UPDATE ON extensions
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version'; END;
CREATE TRIGGER extensions_delete_version AFTER DELETE ON extensions
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version'; END;
CREATE TRIGGER gateways_insert_version AFTER INSERT ON gateways
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version'; END;
CREATE TRIGGER gateways_update_version AFTER UPDATE ON gateways
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version'; END;
CREATE TRIGGER gateways_delete_version AFTER DELETE ON gateways
BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'registry_version'; END;

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
