"""Fixtures: the binary, organisms made once per run, and a real service (PostgreSQL database of
its own, a Redis stream prefix of its own, artifacts in Garage's bucket under a prefix of its
own), as the Rust service tests start it (tests/service/harness.rs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import neurodiff as nd
from neurodiff import _binary


def pytest_report_header() -> str:
    return f"neurodiff {nd.__version__} from {Path(nd.__file__).parent}; binary {_binary.binary()}"


@pytest.fixture(scope="session", autouse=True)
def installed_package() -> None:
    """With NEURODIFF_EXPECT_INSTALLED=1 (scripts/python_test.sh) the package under test must be
    the installed wheel, its binary the wheel's, never the source tree's."""
    if os.environ.get("NEURODIFF_EXPECT_INSTALLED") != "1":
        return
    assert "site-packages" in nd.__file__, nd.__file__
    assert "NEURODIFF_BIN" not in os.environ
    assert _binary.binary().parent == Path(sys.executable).parent, _binary.binary()


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The planted organisms (seconds to write): base, rank-update, attn-scaled, lora."""
    return nd.organisms(tmp_path_factory.mktemp("planted"), progress=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained organisms (trained once per machine, cached under ~/.cache/neurodiff)."""
    return nd.organisms(tmp_path_factory.mktemp("trained"), trained=True, progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _database_url(name: str) -> str:
    admin = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return admin.rsplit("/", 1)[0] + "/" + name


@dataclass
class Service:
    url: str
    root: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def token(self, team: str) -> str:
        out = subprocess.run(
            [str(_binary.binary()), "token", "create", "--team", team],
            env=self.env, capture_output=True, text=True, check=True,
        )
        return out.stdout.strip()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.root.glob("*.log"))
        )


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """API, scheduler and one worker on a database of their own; models are allowed from `root`."""
    if shutil.which("psql") is None:
        pytest.fail("psql is needed to create the service's database")
    root = tmp_path_factory.mktemp("service")
    ident = uuid.uuid4().hex[:12]
    db = f"nd_py_{ident}"
    admin = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    subprocess.run(["psql", admin, "-q", "-c", f"CREATE DATABASE {db}"], check=True)
    s3 = "AWS_ENDPOINT_URL" in os.environ
    if os.environ.get("CI") and not s3:
        pytest.fail("CI: no S3 server configured; source scripts/services.sh")
    store = f"s3://neurodiff/py-{ident}" if s3 else f"file://{root}/objects"
    env = _binary.child_env()
    env.update(
        DATABASE_URL=_database_url(db),
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
        NEURODIFF_QUEUE_PREFIX=f"nd-py-{ident}",
        NEURODIFF_OBJECT_STORE=store,
        NEURODIFF_CACHE_DIR=str(root / "cache"),
        NEURODIFF_ALLOW_LOCAL=str(root),
        RUST_LOG="info",
    )
    env.pop("NEURODIFF_PROGRESS", None)
    port = free_port()
    svc = Service(url=f"http://127.0.0.1:{port}", root=root, env=env)
    binary = str(_binary.binary())
    subprocess.run([binary, "migrate"], env=env, check=True, capture_output=True)
    for name, args in [
        ("api", ["api", "--bind", f"127.0.0.1:{port}"]),
        ("scheduler", ["scheduler", "--name", "scheduler", "--poll-ms", "200"]),
        ("worker", ["worker", "--name", "w1", "--renew-ms", "300"]),
    ]:
        log = open(root / f"{name}.log", "wb")
        svc.procs.append(subprocess.Popen([binary, *args], env=env, stdout=subprocess.DEVNULL, stderr=log))
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{svc.url}/healthz", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the API did not come up\n{svc.logs()}")
            time.sleep(0.2)
    yield svc
    for p in svc.procs:
        p.kill()
        p.wait()
    subprocess.run(["psql", admin, "-q", "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], check=False)


@pytest.fixture(scope="session")
def models_dir(service: Service, planted: dict[str, Path]) -> dict[str, Path]:
    """The planted organisms copied under the service's allowed root."""
    out = service.root / "models"
    shutil.copytree(planted["base"].parent, out)
    return {p.name: p for p in out.iterdir() if p.is_dir()}
