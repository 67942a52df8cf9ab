"""Fitting models for a host, offline or in the trainer child the service starts.

    hostmodel.py  the network on the baseline, then the alert bound from held-out activity
    guard.py      the poisoning guard and the share cap on recent activity
    profile.py    the lineage Profile: programs, edges, syscalls, sequences, rarities
    behaviour.py  behaviour profiles per program: settling, the state file, the held-out rate
    inputs.py     command-line inputs to labelled syscall sequences
    command.py    the `sysdream train` command line the service runs as a child
    progress.py   training progress: JSON lines, a line on stderr, the learning bar

May import detect (replay, for the guard and the held-out bound), context and
alerting.allow (the allow entries' windows retraining learns from).
"""
