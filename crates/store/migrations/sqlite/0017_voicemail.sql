-- Voicemail (issue 20). Per-extension settings on the extension itself; the box's
-- lockout state and its messages in tables of their own, gone with the extension.
-- Portable SQL: BIGINT 0/1 for booleans, epoch seconds for times.

-- How long a call rings before voicemail answers (0: no voicemail), and whether a new
-- message is mailed to the extension's address (only when it has one).
ALTER TABLE extensions ADD COLUMN voicemail_after_secs BIGINT NOT NULL DEFAULT 20;
ALTER TABLE extensions ADD COLUMN voicemail_mail BIGINT NOT NULL DEFAULT 1;

-- A mailbox's login state: wrong PINs counted across calls and sources (persisted, so
-- neither a redial nor a restart resets them), the lock and its escalation level, and
-- whether the PIN must be changed at the next login. `greeting` is the owner's recorded
-- greeting, a file name relative to the data dir (NULL: the default greeting).
CREATE TABLE voicemail_boxes (
    number TEXT PRIMARY KEY REFERENCES extensions (number) ON DELETE CASCADE,
    failures BIGINT NOT NULL,
    failure_window_start BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    lock_level BIGINT NOT NULL,
    last_locked_at BIGINT NOT NULL,
    must_change_pin BIGINT NOT NULL,
    greeting TEXT,
    updated_at BIGINT NOT NULL
);

-- Messages. `id` is random (it also names the file, so a file name says nothing and
-- cannot be guessed); `file` is relative to the data dir; `caller` is the caller's
-- identity as text (display only, never dialled); `folder` is new or saved.
CREATE TABLE voicemail_messages (
    id TEXT PRIMARY KEY,
    number TEXT NOT NULL REFERENCES extensions (number) ON DELETE CASCADE,
    received_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    caller TEXT NOT NULL,
    folder TEXT NOT NULL CHECK (folder IN ('new', 'saved')),
    file TEXT NOT NULL
);
CREATE INDEX voicemail_messages_box ON voicemail_messages (number, folder, received_at);
