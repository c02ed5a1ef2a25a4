-- Cost by phase and run: paid calls, cache hits, tokens, dollars spent and saved.
SELECT
    c.phase,
    c.run_id,
    count(*) FILTER (WHERE c.status <> 'hit')                 AS calls,
    count(*) FILTER (WHERE c.status = 'ok')                   AS ok_calls,
    count(*) FILTER (WHERE c.status NOT IN ('ok', 'hit'))     AS failed_attempts,
    count(*) FILTER (WHERE c.status = 'hit')                  AS hits,
    coalesce(sum(c.input_tokens) FILTER (WHERE c.status <> 'hit'), 0)  AS input_tokens,
    coalesce(sum(c.output_tokens) FILTER (WHERE c.status <> 'hit'), 0) AS output_tokens,
    round(coalesce(sum(c.cost_usd), 0), 6)                    AS spent_usd,
    round(coalesce(sum(c.saved_usd), 0), 6)                   AS saved_usd,
    min(c.created_at)                                         AS first_call,
    max(c.created_at)                                         AS last_call
FROM api_calls c
GROUP BY c.phase, c.run_id
ORDER BY first_call;
