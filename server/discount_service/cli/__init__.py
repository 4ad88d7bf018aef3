"""The `discount` command (`main`): run the server, administer brands and keys, call a running server.

Layout: `common` holds what every command shares; `serve`, `admin` and `client` each hold one group
of commands and import only `common` and the service's own modules; `main` builds the parser from
them (plus the dev commands of `discount_dev`, when it is installed) and maps errors to exit codes.
"""

import os

# `discount serve` runs programs (the embedded PostgreSQL's initdb and pg_ctl; its stop runs at exit)
# while gRPC's threads are up. Each is fork() then exec(); gRPC's fork handlers are for children that
# go on using gRPC after fork(), which ours never do (exec at once; `--workers` are spawned, not
# forked), so they only print "Other threads are currently calling into gRPC, skipping fork()
# handlers". gRPC reads this when it is first imported, so it is set here, before anything imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from .main import main  # noqa: E402 - after the environment gRPC reads at import

__all__ = ["main"]
