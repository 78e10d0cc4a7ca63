"""The trainer: the loop, the Method hooks and RunContext methods plug in through, the spike guard,
saving/restoring checkpoints of a running trainer, run dirs, logging."""
