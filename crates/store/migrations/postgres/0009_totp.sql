-- Optional TOTP second factor for console administrators: the secret sealed with the
-- data dir's key, and the last time step accepted (a code is never accepted twice).
ALTER TABLE admins ADD COLUMN totp_enc TEXT;
ALTER TABLE admins ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;
