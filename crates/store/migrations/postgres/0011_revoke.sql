-- A credential change revokes what the old credential reached (issue 15).
--
-- Every extension carries a credential generation, drawn from one counter for the whole
-- data dir: it moves whenever the SIP credentials change (Re-Generate, a new password or
-- auth ID) and a re-added number never gets an old value back. A binding records the
-- generation it was made with, and belongs to its extension: removing the extension
-- removes its bindings, and a binding whose generation is neither the extension's nor
-- that of its open grace window is never loaded, shown or written again.

INSERT INTO meta (key, value) VALUES ('credential_generation', '0')
    ON CONFLICT (key) DO NOTHING;

ALTER TABLE extensions ADD COLUMN credential_generation BIGINT NOT NULL DEFAULT 0;
-- (PostgreSQL has no rowid: any distinct value per row will do; a PostgreSQL database
-- is always created at the newest schema, so this table is empty here anyway.)
UPDATE extensions SET credential_generation = e.n
    FROM (SELECT number, row_number() OVER (ORDER BY created_at, number) AS n FROM extensions) AS e
    WHERE extensions.number = e.number;
UPDATE meta SET value = (SELECT CAST(coalesce(max(credential_generation), 0) AS TEXT) FROM extensions)
    WHERE key = 'credential_generation';

-- Bindings of numbers that are no extension (a removed one, or a gateway's virtual
-- number) are not carried over: nothing could prove whose they are.
CREATE TABLE bindings_owned (
    number TEXT NOT NULL REFERENCES extensions (number) ON DELETE CASCADE,
    contact TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    source TEXT NOT NULL,
    transport TEXT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (number, contact)
);
INSERT INTO bindings_owned (number, contact, call_id, cseq, expires_at, source, transport, generation)
    SELECT b.number, b.contact, b.call_id, b.cseq, b.expires_at, b.source, b.transport, e.credential_generation
    FROM bindings b JOIN extensions e ON e.number = b.number;
DROP TABLE bindings;
ALTER TABLE bindings_owned RENAME TO bindings;

-- The grace window remembers which generation it keeps alive, and the previous
-- provisioning login (HA1s over the provisioning realm, user = MAC): a phone fetches
-- its new file with the login it has, from where it is registered, until the window ends.
ALTER TABLE credential_grace ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credential_grace ADD COLUMN prov_user TEXT NOT NULL DEFAULT '';
ALTER TABLE credential_grace ADD COLUMN prov_ha1_md5 TEXT NOT NULL DEFAULT '';
ALTER TABLE credential_grace ADD COLUMN prov_ha1_sha256 TEXT NOT NULL DEFAULT '';

-- What a queued credentials mail was made from (a digest of the recipient and the sealed
-- credentials): whoever claims it checks it against the extension first, so a mail whose
-- address, password or PIN changed since is withdrawn, never sent. Empty for alerts.
ALTER TABLE outbox ADD COLUMN basis TEXT NOT NULL DEFAULT '';
-- Credential mails queued before this check existed cannot be verified: withdrawn.
UPDATE outbox SET state = 'superseded', last_error = 'queued before mails were checked against the account'
    WHERE state IN ('queued', 'sending') AND number NOT LIKE 'alert:%';
