-- 001_core: prompts, datasets, answers, masks, runs, steps, samples and the api_calls ledger.
-- Every teacher answer lives in `responses`, one row per request hash, ever.

CREATE TABLE prompts (
    prompt_id   VARCHAR PRIMARY KEY,      -- v1: hash of text + never-compressed fields
    text        VARCHAR NOT NULL,         -- the compressible text
    fields      JSON,                     -- never-compressed fields (e.g. a QA question)
    reference   VARCHAR,                  -- optional reference answer from the data
    n_chars     INTEGER NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE dataset_items (
    dataset     VARCHAR NOT NULL,
    split       VARCHAR NOT NULL,
    prompt_id   VARCHAR NOT NULL,
    row_number  INTEGER NOT NULL,         -- row in the source file (first occurrence)
    source_path VARCHAR,
    ingested_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, split, prompt_id)
);

CREATE TABLE responses (
    request_hash  VARCHAR PRIMARY KEY,    -- v1: hash of teacher key + exact messages
    teacher_key   VARCHAR NOT NULL,       -- 'import' for answers imported from the data
    kind          VARCHAR NOT NULL,       -- 'original' | 'compressed'
    prompt_id     VARCHAR NOT NULL,
    mask_hash     VARCHAR,                -- NULL for original prompts
    backend       VARCHAR NOT NULL,
    model         VARCHAR NOT NULL,
    messages      JSON,                   -- what was sent (no credentials, ever)
    answer        VARCHAR,
    ok            BOOLEAN NOT NULL,       -- false: permanent failure (empty, content filter)
    error_kind    VARCHAR,
    finish_reason VARCHAR,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      DOUBLE NOT NULL DEFAULT 0,
    usage_source  VARCHAR,                -- 'api' | 'tokenizer' | 'none'
    source        VARCHAR NOT NULL,       -- 'api' | 'local' | 'import' | 'batch'
    run_id        VARCHAR,                -- run that paid for it
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE masks (
    prompt_id    VARCHAR NOT NULL,
    mask_hash    VARCHAR NOT NULL,
    teacher_key  VARCHAR NOT NULL,
    request_hash VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (prompt_id, mask_hash, teacher_key)
);

CREATE TABLE runs (
    run_id      VARCHAR PRIMARY KEY,
    kind        VARCHAR NOT NULL,         -- 'fill' | 'train'
    status      VARCHAR NOT NULL,         -- 'running' | 'finished' | 'budget' | 'failed' | 'interrupted'
    dataset     VARCHAR,
    split       VARCHAR,
    teacher_key VARCHAR,
    config      JSON NOT NULL,            -- resolved config (no credentials)
    message     VARCHAR,
    world_size  INTEGER NOT NULL DEFAULT 1,
    started_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at TIMESTAMP
);

CREATE TABLE steps (
    run_id          VARCHAR NOT NULL,
    step            INTEGER NOT NULL,
    epoch           INTEGER NOT NULL,
    loss            DOUBLE,
    reward_mean     DOUBLE,
    reward_std      DOUBLE,
    reward_min      DOUBLE,
    reward_max      DOUBLE,
    compression     DOUBLE,               -- mean compressed/original tokens
    entropy         DOUBLE,
    lr              DOUBLE,
    n_samples       INTEGER,
    n_unscorable    INTEGER,
    calls           INTEGER,              -- paid teacher calls made in this step
    hits            INTEGER,
    short_circuits  INTEGER,
    cost_usd        DOUBLE,
    saved_usd       DOUBLE,
    seconds         DOUBLE,
    teacher_seconds DOUBLE,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE samples (
    run_id        VARCHAR NOT NULL,
    step          INTEGER NOT NULL,
    prompt_id     VARCHAR NOT NULL,
    sample_idx    INTEGER NOT NULL,       -- -1 for the greedy (SCST) sample
    mask_hash     VARCHAR NOT NULL,
    request_hash  VARCHAR,                -- NULL when short-circuited
    reward        DOUBLE,                 -- NULL when unscorable
    metrics       JSON,
    n_orig_tokens INTEGER,
    n_comp_tokens INTEGER,
    n_words       INTEGER,
    n_kept        INTEGER,
    cache_hit     BOOLEAN NOT NULL,
    short_circuit BOOLEAN NOT NULL,
    unscorable    BOOLEAN NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, step, prompt_id, sample_idx)
);

CREATE TABLE api_calls (
    call_id       VARCHAR PRIMARY KEY,
    run_id        VARCHAR,
    phase         VARCHAR NOT NULL,       -- 'fill' | 'train' | 'eval'
    request_hash  VARCHAR NOT NULL,
    teacher_key   VARCHAR NOT NULL,
    backend       VARCHAR NOT NULL,
    model         VARCHAR NOT NULL,
    attempt       INTEGER NOT NULL,       -- 1-based attempt within the request; 0 for a hit
    status        VARCHAR NOT NULL,       -- 'ok' | 'hit' | 'error' | 'empty' | 'content_filter' | 'http_429' ...
    error         VARCHAR,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      DOUBLE NOT NULL DEFAULT 0,  -- what this attempt cost (0 for hits)
    saved_usd     DOUBLE NOT NULL DEFAULT 0,  -- for hits: what the original call cost
    latency_s     DOUBLE,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE VIEW teacher_outputs AS
    SELECT prompt_id, teacher_key, request_hash, answer, ok, source, backend, model,
           input_tokens, output_tokens, cost_usd, created_at
    FROM responses WHERE kind = 'original';
