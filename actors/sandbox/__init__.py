"""The sandbox actor: namespaces, cgroups, container inits, reaping, and the sentry."""
