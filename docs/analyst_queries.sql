-- Analyst guide: ready queries for the results store.
-- Open it read-only between runs:  duckdb -readonly fvlp-data/results.duckdb
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
