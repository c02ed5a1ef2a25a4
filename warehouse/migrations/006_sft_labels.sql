-- Word labels used by supervised warm starts (`tacorl-offline sft`), one row per prompt and run.
-- `keep` holds one flag per compressor word of the prompt's text; `kept_text` is the labelled
-- compression rebuilt from the original's character spans, readable in SQL.
CREATE TABLE sft_labels (
    run_id     VARCHAR NOT NULL,
    prompt_id  VARCHAR NOT NULL,
    source     VARCHAR NOT NULL,   -- 'teacher' | 'file' | 'stopword'
    heldout    BOOLEAN NOT NULL,   -- used for the label F1, not for training
    n_words    INTEGER NOT NULL,
    n_kept     INTEGER NOT NULL,
    keep       BOOLEAN[] NOT NULL,
    kept_text  VARCHAR NOT NULL,
    PRIMARY KEY (run_id, prompt_id)
);
