"""Test helpers shared by every test tier: bundles, leak detection, engines."""
