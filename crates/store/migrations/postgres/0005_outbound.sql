-- Outbound calling: each extension's class of service and fraud limits (NULL: the
-- defaults for its kind from the config's [dialplan]) and whether its outbound calling
-- is suspended (a fraud limit was broken; `sipward ext resume` clears it).

CREATE TABLE outbound (
    number TEXT PRIMARY KEY REFERENCES extensions (number) ON DELETE CASCADE,
    class_of_service TEXT,
    concurrent_external BIGINT,
    attempts_per_minute BIGINT,
    international_per_day BIGINT,
    suspended_at BIGINT NOT NULL,
    suspend_reason TEXT NOT NULL
);

CREATE TRIGGER outbound_insert_version AFTER INSERT ON outbound
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER outbound_update_version AFTER UPDATE ON outbound
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
CREATE TRIGGER outbound_delete_version AFTER DELETE ON outbound
    FOR EACH ROW EXECUTE FUNCTION bump_version('registry_version');
