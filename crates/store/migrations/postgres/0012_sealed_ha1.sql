-- HA1 digests work like passwords (a stolen database file alone logs in as every
-- account), so they are sealed with the data dir's key like every other secret. SQL
-- cannot seal: the columns are renamed to say what they hold, and `ha1_sealed = 0` tells
-- the next open to seal the rows written before this migration (one transaction), then
-- set it to 1. The grace windows' previous provisioning login (HA1s over the
-- provisioning realm, 0011) logs in too: sealed the same way.
ALTER TABLE extensions RENAME COLUMN ha1_md5 TO ha1_md5_enc;
ALTER TABLE extensions RENAME COLUMN ha1_sha256 TO ha1_sha256_enc;
ALTER TABLE gateways RENAME COLUMN ha1_md5 TO ha1_md5_enc;
ALTER TABLE gateways RENAME COLUMN ha1_sha256 TO ha1_sha256_enc;
ALTER TABLE credential_grace RENAME COLUMN ha1_md5 TO ha1_md5_enc;
ALTER TABLE credential_grace RENAME COLUMN ha1_sha256 TO ha1_sha256_enc;
ALTER TABLE credential_grace RENAME COLUMN prov_ha1_md5 TO prov_ha1_md5_enc;
ALTER TABLE credential_grace RENAME COLUMN prov_ha1_sha256 TO prov_ha1_sha256_enc;
INSERT INTO meta (key, value) VALUES ('ha1_sealed', '0');
