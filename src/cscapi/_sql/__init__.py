"""SQL internals of :class:`cscapi.sql_storage.SQLStorage`: schema, dialect helpers and migrations.

Private: only ``cscapi.sql_storage`` imports this package (and it imports SQLAlchemy, so never from the package root).
"""
