-- Cost by phase: runs, paid calls, cache hits, hit rate, dollars spent and saved;
-- requests in flight when their process died (in_flight_at_crash: the server may have billed
-- them) with their worst-case cost.
SELECT
    c.phase,
    count(DISTINCT c.run_id)                                             AS runs,
    count(*) FILTER (WHERE c.status <> 'hit' AND c.attempt <= 1)         AS calls,
    count(*) FILTER (WHERE c.status = 'hit')                             AS hits,
    round(count(*) FILTER (WHERE c.status = 'hit')
          / nullif(count(*) FILTER (WHERE c.status = 'hit' OR c.attempt <= 1), 0), 3) AS hit_rate,
    round(coalesce(sum(c.cost_usd), 0), 6)                               AS spent_usd,
    round(coalesce(sum(c.saved_usd), 0), 6)                              AS saved_usd,
    count(*) FILTER (WHERE c.status = 'in_flight_at_crash')              AS in_flight_at_crash,
    round(coalesce(sum(c.reserved_usd) FILTER (WHERE c.status = 'in_flight_at_crash'), 0), 6)
                                                                         AS in_flight_reserved_usd
FROM api_calls c
GROUP BY c.phase
ORDER BY min(c.created_at);
