"""zentry.sentry"""
