-- The console's pictures (issue 22): a small time series the server writes every minute.
-- One row per metric and hour: counters add the minute's increase, gauges keep the last
-- value seen in the hour. The metrics are a fixed set and rows older than 31 days are
-- pruned on every write, so the table stays under a few thousand rows.
CREATE TABLE trends (
    metric TEXT NOT NULL,
    hour BIGINT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (metric, hour)
);
