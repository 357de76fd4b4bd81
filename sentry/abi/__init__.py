"""zentry.sentry.abi"""
