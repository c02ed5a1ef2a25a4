-- 002_evaluations: per-prompt evaluation results, and gold references kept as a list.

-- Every gold answer of a record (SQuAD has several): a JSON list of strings. `reference`
-- keeps the first one, for code that wants a single answer.
ALTER TABLE prompts ADD COLUMN gold_references JSON;

-- One row per (evaluation run, system, random-seed variant, prompt): what `evaluate` scored.
CREATE TABLE evaluations (
    run_id        VARCHAR NOT NULL,       -- runs.run_id (kind 'eval')
    system        VARCHAR NOT NULL,       -- 'original' | 'random' | 'stopword' | 'lead' | a model
    system_kind   VARCHAR NOT NULL,       -- 'baseline' | 'model'
    variant       INTEGER NOT NULL,       -- random baseline: the seed; otherwise 0
    prompt_id     VARCHAR NOT NULL,
    rate          DOUBLE,                 -- the keep rate asked for (NULL with --target-token)
    mask_hash     VARCHAR NOT NULL,
    request_hash  VARCHAR,                -- the teacher request that answered the compression
    metrics       JSON,                   -- {"teacher.squad_f1": 0.8, "gold.squad_f1": 1.0, "judge.win": 0.5}
    n_orig_tokens INTEGER,                -- in the reward's token counter (train.token_counter)
    n_comp_tokens INTEGER,
    ratio         DOUBLE,                 -- n_comp_tokens / n_orig_tokens
    cache_hit     BOOLEAN NOT NULL,
    paid          BOOLEAN NOT NULL,
    unscorable    BOOLEAN NOT NULL,       -- no usable teacher answer (failure or budget)
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, system, variant, prompt_id)
);
