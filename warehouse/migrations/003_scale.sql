-- 003_scale: lookups that stay flat as the warehouse grows, and metric values cached per answer.
-- Lookups filter by an IN list on one indexed column and nothing else (DuckDB uses an index
-- only when the indexed column is the sole filter); the rest is checked in Python.
-- masks: the primary key (prompt_id, mask_hash, teacher_key) cannot serve a mask_hash filter.
CREATE INDEX masks_by_mask_hash ON masks (mask_hash);

-- One value per (answer, reference, metric): a replayed answer is never rescored, and a
-- changed metric is computed once per answer. `metric` names the component and every setting
-- that changes its value (e.g. 'bleu', 'bertscore:<model digest>:6').
CREATE TABLE metric_values (
    request_hash   VARCHAR NOT NULL,      -- the scored answer (responses.request_hash)
    reference_hash VARCHAR NOT NULL,      -- v1: text hash of the reference it was scored against
    metric         VARCHAR NOT NULL,
    value          DOUBLE NOT NULL,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (request_hash, reference_hash, metric)
);

CREATE INDEX metric_values_by_request ON metric_values (request_hash);
