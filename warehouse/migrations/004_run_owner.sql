-- 004_run_owner: who owns a run (pid, host), so a 'running' row whose process is gone can be
-- told apart and marked 'interrupted'; and the training step each ledger row belongs to, so
-- steps.calls is counted from the ledger (it then agrees with it after kills and redone steps).
ALTER TABLE runs ADD COLUMN pid INTEGER;
ALTER TABLE runs ADD COLUMN host VARCHAR;
ALTER TABLE api_calls ADD COLUMN step INTEGER;
