"""zentry.cmd"""
