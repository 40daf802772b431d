"""Writers of fabricated corpus files for tests (imported as ``corpora``: ``tests/`` is on ``sys.path`` through its
conftest)."""
