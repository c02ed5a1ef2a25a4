-- Cost by phase and run: paid calls, cache hits, tokens, dollars spent and saved;
-- requests in flight when their process died (in_flight_at_crash: the server may have billed
-- them) with their worst-case cost.
SELECT
    c.phase,
    c.run_id,
    count(*) FILTER (WHERE c.status <> 'hit' AND c.attempt <= 1)         AS calls,
    count(*) FILTER (WHERE c.status NOT IN ('ok', 'hit'))                AS failed_attempts,
    count(*) FILTER (WHERE c.status = 'hit')                             AS hits,
    coalesce(sum(c.input_tokens), 0)                                     AS tokens_in,
    coalesce(sum(c.output_tokens), 0)                                    AS tokens_out,
    round(coalesce(sum(c.cost_usd), 0), 6)                               AS spent_usd,
    round(coalesce(sum(c.saved_usd), 0), 6)                              AS saved_usd,
    count(*) FILTER (WHERE c.status = 'in_flight_at_crash')              AS in_flight_at_crash,
    round(coalesce(sum(c.reserved_usd) FILTER (WHERE c.status = 'in_flight_at_crash'), 0), 6)
                                                                         AS in_flight_reserved_usd
FROM api_calls c
GROUP BY c.phase, c.run_id
ORDER BY min(c.created_at);
