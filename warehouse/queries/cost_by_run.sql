-- Cost by phase and run: paid calls, cache hits, tokens, dollars spent and saved.
SELECT
    c.phase,
    c.run_id,
    count(*) FILTER (WHERE c.status <> 'hit' AND c.attempt <= 1)         AS calls,
    count(*) FILTER (WHERE c.status NOT IN ('ok', 'hit'))                AS failed_attempts,
    count(*) FILTER (WHERE c.status = 'hit')                             AS hits,
    coalesce(sum(c.input_tokens), 0)                                     AS tokens_in,
    coalesce(sum(c.output_tokens), 0)                                    AS tokens_out,
    round(coalesce(sum(c.cost_usd), 0), 6)                               AS spent_usd,
    round(coalesce(sum(c.saved_usd), 0), 6)                              AS saved_usd
FROM api_calls c
GROUP BY c.phase, c.run_id
ORDER BY min(c.created_at);
