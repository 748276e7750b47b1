-- Trunks: outbound routes (dial pattern -> gateway or provider), DIDs (inbound number
-- -> extension), what the server last saw of each provider registration, and the calls
-- up right now (written by `serve` for `sipward calls`).

CREATE TABLE routes (
    name TEXT PRIMARY KEY,
    pattern TEXT NOT NULL,
    -- 'gateway' or 'provider', and its name.
    trunk_kind TEXT NOT NULL CHECK (trunk_kind IN ('gateway', 'provider')),
    trunk TEXT NOT NULL,
    strip BIGINT NOT NULL,
    prepend TEXT NOT NULL,
    priority BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE dids (
    did TEXT PRIMARY KEY,
    number TEXT NOT NULL REFERENCES extensions (number) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);

CREATE TABLE provider_status (
    name TEXT PRIMARY KEY REFERENCES providers (name) ON DELETE CASCADE,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    registered_until BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE active_calls (
    id TEXT PRIMARY KEY,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    kind TEXT NOT NULL,
    trunk TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    answered_at BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('calls_written_at', '0');

CREATE TRIGGER routes_insert_version AFTER INSERT ON routes
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER routes_update_version AFTER UPDATE ON routes
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER routes_delete_version AFTER DELETE ON routes
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER dids_insert_version AFTER INSERT ON dids
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER dids_update_version AFTER UPDATE ON dids
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER dids_delete_version AFTER DELETE ON dids
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER providers_insert_version AFTER INSERT ON providers
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER providers_update_version AFTER UPDATE ON providers
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER providers_delete_version AFTER DELETE ON providers
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
