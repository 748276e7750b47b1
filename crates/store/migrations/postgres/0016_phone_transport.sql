-- The transport an extension's phones are provisioned with (issue 19): `udp`, `tcp` or
-- `tls`; NULL follows the installation's `[provisioning] transport`.
ALTER TABLE extensions ADD COLUMN phone_transport TEXT;
