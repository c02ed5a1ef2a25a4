-- Training curve: reward, compression and cache hit rate per step.
SELECT run_id, step, epoch, round(loss, 5) AS loss, round(reward_mean, 4) AS reward_mean,
       round(compression, 4) AS compression, calls, hits, short_circuits,
       round(hits / nullif(hits + calls, 0), 3) AS hit_rate, round(cost_usd, 6) AS cost_usd
FROM steps
ORDER BY run_id, step;
