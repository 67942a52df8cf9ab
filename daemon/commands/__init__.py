"""The verbs of the `sysdream` command line, one module each; the CLI edge where a user's
mistake becomes one line and an exit code.

    cli.py        the parser, the verbs' dispatch, exit codes at the edge
    manpage.py    the man page and the shell completions, generated from the parser
    confref.py    docs/configuration.md and the shipped TOML, generated from the schema
    doctor.py     `sysdream doctor`: can this host capture, alert and detect
    top.py        `sysdream top`: live per-process syscall rates and losses
    record.py     `sysdream record`: capture to a trace file
    score.py      `sysdream score`: recorded traces scored offline with a bundle
    explain.py    `sysdream explain`: one alert rescored position by position
    status.py     `sysdream status`, `config check`, `model show`: the operator's questions
    train.py      `sysdream train`: a bundle from traces or datasets
    evaluate.py   `sysdream eval`: the model and baselines on ADFA-LD, UNM or files
    plots.py      matplotlib (the optional `plots` extra) for --plot, or the fix in a line

May import every other room; nothing imports it (but `python -m sysdream.daemon`).
"""
