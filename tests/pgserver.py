"""
Placeholder: the real PostgreSQL fixture lands with the storage work.
"""
