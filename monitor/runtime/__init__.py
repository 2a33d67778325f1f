"""Where streams run: stream workers, worker processes, the supervisors, bank reloads.

  protocol.py          Supervisor (what the engine holds) and EngineSink (what a supervisor calls back)
  messages.py          stream states and sample reports; the typed messages between worker processes and the parent
  supervisor.py        LocalSupervisor: one reader thread per stream and the analysis threads, in this process
  workers.py           ShardedSupervisor: streams over worker processes, restarts and crash quarantine
  worker_process.py    what runs in each worker process (worker_main), and its event pipe
  analyses.py          the configured analyses built by kind (make_matcher, make_analyses)
  bank_reload.py       bank loads, one at a time per process, swapped in whole
  classify_service.py  a classifier behind an HTTPS service
"""
