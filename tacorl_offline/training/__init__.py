"""The stages of one training step, one module each; :class:`tacorl_offline.trainer.Trainer`
runs them in order and owns the loop, the run's state and resume.

- :mod:`.records`: the records passed between stages (:class:`~.records.StepData`, one
  step's data, filled stage by stage; :class:`~.records.Rollout`, one mask) and the read-only
  :class:`~.records.StageContext` every stage reads;
- :mod:`.rollout`: 1. sample masks (and the SCST greedy one), fill groups with stored samples;
- :mod:`.replay_stage`: 2. the length gate, 3. replay cached answers, pay for the misses (in
  one process overlapped with 1: a prompt's calls start as soon as its masks are drawn);
- :mod:`.scoring`: 4. rewards and new metric-cache rows;
- :mod:`.advantage_stage`: 5. advantages over the global batch;
- :mod:`.update`: 6. the on-policy REINFORCE update (the reusing one is
  :mod:`tacorl_offline.offpolicy_update`), with extra loss terms;
- :mod:`.record`: 7. the step's rows in the warehouse (or the journal), the reuse store, csv logs;
- :mod:`.optim`: the optimizer and the learning-rate schedule.
"""
