"""The connection layer: how an agent reaches PostgreSQL and prepares it.

``dsn`` parses libpq DSNs and redacts them, ``tls`` builds the SSLContext libpq
would, ``dialer`` and ``connect`` open connections and pools with libpq's
fallbacks and one-line errors, ``migration_files`` reads ``sql/`` and tells what
a database lacks (both backends, no driver), ``migrations`` applies it on
PostgreSQL, ``roles`` grants the agent and reader roles, and ``check`` answers
``situation check``.
"""
