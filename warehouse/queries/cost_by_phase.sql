-- Cost by phase: runs, paid calls, cache hits, hit rate, dollars spent and saved.
SELECT
    c.phase,
    count(DISTINCT c.run_id)                                             AS runs,
    count(*) FILTER (WHERE c.status <> 'hit' AND c.attempt <= 1)         AS calls,
    count(*) FILTER (WHERE c.status = 'hit')                             AS hits,
    round(count(*) FILTER (WHERE c.status = 'hit')
          / nullif(count(*) FILTER (WHERE c.status = 'hit' OR c.attempt <= 1), 0), 3) AS hit_rate,
    round(coalesce(sum(c.cost_usd), 0), 6)                               AS spent_usd,
    round(coalesce(sum(c.saved_usd), 0), 6)                              AS saved_usd
FROM api_calls c
GROUP BY c.phase
ORDER BY min(c.created_at);
