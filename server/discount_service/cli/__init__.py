"""The `discount` command (`main`): run the server, administer brands and keys, call a running server.

Layout: `common` holds what every command shares; `serve`, `admin` and `client` each hold one group
of commands and import only `common` and the service's own modules; `main` builds the parser from
them (plus the dev commands of `discount_dev`, when it is installed) and maps errors to exit codes.
"""

from .main import main

__all__ = ["main"]
