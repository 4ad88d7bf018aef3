"""Checks a built image of the discount service the way an operator would, with rootful podman.

Run by scripts/image-check.sh, which builds the image; run with the project's venv (grpc stubs,
grpcurl, packaging). Every check prints PASS or FAIL with what it saw; the exit status is 1 if any
failed. The containers use the host network. Their database is a private PostgreSQL started here
in a temporary directory on a free port, so stopping it disturbs nothing else on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
# The project's own layers (everything above the base image), in MB: the target in docs/operations.md.
PROJECT_LAYERS_TARGET_MB = 125
RUN = uuid.uuid4().hex[:6]
# podman without systemd logs an error for every container with a HEALTHCHECK; it changes nothing.
PODMAN_NOISE = "unable to get systemd connection"


class CheckFailed(Exception):
    pass


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    result.stderr = "".join(line for line in result.stderr.splitlines(True) if PODMAN_NOISE not in line)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(command)[:200]} exited {result.returncode}: {result.stderr.strip()[-800:]}")
    return result


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("podman", *args, timeout=timeout, check=check)


def mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


# -- the database the containers use -----------------------------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL of the machine's installation, run as the postgres user."""

    def __init__(self, directory: Path) -> None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
        ensure(bool(versions), "no PostgreSQL server installed under /usr/lib/postgresql")
        self.bin = versions[-1].parent
        self.dir = directory
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(directory, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def _as_postgres(self, *command: str) -> None:
        run("runuser", "-u", "postgres", "--", *command, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir / "postgres.log")
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def query(self, sql: str) -> str:
        return run("psql", self.url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql, timeout=30).stdout.strip()


# -- a running container --------------------------------------------------------------------------


@dataclass
class Container:
    name: str
    listen: str
    started: float

    @classmethod
    def start(cls, image: str, *args: str, env: dict[str, str] | None = None) -> Container:
        listen = f"127.0.0.1:{free_port()}"
        name = f"discount-check-{RUN}-{uuid.uuid4().hex[:4]}"
        env_args = [f"--env={k}={v}" for k, v in {"DISCOUNT_LISTEN": listen, **(env or {})}.items()]
        podman("run", "--detach", "--name", name, "--network", "host", *env_args, *args, image)
        return cls(name, listen, time.monotonic())

    def state(self, field: str) -> str:
        return podman("inspect", "--format", "{{" + field + "}}", self.name).stdout.strip()

    def healthcheck(self) -> bool:
        """One run of the image's HEALTHCHECK, as the engine's timer would do it."""
        return podman("healthcheck", "run", self.name, check=False, timeout=30).returncode == 0

    def wait_healthy(self, timeout: float) -> float:
        started = time.monotonic()
        while not self.healthcheck():
            running = self.state(".State.Running")
            ensure(running == "true", f"container exited: {self.logs()}")
            ensure(time.monotonic() - started < timeout, f"not healthy after {timeout:.0f} s: {self.logs()}")
            time.sleep(0.5)
        return time.monotonic() - started

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command).stdout

    def stop(self) -> tuple[int, float]:
        """`podman stop` (STOPSIGNAL, then SIGKILL after podman's 10 s): exit code and seconds taken."""
        started = time.monotonic()
        podman("stop", self.name, timeout=60)
        return int(self.state(".State.ExitCode")), time.monotonic() - started

    def logs(self, lines: int = 20) -> str:
        result = podman("logs", "--tail", str(lines), self.name, check=False)
        return (result.stdout + result.stderr)[-3000:]

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", self.name, check=False, timeout=60)


def admin_keys(container: Container, brand: str) -> tuple[str, str]:
    """A brand, an admin key and a service key, made with the image's own CLI inside the container."""
    container.exec("discount", "brand", "create", brand, "--name", "Image check")
    admin = container.exec("discount", "key", "create", "--role", "admin").strip().splitlines()[-1]
    service = container.exec("discount", "key", "create", "--role", "service").strip().splitlines()[-1]
    return admin, service


