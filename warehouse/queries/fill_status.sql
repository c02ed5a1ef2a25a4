-- Per dataset/split: prompts, and how many have an answer to the original prompt.
SELECT
    d.dataset,
    d.split,
    count(*)                                                        AS prompts,
    count(*) FILTER (WHERE EXISTS (
        SELECT 1 FROM responses r
        WHERE r.prompt_id = d.prompt_id AND r.kind = 'original' AND r.ok)) AS answered,
    count(*) FILTER (WHERE EXISTS (
        SELECT 1 FROM responses r
        WHERE r.prompt_id = d.prompt_id AND r.kind = 'original' AND r.source = 'import')) AS imported
FROM dataset_items d
GROUP BY d.dataset, d.split
ORDER BY d.dataset, d.split;
