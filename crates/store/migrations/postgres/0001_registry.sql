-- The registry: extensions, PSTN gateways, VoIP providers.
-- PostgreSQL dialect of migrations/sqlite/0001_registry.sql (same tables and columns).
-- Portable SQL (also valid on PostgreSQL): TEXT and BIGINT only, epoch-second times.
-- Secrets are stored sealed by the data dir's key (`*_enc`); authentication uses HA1s.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE extensions (
    number TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'fax')),
    name TEXT NOT NULL,
    email TEXT,
    auth_id TEXT NOT NULL UNIQUE,
    sip_id TEXT UNIQUE,
    password_enc TEXT NOT NULL,
    password_score BIGINT NOT NULL,
    pin_enc TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    mac TEXT UNIQUE,
    model TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE gateways (
    name TEXT PRIMARY KEY,
    vendor TEXT NOT NULL,
    number TEXT NOT NULL UNIQUE,
    auth_id TEXT NOT NULL UNIQUE,
    password_enc TEXT NOT NULL,
    password_score BIGINT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    host TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE providers (
    name TEXT PRIMARY KEY,
    registrar TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    password_enc TEXT NOT NULL,
    password_score BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
