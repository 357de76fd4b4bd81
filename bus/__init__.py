"""zentry.bus"""
