"""CLI plumbing and run services shared by the entry points: the LightningCLI, checks before training,
atomic checkpoint I/O, the background W&B logger, the run summary."""
