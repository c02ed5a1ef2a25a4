-- 005_batches: OpenAI Batch API submissions (teacher.backend: openai_batch).
-- A row is written, with its requests, before the batch is created, and the batch id is stored
-- as soon as the API returns it, so a restarted teacher-fill collects a batch it already paid
-- for instead of submitting (and paying for) it again.

CREATE TABLE batches (
    submission_id  VARCHAR PRIMARY KEY,   -- ours, known before the API call
    batch_id       VARCHAR,               -- the API's; NULL while 'submitting'
    input_file_id  VARCHAR NOT NULL,      -- the uploaded JSONL
    run_id         VARCHAR,               -- the fill run that submitted it
    teacher_key    VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    status         VARCHAR NOT NULL,      -- 'submitting', the API's status, or 'collected'
    n_requests     INTEGER NOT NULL,
    output_file_id VARCHAR,
    error_file_id  VARCHAR,
    message        VARCHAR,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    collected_at   TIMESTAMP
);

CREATE TABLE batch_requests (
    submission_id VARCHAR NOT NULL,
    request_hash  VARCHAR NOT NULL,       -- also the line's custom_id
    kind          VARCHAR NOT NULL,
    prompt_id     VARCHAR NOT NULL,
    messages      JSON NOT NULL,
    PRIMARY KEY (submission_id, request_hash)
);
