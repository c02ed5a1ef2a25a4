-- Runs with their status and headline numbers.
SELECT
    r.run_id, r.kind, r.status, r.dataset, r.split, r.world_size,
    r.started_at, r.finished_at,
    (SELECT count(*) FROM steps s WHERE s.run_id = r.run_id)        AS steps,
    (SELECT round(avg(s.reward_mean), 4) FROM steps s WHERE s.run_id = r.run_id) AS mean_reward,
    r.message
FROM runs r
ORDER BY r.started_at;
