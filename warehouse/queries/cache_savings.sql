-- What the cache saved, per teacher model: hits, and the dollars their original calls cost.
SELECT
    c.model,
    count(*) FILTER (WHERE c.status = 'hit')                       AS hits,
    count(*) FILTER (WHERE c.status <> 'hit')                      AS paid_attempts,
    round(coalesce(sum(c.saved_usd), 0), 6)                        AS saved_usd,
    round(coalesce(sum(c.cost_usd), 0), 6)                         AS spent_usd,
    round(count(*) FILTER (WHERE c.status = 'hit') / nullif(count(*), 0), 4) AS hit_rate
FROM api_calls c
GROUP BY c.model
ORDER BY saved_usd DESC;
