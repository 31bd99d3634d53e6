"""HTTP routes, one module per resource, gathered in ``server.app``."""
