"""The smallest fixes for dependency bugs, each applied only where the bug bites (see each module)."""
