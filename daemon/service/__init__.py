"""`sysdream run`: the long-running service around the detection pipeline.

    loop.py        the main loop: capture -> (learn | detect) -> alerts and metrics
    learner.py     learn-then-detect: the baseline recording and the trainer child
    modelslot.py   the model in use, and putting another one in use
    retrainer.py   scheduled retraining: record, train, shadow-score, swap or reject
    behaviour.py   the behaviour profiles: acts in, news out, kept in the state directory
    notify.py      sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING
    runtime.py     the process under systemd: signals, threads, torch and memory

May import detect, context, alerting, metrics, training and fleet.
"""
