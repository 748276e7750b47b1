-- The web console: administrators (argon2id hashes), their sessions (only a SHA-256
-- of the session token is stored) and API tokens for automation (likewise hashed).
CREATE TABLE admins (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE console_sessions (
    token_sha256 TEXT PRIMARY KEY,
    admin TEXT NOT NULL REFERENCES admins (name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_admin ON console_sessions (admin);

CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
