"""situation: an agent that inventories its host and network into a relational database."""

__version__ = "0.1.0"
