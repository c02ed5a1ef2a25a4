-- 007_reuse: what off-policy reuse of paid answers needs (tacorl_offline/offpolicy.py).
-- Every sampled mask keeps its deciding words' actions and each one's log-prob under the
-- policy that drew it (the behaviour policy), as list columns, not JSON text; the greedy
-- (SCST) mask keeps neither. Each step says how many gradient contributions were fresh and
-- how many were replayed from the warehouse, and `replays` names every replayed sample.
ALTER TABLE samples ADD COLUMN actions BOOLEAN[];
ALTER TABLE samples ADD COLUMN behaviour_logp FLOAT[];
ALTER TABLE steps ADD COLUMN fresh_samples INTEGER;
ALTER TABLE steps ADD COLUMN replayed_samples INTEGER;
ALTER TABLE steps ADD COLUMN replay_dropped INTEGER;
ALTER TABLE steps ADD COLUMN update_epochs INTEGER;

CREATE TABLE replays (
    run_id            VARCHAR NOT NULL,   -- the run that learned from the sample
    step              INTEGER NOT NULL,
    prompt_id         VARCHAR NOT NULL,
    slot              INTEGER NOT NULL,   -- its place in the prompt's group (after the fresh ones)
    source_run        VARCHAR NOT NULL,   -- the samples row it came from
    source_step       INTEGER NOT NULL,
    source_sample_idx INTEGER NOT NULL,
    reward            DOUBLE NOT NULL,
    drift             DOUBLE NOT NULL,    -- mean per-word |log ratio| when it was used
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, step, prompt_id, slot)
);
