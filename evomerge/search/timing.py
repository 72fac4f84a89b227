"""The clocks of a shared run, in one light module so that `evomerge --help` states them without Optuna."""

#: How often (seconds) a worker records the heartbeat of the candidate it evaluates.
HEARTBEAT_SECONDS = 30
#: A RUNNING candidate whose worker was silent for this many heartbeat intervals is given up as lost.
GRACE_HEARTBEATS = 4
#: How long (seconds) a worker that lost the database keeps retrying before it exits.
PATIENCE_SECONDS = 300
