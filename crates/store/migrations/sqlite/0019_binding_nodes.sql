-- The node that holds each binding's flow (issue 21): NAT mappings and TCP/TLS
-- connections belong to one node. A node writes and deletes only its own bindings (and
-- takes over unowned ones, '' from before this migration, and older ones of a contact
-- that has since registered through it), and loads only those at start.
ALTER TABLE bindings ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE gateway_bindings ADD COLUMN node TEXT NOT NULL DEFAULT '';
