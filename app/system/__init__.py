"""Process-level utilities: child processes that die with their parent, garbage collector and
malloc settings."""
