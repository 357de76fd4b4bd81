"""zentry.actors"""
