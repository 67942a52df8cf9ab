"""Detection: from capture records to a Detection the alert path raises.

    block.py      a block of one thread's windows and who made each; thread buffers
    view.py       ModelView: the model as the pipeline uses it (geometry, bounds, judge)
    cutter.py     the reader's side: records -> per-thread streams -> windows -> blocks
    queue.py      the bounded window queue (it sheds fairly) and the pipeline's counters
    cache.py      scores of windows already seen
    scorer.py     the scorer thread (batches, inference local or remote, bound, evidence)
                  and Shadow, a candidate judging the same windows
    evidence.py   the alert statistic: bounds, per-process evidence, episodes
    news.py       behaviour news: acts as features of a program, judged against its profile
    judge.py      the lineage Judge: novelty events and their weights at detection
    replay.py     the whole alert rule replayed on recorded activity

May import context (who made a window), metrics.labels, training.profile and
training.behaviour (the data the Judge and the news read); never alerting, service or commands.
"""
