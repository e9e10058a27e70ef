-- Analyst guide: ready queries for the results store.
-- Open it read-only between runs:  .venv/bin/duckdb -readonly fvlp-data/results.duckdb
-- (a read-only session blocks writers: close it when a flow is due to write).
-- tests/test_results_store.py runs every statement of this file.

-- 1. Latest sketch-retrieval metrics per model, one row per model/variant (percent).
SELECT model_fingerprint, run_id, split, variant,
       round(max(value) FILTER (WHERE name = 'm_at_A'), 2)  AS m_at_A,
       round(max(value) FILTER (WHERE name = 'm_at_B'), 2)  AS m_at_B,
       round(max(value) FILTER (WHERE name = 'wm_at_A'), 2) AS wm_at_A,
       round(max(value) FILTER (WHERE name = 'wm_at_B'), 2) AS wm_at_B
FROM latest_metrics
WHERE variant IN ('sketch', 'sketch+text')
GROUP BY ALL
ORDER BY model_fingerprint, variant;

-- 2. Does text help? Sketch+text minus sketch-only, per finished evaluation run.
SELECT run_id, name,
       max(value) FILTER (WHERE variant = 'sketch')      AS sketch_only,
       max(value) FILTER (WHERE variant = 'sketch+text') AS sketch_text,
       sketch_text - sketch_only                          AS gain
FROM metrics JOIN runs USING (run_id)
WHERE runs.status = 'finished' AND variant IN ('sketch', 'sketch+text')
GROUP BY run_id, name
ORDER BY run_id, name;

-- 3. Early-stage retrieval by variant (wm@B, and acc@10 at 20 % of the episode).
SELECT run_id, model_fingerprint, variant,
       round(wm_at_B, 2) AS wm_at_B, round(m_at_B, 2) AS m_at_B,
       round(acc_at_10_at_20pct, 2) AS acc_at_10_at_20pct
FROM early_stage_by_variant
ORDER BY finished_at DESC, variant;

-- 4. acc@1 / acc@10 curves of the newest finished evaluation (for plotting).
SELECT variant, step,
       max(value) FILTER (WHERE metric = 'acc_at_1')  AS acc_at_1,
       max(value) FILTER (WHERE metric = 'acc_at_10') AS acc_at_10
FROM curves
WHERE run_id = (SELECT run_id FROM runs
                WHERE status = 'finished' AND run_id IN (SELECT run_id FROM curves)
                ORDER BY finished_at DESC LIMIT 1)
GROUP BY variant, step
ORDER BY variant, step;

-- 5. Cleaning yield per rule (newest clean run).
SELECT rule, kept, rejected, round(yield_pct, 1) AS yield_pct, precision, recall
FROM cleaning_yield;

-- 6. Run history: what ran, on which code and data, and why it failed.
SELECT run_id, flow, status, code_version, dataset_fingerprint, model_fingerprint,
       started_at, finished_at, error
FROM runs
ORDER BY started_at DESC
LIMIT 20;

-- 7. Plots and summaries attached to finished runs.
SELECT r.flow, a.run_id, a.kind, a.path
FROM artifacts a JOIN runs r USING (run_id)
WHERE r.status = 'finished'
ORDER BY r.finished_at DESC;

-- 8. Compare two runs: the two newest finished evaluations, metric by metric
--    (for two runs of your choice, replace the ranking by run_id IN ('<older>', '<newer>')).
WITH ranked AS (
    SELECT run_id, row_number() OVER (ORDER BY finished_at DESC, run_id DESC) AS recency
    FROM runs WHERE flow = 'evaluate' AND status = 'finished'
)
SELECT m.split, m.variant, m.name,
       max(m.value) FILTER (WHERE r.recency = 2) AS older,
       max(m.value) FILTER (WHERE r.recency = 1) AS newer,
       newer - older                             AS change
FROM metrics m JOIN ranked r USING (run_id)
WHERE r.recency <= 2
GROUP BY ALL
ORDER BY m.split, m.variant, m.name;

-- 9. Loss curve of a run: every optimizer step of the newest training run (loss parts, lr, speed).
SELECT step,
       max(value) FILTER (WHERE metric = 'epoch')         AS epoch,
       max(value) FILTER (WHERE metric = 'loss')          AS loss,
       max(value) FILTER (WHERE metric = 'itc')           AS itc,
       max(value) FILTER (WHERE metric = 'itm')           AS itm,
       max(value) FILTER (WHERE metric = 'lr')            AS lr,
       max(value) FILTER (WHERE metric = 'samples_per_s') AS samples_per_s
FROM training_curves
WHERE run_id = (SELECT run_id FROM runs
                WHERE status = 'finished' AND run_id IN (SELECT run_id FROM training_curves)
                ORDER BY finished_at DESC LIMIT 1)
GROUP BY step
ORDER BY step;

-- 10. What data and code produced this number: each evaluation metric with the evaluation's
--     code and episodes, the training run that wrote the scored weights (same content hash),
--     that run's data, and the pipeline run both belong to (if any).
SELECT m.variant, m.name, round(m.value, 2) AS value,
       e.run_id AS evaluation, e.code_version, e.dataset_fingerprint AS episodes,
       e.model_fingerprint AS weights,
       t.run_id AS trained_by, t.dataset_fingerprint AS training_data, t.code_version AS training_code,
       e.parent_run_id AS pipeline
FROM metrics m
JOIN runs e ON e.run_id = m.run_id AND e.flow = 'evaluate' AND e.status = 'finished'
LEFT JOIN runs t ON t.model_fingerprint = e.model_fingerprint AND t.flow IN ('pretrain', 'finetune')
     AND t.status = 'finished'
WHERE m.name IN ('m_at_A', 'm_at_B', 'wm_at_A', 'wm_at_B')
ORDER BY e.finished_at DESC, m.variant, m.name;

-- 11. Practical tests (people drawing a given face in `fvlp app`): each session's m@A / m@B
--     from evaluation's metric code, and the target's rank after every stroke.
SELECT r.run_id, r.config->>'photo_id' AS target, r.model_fingerprint, r.finished_at,
       round(max(m.value) FILTER (WHERE m.name = 'm_at_A'), 2) AS m_at_A,
       round(max(m.value) FILTER (WHERE m.name = 'm_at_B'), 2) AS m_at_B,
       (SELECT list(CAST(c.value AS INTEGER) ORDER BY c.step) FROM curves c
        WHERE c.run_id = r.run_id AND c.variant = 'human' AND c.metric = 'rank') AS ranks
FROM runs r JOIN metrics m USING (run_id)
WHERE r.flow = 'practice' AND r.status = 'finished' AND m.variant = 'human'
GROUP BY r.run_id, r.config, r.model_fingerprint, r.finished_at
ORDER BY r.finished_at DESC;
