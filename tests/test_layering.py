"""Every dependency points one way (docs/design.md, Layout): transport -> domain -> store, the CLI and
the dev tools on top, the client library apart. Read from the source's imports, so a new module that
breaks a rule fails here rather than in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "server" / "discount_service"

# The modules of each layer of discount_service (package-relative names).
TRANSPORT = {
    "servicer",
    "call_handling",
    "admin_servicer",
    "encoding",
    "app",
    "serving",
    "workers",
    "metrics",
    "limits",
    "webhook_servicer",
    "webhook_delivery",
    "webhook_http",
    "relay",
    "jetstream",
}
DOMAIN = {
    "service",
    "admin_service",
    "feed",
    "fanout",
    "claim_batcher",
    "auth",
    "tokens",
    "validation",
    "codes",
    "models",
    "errors",
    "webhooks",
    "redemption",
    "operating_state",
    "expiry_sweep",
    "revocation",
}
STORE = {"store", "embedded"}
SHARED = {"settings", "logs", "eventloop", "deadline", "__init__"}


def _modules(package_dir: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in package_dir.rglob("*.py"):
        relative = path.relative_to(package_dir).with_suffix("")
        found[".".join((package, *relative.parts))] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of everything `module` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_parts = module.split(".")[:-1]  # a package's own module is named `<package>.__init__`
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            # `from . import errors` imports the submodule errors.
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


SERVICE_MODULES = _modules(SERVICE, "discount_service")


def _in_layers(*layers: set[str]) -> list[str]:
    """The modules of these layers; a package (the store) with all of its modules."""
    names = set().union(*layers) - {"__init__"}
    return sorted(m for m in SERVICE_MODULES if m.split(".")[1] in names)


ALL_MODULES = {
    **SERVICE_MODULES,
    **_modules(ROOT / "server" / "discount_dev", "discount_dev"),
    **_modules(ROOT / "clients" / "discount_client", "discount_client"),
}


def _imports_any(module: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        name
        for name in _imports(ALL_MODULES[module], module)
        if any(name == p or name.startswith(p + ".") for p in prefixes)
    )


def test_every_service_module_is_in_exactly_one_layer() -> None:
    top_level = {name.split(".")[1] for name in SERVICE_MODULES if name.count(".") >= 1}
    layered = TRANSPORT | DOMAIN | STORE | SHARED | {"cli", "migrations", "sql"}
    assert top_level - layered == set(), "add the new module to a layer here and to docs/design.md's Layout"
    assert not (TRANSPORT & DOMAIN or DOMAIN & STORE or TRANSPORT & STORE)


@pytest.mark.parametrize("module", _in_layers(DOMAIN, STORE, SHARED))
def test_domain_and_store_never_import_grpc_or_protobuf(module: str) -> None:
    assert _imports_any(module, ("grpc", "grpc_status", "google.protobuf", "google.rpc", "discount.v1")) == []


@pytest.mark.parametrize("module", sorted(ALL_MODULES))
def test_only_the_store_talks_to_psycopg(module: str) -> None:
    if module.startswith(("discount_service.store.", "discount_dev.")):
        return  # the store is the one database module; dev tools set up test databases
    assert _imports_any(module, ("psycopg", "psycopg_pool")) == []


@pytest.mark.parametrize("module", _in_layers(DOMAIN, STORE, SHARED))
def test_nothing_below_the_transport_imports_it(module: str) -> None:
    transport = tuple(f"discount_service.{m}" for m in TRANSPORT)
    assert _imports_any(module, transport) == []


# Transport modules that may hold the store: the wiring that builds it and hands it to the domain, and the
# workers that run on it (webhook deliveries, the NATS relay).
HOLDS_THE_STORE = {"app", "workers", "webhook_delivery", "relay"}


@pytest.mark.parametrize("module", [m for m in _in_layers(TRANSPORT) if m.split(".")[1] not in HOLDS_THE_STORE])
def test_the_transport_reaches_the_store_only_through_the_domain(module: str) -> None:
    assert _imports_any(module, ("discount_service.store",)) == []


@pytest.mark.parametrize("module", _in_layers(STORE, SHARED))
def test_the_store_never_imports_the_domain_services(module: str) -> None:
    services = tuple(
        f"discount_service.{m}" for m in ("service", "admin_service", "feed", "claim_batcher", "auth", "tokens")
    )
    assert _imports_any(module, services) == []


@pytest.mark.parametrize("module", sorted(ALL_MODULES))
def test_only_the_cli_imports_the_cli(module: str) -> None:
    if module.startswith("discount_service.cli"):
        return
    assert _imports_any(module, ("discount_service.cli",)) == []


@pytest.mark.parametrize("module", sorted(m for m in ALL_MODULES if m.startswith("discount_service.cli.")))
def test_cli_command_modules_never_import_upward(module: str) -> None:
    if module.endswith((".main", ".__init__", ".__main__")):
        return
    assert _imports_any(module, ("discount_service.cli.main", "discount_service.cli.__init__")) == []
    siblings = ("discount_service.cli.serve", "discount_service.cli.operator", "discount_service.cli.client")
    assert [name for name in _imports_any(module, siblings) if name != module] == []


@pytest.mark.parametrize("module", sorted(SERVICE_MODULES))
def test_the_runtime_never_needs_the_dev_tools(module: str) -> None:
    if module == "discount_service.cli.main":
        return  # adds the dev commands only when discount_dev is installed (a guarded import)
    assert _imports_any(module, ("discount_dev",)) == []


@pytest.mark.parametrize("module", sorted(m for m in ALL_MODULES if m.startswith("discount_client")))
def test_the_client_library_stands_apart_from_the_server(module: str) -> None:
    assert _imports_any(module, ("discount_service", "discount_dev")) == []
