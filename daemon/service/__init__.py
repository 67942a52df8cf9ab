"""`sysdream run`: the long-running service around the detection pipeline.

    loop.py        the main loop: capture -> (learn | detect) -> alerts and metrics
    learner.py     learn-then-detect: the baseline recording and the trainer child
    modelslot.py   the model in use, and putting another one in use
    retrainer.py   scheduled retraining: record, train, shadow-score, swap or reject
    recording.py   the one recorder (baseline, retraining, `sysdream record`) and trainer child
    notify.py      sd_notify (systemd-python): READY, STATUS, WATCHDOG, RELOADING, STOPPING
    logs.py        the daemon's log lines: journald with priorities, or stderr; log_level
    statusfile.py  status.json in the state directory, for `sysdream status`
    behaviour.py   the behaviour profiles: acts in, news out, kept in the state directory
    runtime.py     the process under systemd: signals, threads, torch and memory

May import detect, context, alerting, metrics, training and fleet.
"""