def grpcurl(listen: str, key: str, method: str, request: dict[str, object]) -> dict[str, object]:
    result = run(
        GRPCURL, "-plaintext", "-max-time", "30", "-H", f"x-api-key: {key}", "-d", json.dumps(request),
        listen, f"discount.v1.DiscountService/{method}", timeout=60,
    )  # fmt: skip
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


def generate(listen: str, admin: str, brand: str, count: int) -> None:
    reply = grpcurl(listen, admin, "GenerateCodes", {"brand_id": brand, "count": count, "request_id": f"{brand}-1"})
    ensure(int(str(reply.get("generated", 0))) == count, f"GenerateCodes replied {reply}")


def claim_via_grpcurl(listen: str, service: str, brand: str, user: str) -> tuple[str, bool]:
    reply = grpcurl(listen, service, "ClaimCode", {"brand_id": brand, "user_id": user, "email": f"{user}@example.com"})
    claim = reply.get("claim")
    ensure(isinstance(claim, dict) and bool(claim.get("code")), f"ClaimCode replied {reply}")
    assert isinstance(claim, dict)
    return str(claim["code"]), bool(reply.get("newly_claimed", False))


# -- the checks -----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    passed: bool
    detail: str


class Checks:
    def __init__(self, image: str, base: str, build_seconds: float | None, work: Path) -> None:
        self.image = image
        self.base = base
        self.build_seconds = build_seconds
        self.work = work
        self.results: list[Result] = []
        self.containers: list[Container] = []
        self.volumes: list[str] = []
        self.server: Container | None = None
        self.service = ""
        self.health = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image).stdout)

    def check(self, name: str, body: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail = body()
            passed = True
        except CheckFailed as e:
            detail, passed = str(e), False
        except Exception:  # noqa: BLE001 - a crash in a check is a failed check; the others still run
            detail, passed = traceback.format_exc(limit=3), False
        seconds = time.monotonic() - started
        self.results.append(Result(name, passed, detail))
        print(f"{'PASS' if passed else 'FAIL'}  {name} ({seconds:.1f} s): {detail}", flush=True)

    def container(self, *args: str, env: dict[str, str] | None = None) -> Container:
        container = Container.start(self.image, *args, env=env)
        self.containers.append(container)
        return container

    def cleanup(self) -> None:
        for container in self.containers:
            container.remove()
        for volume in self.volumes:
            podman("volume", "rm", "--force", volume, check=False)

    # Non-root ----------------------------------------------------------------------------------
    def non_root(self) -> str:
        user = podman("image", "inspect", "--format", "{{.Config.User}}", self.image).stdout.strip()
        ensure(user.split(":")[0] not in ("", "0", "root"), f"image USER is {user!r}")
        uid = podman("run", "--rm", "--entrypoint", "id", self.image, "-u").stdout.strip()
        name = podman("run", "--rm", "--entrypoint", "id", self.image, "-un").stdout.strip()
        ensure(uid != "0", f"a container runs as uid {uid}")
        return f"USER {user}; a container runs as uid {uid} ({name})"

    def configuration(self) -> str:
        config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", self.image).stdout)
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        problems = []
        if env.get("DISCOUNT_LISTEN") != "0.0.0.0:50051":
            problems.append(f"DISCOUNT_LISTEN={env.get('DISCOUNT_LISTEN')}")
        if "50051/tcp" not in (config.get("ExposedPorts") or {}):
            problems.append(f"exposed ports {config.get('ExposedPorts')}")
        if env.get("DISCOUNT_DATA_DIR") not in (config.get("Volumes") or {}):
            problems.append(
                f"DISCOUNT_DATA_DIR {env.get('DISCOUNT_DATA_DIR')} is not a volume: {config.get('Volumes')}"
            )
        if config.get("StopSignal") not in ("SIGTERM", "15"):
            problems.append(f"stop signal {config.get('StopSignal')}")
        if not self.health or not self.health.get("Test"):
            problems.append("no HEALTHCHECK (built without --format docker?)")
        ensure(not problems, "; ".join(problems))
        return (
            f"listens on {env['DISCOUNT_LISTEN']}, exposes 50051/tcp, data volume {env['DISCOUNT_DATA_DIR']}, "
            f"stop signal {config['StopSignal']}, HEALTHCHECK every {self.health['Interval'] / 1e9:.0f} s"
        )

    # Contents ----------------------------------------------------------------------------------
    def contents(self) -> str:
        probe = r"""
import importlib.metadata as m, importlib.util as u, json, os, shutil
compilers = ["gcc", "cc", "c++", "g++", "cpp", "clang", "tcc", "ld", "as", "make", "ecpg"]
dot_git = []
for top in ("/opt", "/var", "/home", "/root", "/srv", "/src", "/usr", "/etc", "/tmp"):
    for d, dirs, _ in os.walk(top):
        dot_git += [os.path.join(d, x) for x in dirs if x == ".git"]
build_files = [os.path.join(d, f) for d, _, fs in os.walk("/opt/discount") for f in fs if f.endswith(".a")]
build_files += [d for d, _, _ in os.walk("/opt/discount") if d.endswith("pginstall/include")]
print(json.dumps({
    "dists": sorted(d.metadata["Name"] for d in m.distributions()),
    "compilers": [c for c in compilers if shutil.which(c)],
    "modules": {
        n: u.find_spec(n) is not None
        for n in ("discount_service", "discount_client", "discount_dev", "tests", "bench")
    },
    "dot_git": dot_git,
    "build_files": build_files[:5],
    "src": os.path.exists("/src"),
}))
"""
        seen = json.loads(podman("run", "--rm", "--entrypoint", "python", self.image, "-c", probe).stdout)
        installed = {canonicalize_name(n) for n in seen["dists"]}
        unwanted = sorted((development_distributions() - runtime_distributions()) & installed)
        problems = []
        if seen["compilers"]:
            problems.append(f"compilers or build tools on PATH: {seen['compilers']}")
        if unwanted:
            problems.append(f"test/dev dependencies installed: {unwanted}")
        if {"pip", "setuptools"} & installed:
            problems.append(f"installers in the runtime venv: {sorted({'pip', 'setuptools'} & installed)}")
        stray = [n for n, found in seen["modules"].items() if found != (n in ("discount_service", "discount_client"))]
        if stray:
            problems.append(f"module importability wrong for {stray} (want discount_service, discount_client only)")
        if seen["dot_git"] or seen["src"]:
            problems.append(f"sources in the image: .git {seen['dot_git']}, /src {seen['src']}")
        if seen["build_files"]:
            problems.append(f"static libraries or PostgreSQL headers in /opt/discount, e.g. {seen['build_files']}")
        ensure(not problems, "; ".join(problems))
        return (
            "no compiler or build tool on PATH (gcc, cc, c++, clang, ld, make, ecpg, ...), "
            f"none of the {len(development_distributions())} test/dev distributions, no pip/setuptools, no .git, "
            f"no sources, no static libraries or PostgreSQL headers; {len(installed)} distributions installed, "
            "no discount_dev/tests/bench modules"
        )

    # Served with an external database ----------------------------------------------------------
    def external_database(self, db: PrivatePostgres) -> str:
        server = self.container(env={"DISCOUNT_DATABASE_URL": db.url})
        healthy_after = server.wait_healthy(timeout=60)
        status = server.state(".State.Health.Status")
        ensure(status == "healthy", f"podman reports {status!r} after a passing healthcheck")
        admin, service = admin_keys(server, "image-check")
        generate(server.listen, admin, "image-check", 20_000)
        self.server, self.service = server, service
        return (
            f"healthy {healthy_after:.1f} s after start; brand and keys made with the image's CLI (podman exec), "
            "20,000 codes through grpcurl GenerateCodes"
        )

    def serving(self) -> tuple[Container, str]:
        ensure(self.server is not None, "no server to check (serving on an external database failed)")
        assert self.server is not None
        return self.server, self.service

    def claim(self, db: PrivatePostgres) -> str:
        server, service = self.serving()
        code, newly = claim_via_grpcurl(server.listen, service, "image-check", "operator-1")
        stored = db.query(
            "SELECT code FROM claims JOIN brands USING (brand_key) "
            "WHERE brand_id = 'image-check' AND user_id = 'operator-1'"
        )
        ensure(newly, "ClaimCode says the user already held a code")
        ensure(stored == code, f"grpcurl got {code!r}, the claims table holds {stored!r}")
        again, newly_again = claim_via_grpcurl(server.listen, service, "image-check", "operator-1")
        ensure(again == code and not newly_again, f"a repeated claim returned {again!r} (newly {newly_again})")
        return f"grpcurl ClaimCode -> {code}, the same row in claims; repeating it returns the same code"

    def health_follows_database(self, db: PrivatePostgres) -> str:
        server, _ = self.serving()
        interval = self.health["Interval"] / 1e9
        retries = int(self.health["Retries"])
        # Failures within the start period do not count (podman ignores them even after a success).
        start_period = self.health["StartPeriod"] / 1e9
        time.sleep(max(0.0, server.started + start_period - time.monotonic()))
        ensure(server.healthcheck(), "not healthy before the database stopped")
        db.stop()
        try:
            stopped = time.monotonic()
            while server.healthcheck():
                ensure(time.monotonic() - stopped < interval, f"healthy {interval:.0f} s after the database stopped")
                time.sleep(0.25)
            failing_after = time.monotonic() - stopped
            runs = 1
            while server.state(".State.Health.Status") != "unhealthy" and runs <= retries:
                ensure(not server.healthcheck(), "healthy again while the database is down")
                runs += 1
            status = server.state(".State.Health.Status")
            streak = server.state(".State.Health.FailingStreak")
            ensure(status == "unhealthy", f"podman reports {status!r} after {runs} failing runs (streak {streak})")
        finally:
            db.start()
        back = time.monotonic()
        while not server.healthcheck():
            ensure(time.monotonic() - back < interval, f"not healthy {interval:.0f} s after the database came back")
            time.sleep(0.25)
        recovered = time.monotonic() - back
        ensure(server.state(".State.Running") == "true", "the container exited while the database was down")
        return (
            f"database stopped: the healthcheck fails after {failing_after:.1f} s (interval {interval:.0f} s), "
            f"podman 'unhealthy' after {runs} failing runs (retries {retries}); database back: healthy after "
            f"{recovered:.1f} s, same container"
        )

    def sigterm(self, db: PrivatePostgres) -> str:
        server, service = self.serving()
        grace = 10.0  # DISCOUNT_SHUTDOWN_GRACE_SECONDS's default, which the container runs with
        calls, exit_code, stop_seconds, stop_sent = asyncio.run(claim_burst_and_stop(server, service))
        sent_before = [c for c in calls if c.started < stop_sent]
        in_flight = [c for c in sent_before if c.ended > stop_sent]
        after = [c for c in calls if c.started >= stop_sent]
        ok = [c for c in calls if c.status == "OK"]
        failed = [c for c in calls if c.status != "OK"]
        rows = dict(
            line.split("|")
            for line in db.query(
                "SELECT user_id, code FROM claims JOIN brands USING (brand_key) "
                "WHERE brand_id = 'image-check' AND user_id LIKE 'burst-%'"
            ).splitlines()
        )
        lost = [c.user for c in ok if rows.get(c.user) != c.code]
        in_flight_failed = [f"{c.user}: {c.status}" for c in sent_before if c.status != "OK"]
        wrong_status = sorted({c.status for c in failed} - {"UNAVAILABLE", "CANCELLED"})
        refused_but_stored = [c.user for c in failed if c.user in rows]
        ensure(exit_code == 0, f"exit code {exit_code} after podman stop ({stop_seconds:.1f} s): {server.logs()}")
        ensure(stop_seconds < grace, f"podman stop took {stop_seconds:.1f} s, the grace period is {grace:.0f} s")
        ensure(len(in_flight) > 0, "no claim was in flight when the stop was sent")
        ensure(not in_flight_failed, f"calls sent before the stop failed: {in_flight_failed[:5]}")
        ensure(not lost, f"acknowledged claims missing from the database: {lost[:5]}")
        ensure(not wrong_status, f"calls failed with {wrong_status}")
        ensure(not refused_but_stored, f"refused calls that claimed anyway: {refused_but_stored[:5]}")
        return (
            f"exit 0 {stop_seconds:.1f} s after podman stop (grace {grace:.0f} s); {len(sent_before)} claims sent "
            f"before the stop ({len(in_flight)} in flight at it) all OK; {len(ok)} acknowledged in all, every one "
            f"in the database with its code; of {len(after)} sent after it, {len(after) - len(failed)} served while "
            f"draining and {len(failed)} refused ({', '.join(sorted({c.status for c in failed})) or '-'}), "
            "none of which claimed"
        )

    # Embedded PostgreSQL -----------------------------------------------------------------------
    def embedded(self) -> str:
        volume = f"discount-check-{RUN}"
        podman("volume", "create", volume)
        self.volumes.append(volume)
        mount = f"--volume={volume}:/var/lib/discount"
        first = self.container(mount)
        started_after = first.wait_healthy(timeout=120)
        users = podman("top", first.name, "user,comm").stdout.split()[2:]
        processes = list(zip(users[0::2], users[1::2], strict=True))
        ensure(any(comm == "postgres" for _, comm in processes), f"no postgres process: {processes}")
        ensure(all(user != "root" for user, _ in processes), f"processes as root: {processes}")
        admin, service = admin_keys(first, "embedded")
        generate(first.listen, admin, "embedded", 100)
        code, newly = claim_via_grpcurl(first.listen, service, "embedded", "operator-2")
        ensure(newly, "the first claim on a fresh volume was not new")
        exit_code, stop_seconds = first.stop()
        ensure(exit_code == 0, f"exit {exit_code} after podman stop: {first.logs()}")
        mountpoint = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
        version = mountpoint / "pgdata" / "PG_VERSION"
        ensure(version.is_file(), f"no {version} in the volume")
        owner = version.stat().st_uid
        ensure(owner != 0, f"the database files belong to uid {owner}")
        # A new container on the same volume finds the data: the same user gets the same code back.
        second = self.container(mount)
        second.wait_healthy(timeout=60)
        again, newly_again = claim_via_grpcurl(second.listen, service, "embedded", "operator-2")
        ensure(again == code and not newly_again, f"after a restart the user got {again!r} (newly {newly_again})")
        exit_code_2, _ = second.stop()
        ensure(exit_code_2 == 0, f"exit {exit_code_2} after podman stop of the second container")
        return (
            f"no DISCOUNT_DATABASE_URL: embedded PostgreSQL healthy {started_after:.1f} s after start, every process "
            f"as {processes[0][0]} ({len(processes)} processes), claim {code} via grpcurl; exit 0 {stop_seconds:.1f} s "
            f"after podman stop; PG_VERSION in the volume owned by uid {owner}; a new container on the volume "
            "returns the same code"
        )

    # Size --------------------------------------------------------------------------------------
    def size(self) -> str:
        def layers(image: str) -> list[tuple[int, str]]:
            rows = json.loads(podman("history", "--format", "json", image).stdout)
            return [(int(row["size"]), str(row["CreatedBy"])) for row in rows]

        image_layers, base_layers = layers(self.image), layers(self.base)
        ensure(image_layers[-len(base_layers) :] == base_layers, f"{self.image} is not built on {self.base}")
        own = [(size, by) for size, by in image_layers[: -len(base_layers)] if size > 0]
        own_size = sum(size for size, _ in own)
        total = int(podman("image", "inspect", "--format", "{{.Size}}", self.image).stdout)
        base = int(podman("image", "inspect", "--format", "{{.Size}}", self.base).stdout)
        summary = ", ".join(f"{mb(size)} {describe_layer(by)}" for size, by in own)
        built = f"built in {self.build_seconds:.0f} s; " if self.build_seconds is not None else ""
        ensure(own_size <= PROJECT_LAYERS_TARGET_MB * 1e6, f"project layers {mb(own_size)} exceed the target")
        return (
            f"{built}image {mb(total)} = base {self.base} {mb(base)} + project layers {mb(own_size)} "
            f"(target <= {PROJECT_LAYERS_TARGET_MB} MB): {summary}"
        )


def describe_layer(created_by: str) -> str:
    text = created_by.removeprefix("/bin/sh -c ").strip()
    if text.startswith("#(nop) COPY") and "/opt/discount" in text:
        return "(COPY of the virtualenv /opt/discount)"
    if text.startswith("#(nop)"):  # built with --layers=false: the stage's steps make one layer
        return "(the runtime stage's user and virtualenv, one layer)"
    return f"({text[:40]})"


# -- claims in flight during a stop ---------------------------------------------------------------


@dataclass
class Call:
    user: str
    started: float
    status: str = ""
    code: str = ""
    ended: float = 0.0


async def claim_burst_and_stop(server: Container, service: str) -> tuple[list[Call], int, float, float]:
    """16 clients claim for new users back to back; after 1.5 s `podman stop`. Each client stops at its
    first error. Retries are off, so every call's own outcome is seen."""
    calls: list[Call] = []
    options = [("grpc.enable_retries", 0)]
    metadata_ = (("x-api-key", service),)

    async def client(channel: grpc.aio.Channel, n: int) -> None:
        stub = pb_grpc.DiscountServiceStub(channel)  # type: ignore[no-untyped-call]
        for i in range(100_000):
            call = Call(f"burst-{n}-{i}", time.monotonic())
            calls.append(call)
            try:
                reply = await stub.ClaimCode(
                    pb.ClaimCodeRequest(brand_id="image-check", user_id=call.user, email=f"{call.user}@example.com"),
                    metadata=metadata_,
                    timeout=20,
                )
                call.status, call.code = "OK", reply.claim.code
            except grpc.aio.AioRpcError as e:
                call.status = e.code().name
                return
            finally:
                call.ended = time.monotonic()

    channels = [grpc.aio.insecure_channel(server.listen, options=options) for _ in range(4)]
    try:
        clients = [asyncio.ensure_future(client(channels[n % 4], n)) for n in range(16)]
        await asyncio.sleep(1.5)
        stop_sent = time.monotonic()
        exit_code, seconds = await asyncio.to_thread(server.stop)
        await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
    finally:
        for channel in channels:
            await channel.close(None)
    return calls, exit_code, seconds, stop_sent


# -- what the image must not contain --------------------------------------------------------------


def development_distributions() -> set[str]:
    """Every distribution named in the project's optional (test, dev) extras."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {str(canonicalize_name(Requirement(r).name)) for group in extras.values() for r in group}
    return names - {canonicalize_name("discount-service")}


def runtime_distributions() -> set[str]:
    """The installed project's runtime dependencies, transitively (with their extras, e.g. pyjwt[crypto])."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("discount-service", frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return seen


@contextlib.contextmanager
def private_postgres(work: Path) -> Iterator[PrivatePostgres]:
    directory = work / "postgres"
    directory.mkdir()
    db = PrivatePostgres(directory)
    db.start()
    try:
        yield db
    finally:
        with contextlib.suppress(CheckFailed):
            db.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--base", required=True, help="the image's base, to tell the project's layers apart")
    parser.add_argument("--build-seconds", type=float)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="discount-image-check-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # noqa: S103 - the postgres user must reach its data directory inside
        checks = Checks(args.image, args.base, args.build_seconds, work)
        try:
            checks.check("runs as a non-root user", checks.non_root)
            checks.check("configuration: port, volume, stop signal, HEALTHCHECK", checks.configuration)
            checks.check("no compilers, test dependencies or .git in the image", checks.contents)
            with private_postgres(work) as db:
                checks.check("serves on an external database", lambda: checks.external_database(db))
                checks.check("ClaimCode through grpcurl, the claim in the database", lambda: checks.claim(db))
                # Runs while the HEALTHCHECK's start period of the server above passes.
                checks.check("embedded PostgreSQL by default, data in a volume", checks.embedded)
                checks.check("HEALTHCHECK follows the database", lambda: checks.health_follows_database(db))
                checks.check("podman stop: exit 0, no in-flight claim lost", lambda: checks.sigterm(db))
            checks.check("image and layer sizes", checks.size)
        finally:
            checks.cleanup()
    failed = [r.name for r in checks.results if not r.passed]
    print(f"image check: {len(checks.results) - len(failed)} passed, {len(failed)} failed {failed or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
