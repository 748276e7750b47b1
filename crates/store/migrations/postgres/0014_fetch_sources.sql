-- The old provisioning login is accepted during a grace window only from where that
-- login actually fetched the phone's file (issue 15): an attacker registered with a
-- stolen SIP password is a SIP grace source, and must not fetch the new file (with the
-- new SIP password) with the login an old welcome mail carried.
--
-- The addresses each phone's current login fetched from (the last few, with the time:
-- `ip@epoch`, comma-separated, newest first), snapshotted into the grace window when the
-- credentials change.
ALTER TABLE provisioning ADD COLUMN fetch_sources TEXT NOT NULL DEFAULT '';
ALTER TABLE credential_grace ADD COLUMN prov_sources TEXT NOT NULL DEFAULT '';
