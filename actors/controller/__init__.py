"""The controller actor: the lifecycle state of every container in a sandbox."""
