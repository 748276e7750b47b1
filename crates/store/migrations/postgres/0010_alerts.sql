-- Alerts to the administrator are merged per extension and reason: at most one mail an
-- hour, saying how many events it stands for. (A hijacked extension placing emergency
-- calls in a loop once queued 47 mails, none merged: issue 14.) One row per extension
-- and reason: the window the next mail covers, how many events it holds so far, and
-- that mail's outbox id.
CREATE TABLE alert_windows (
    number TEXT NOT NULL,
    reason TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    count BIGINT NOT NULL,
    mail_id TEXT NOT NULL,
    PRIMARY KEY (number, reason)
);
