"""Drive a Pulumi dynamic provider through the SDK's real provider gRPC server.

Why: a unit test that calls ``provider.create()`` directly never pickles the
provider and never crosses the wire, so it cannot catch unpicklable state,
import-path problems or leaked secrets. This harness launches
``python -u -m pulumi.dynamic <engine-address>`` the way the engine's
``pulumi-resource-pulumi-python`` shim does, and speaks to it the way the engine
does (pulumi 3.260.0; engine behaviour read from pulumi/pulumi
``sdk/go/common/resource/plugin/provider_plugin.go`` and
``pkg/resource/deploy/target.go``):

* Configure sends the whole stack config in ``args``, keyed ``"<namespace>:<key>"``,
  with secret values wrapped in the secret signature. It also sends
  ``variables`` as ``"pulumi-python:config:<namespace>:<key>"`` mapped to plaintext.
* The server answers ``acceptSecrets=False``. The engine then sends every
  secret *input* as plaintext, and marks an *output* secret when the provider
  returned it wrapped, or when the input with the same name was secret
  (``annotateSecrets``). ``Result.secret_keys`` applies that rule;
  ``Result.wire_secret_keys`` lists only what the provider itself wrapped.
* ``__provider`` is produced by the SDK's own ``serialize_provider`` (dill and
  base64). It is marked secret by the SDK's own rule.

Log capture: in this SDK version the server never calls the engine's Log RPC.
``pulumi.log`` writes to stderr, and the engine turns a plugin's stdout and
stderr into diagnostics. ``logs`` therefore holds the process output lines plus
any Log requests the fake engine receives.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.dynamic import ResourceProvider
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime._serialization import _serialize
from pulumi.runtime.proto import engine_pb2_grpc, provider_pb2, provider_pb2_grpc

SIG_KEY = rpc._special_sig_key
SECRET_SIG = rpc._special_secret_sig
UNKNOWN = rpc.UNKNOWN
PROVIDER_KEY = "__provider"
VENV_PYTHON = Path(__file__).resolve().parents[1] / "venv" / "bin" / "python"
RPC_TIMEOUT = 60.0


@dataclass(frozen=True)
class Secret:
    """An input value that the Pulumi program marks as secret."""

    value: Any


def secret(value: Any) -> Secret:
    """Mark an input as secret, like ``pulumi.Output.secret`` in a program."""
    return Secret(value)


@dataclass(frozen=True)
class Result:
    """What the engine would record after a Check, Create, Read or Update.

    ``outputs`` holds plain values: secrets are unwrapped and ``__provider`` is
    removed. The server turns numbers into floats.
    """

    id: str | None
    outputs: dict[str, Any]
    secret_keys: frozenset[str]
    wire_secret_keys: frozenset[str]
    failures: tuple[tuple[str, str], ...] = ()
    inputs: dict[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        """Return the outputs with secret keys re-marked, as the engine would store them.

        Pass this back into a later Diff, Read, Update or Delete call.
        """
        return {k: Secret(v) if k in self.secret_keys else v for k, v in self.outputs.items()}


@dataclass(frozen=True)
class DiffOutcome:
    """The provider's Diff answer as the engine receives it."""

    changes: bool | None
    replaces: tuple[str, ...]
    delete_before_replace: bool


class ProviderCallError(RuntimeError):
    """A provider RPC failed. ``details`` carries the server-side traceback."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method} failed with {code.name}: {details}")
        self.code = code
        self.details = details


class _FakeEngine(engine_pb2_grpc.EngineServicer):
    """Accept Log calls so that any the provider makes end up in ``logs``."""

    def __init__(self, sink: list[str]) -> None:
        self._sink = sink

    def Log(self, request: Any, context: Any) -> empty_pb2.Empty:
        self._sink.append(f"engine-log: {request.message}")
        return empty_pb2.Empty()


def import_root(module: ModuleType) -> Path:
    """Return the sys.path entry ``module`` was imported from, so the server can import it too.

    dill pickles classes from importable modules *by reference*. The provider
    process must therefore import the module under the same dotted name.
    """
    depth = module.__name__.count(".") + 1
    return Path(module.__file__ or "").resolve().parents[depth - 1]


class DynamicProviderServer:
    """Context manager around one ``python -m pulumi.dynamic`` process.

    It plays the engine: it serializes ``provider`` into ``__provider`` on
    every call, strips secrets as the engine does for a provider that does not
    accept them, and reports which outputs the engine would keep secret.
    """

    def __init__(
        self,
        provider: ResourceProvider,
        cwd: Path,
        *,
        project: str = "project",
        pythonpath: Sequence[Path] = (),
        python: Path = VENV_PYTHON,
        resource_type: str = "pulumi-python:dynamic:Resource",
    ) -> None:
        self.project = project
        self.resource_type = resource_type
        self.logs: list[str] = []
        self.accept_secrets = False
        serialized, captured_secrets = _serialize(True, serialize_provider, provider)
        always = getattr(provider, "serialize_as_secret_always", True)
        self._provider_value = Secret(serialized) if always or captured_secrets else serialized
        self._args = [str(python), "-u", "-m", "pulumi.dynamic"]
        self._cwd = cwd
        self._env = {**os.environ, "PULUMI_PROJECT": project, "PULUMI_CONFIG": "{}"}
        if pythonpath:
            extra = [str(p) for p in pythonpath] + [os.environ.get("PYTHONPATH", "")]
            self._env["PYTHONPATH"] = os.pathsep.join(filter(None, extra))

    def __enter__(self) -> Self:
        self._engine = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        engine_pb2_grpc.add_EngineServicer_to_server(_FakeEngine(self.logs), self._engine)
        engine_port = self._engine.add_insecure_port("127.0.0.1:0")
        self._engine.start()
        self._proc = subprocess.Popen(
            [*self._args, f"127.0.0.1:{engine_port}"],
            cwd=self._cwd,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._pump(self._proc.stderr, "stderr")
        port = self._proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not port.isdigit():
            self.__exit__(None, None, None)
            raise RuntimeError(f"provider did not print a port: {port!r}\n{self.logs}")
        self._pump(self._proc.stdout, "stdout")
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = provider_pb2_grpc.ResourceProviderStub(self._channel)
        self.plugin_version = self._call("GetPluginInfo", empty_pb2.Empty()).version
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if getattr(self, "_channel", None) is not None:
            self._channel.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._engine.stop(None)

    def stop_engine(self) -> None:
        """Stop the fake engine's gRPC server, as when the Pulumi CLI dies (SIGKILL) mid-operation."""
        self._engine.stop(None)

    def wait_for_exit(self, timeout: float) -> int:
        """The provider process's exit code once it has exited; subprocess.TimeoutExpired if it has not."""
        return self._proc.wait(timeout=timeout)

    def configure(self, config: Mapping[str, str], secret_keys: Sequence[str] = ()) -> None:
        """Send stack config as the engine does for a dynamic provider.

        Keys must be namespaced (``"project:key"``), which is what the engine
        sends. ``ConfigureRequest.config.get("key")`` inside the provider adds
        the ``PULUMI_PROJECT`` namespace itself.
        """
        if bad := [k for k in config if ":" not in k]:
            raise ValueError(f"config keys must be namespaced like 'project:key': {bad}")
        args = {k: Secret(v) if k in secret_keys else v for k, v in config.items()}
        provider_type = "pulumi:providers:pulumi-python"
        response = self._call(
            "Configure",
            provider_pb2.ConfigureRequest(
                variables={f"pulumi-python:config:{k}": v for k, v in config.items()},
                args=_to_struct(args, keep_secrets=True),
                acceptSecrets=True,
                acceptResources=True,
                sends_old_inputs=True,
                sends_old_inputs_to_delete=True,
                urn=f"urn:pulumi:stack::{self.project}::{provider_type}::default",
                name="default",
                type=provider_type,
                id="00000000-0000-0000-0000-000000000000",
            ),
        )
        self.accept_secrets = response.acceptSecrets

    def check(self, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> Result:
        """Check ``news`` (program inputs) against ``olds`` (last checked inputs)."""
        response = self._call(
            "Check",
            provider_pb2.CheckRequest(
                **self._address(urn),
                olds=self._props(olds) if olds else struct_pb2.Struct(),
                news=self._props(news),
            ),
        )
        failures = tuple((f.property, f.reason) for f in response.failures)
        return _result(None, response.inputs, news, failures=failures)

    def diff(self, id: str, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> DiffOutcome:
        """Diff old *outputs* against new checked inputs, as the engine does."""
        response = self._call(
            "Diff",
            provider_pb2.DiffRequest(
                id=id,
                **self._address(urn),
                olds=self._props(olds),
                news=self._props(news),
            ),
        )
        changes = {
            provider_pb2.DiffResponse.DIFF_SOME: True,
            provider_pb2.DiffResponse.DIFF_NONE: False,
        }.get(response.changes)
        return DiffOutcome(changes, tuple(response.replaces), response.deleteBeforeReplace)

    def create(self, urn: str, props: Mapping[str, Any]) -> Result:
        """Create the resource from checked inputs."""
        response = self._call(
            "Create",
            provider_pb2.CreateRequest(
                **self._address(urn),
                properties=self._props(props),
            ),
        )
        return _result(response.id, response.properties, props)

    def read(self, id: str, urn: str, props: Mapping[str, Any]) -> Result:
        """Refresh: read live state, given the last recorded outputs."""
        response = self._call(
            "Read",
            provider_pb2.ReadRequest(
                id=id,
                **self._address(urn),
                properties=self._props(props),
            ),
        )
        inputs = None
        if response.HasField("inputs"):
            inputs, _ = _from_struct(response.inputs)
            inputs.pop(PROVIDER_KEY, None)
        result = _result(response.id, response.properties, props)
        return Result(**{**result.__dict__, "inputs": inputs})

    def update(self, id: str, urn: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> Result:
        """Update from old outputs to new checked inputs."""
        response = self._call(
            "Update",
            provider_pb2.UpdateRequest(
                id=id,
                **self._address(urn),
                olds=self._props(olds),
                news=self._props(news),
            ),
        )
        return _result(id, response.properties, news)

    def delete(self, id: str, urn: str, props: Mapping[str, Any]) -> None:
        """Delete the resource, given its last recorded outputs."""
        self._call(
            "Delete",
            provider_pb2.DeleteRequest(
                id=id,
                **self._address(urn),
                properties=self._props(props),
            ),
        )

    def _address(self, urn: str) -> dict[str, str]:
        """The fields by which the engine names the resource in every request."""
        return {"urn": urn, "name": _name(urn), "type": self.resource_type}

    def _props(self, props: Mapping[str, Any]) -> struct_pb2.Struct:
        """Add ``__provider`` and marshal as the engine would for this provider."""
        full = {**props, PROVIDER_KEY: self._provider_value}
        return _to_struct(full, keep_secrets=self.accept_secrets)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as err:
            raise ProviderCallError(method, err.code(), err.details()) from None

    def _pump(self, stream: Any, label: str) -> None:
        def pump() -> None:
            for line in stream:
                self.logs.append(f"{label}: {line.rstrip()}")

        threading.Thread(target=pump, daemon=True).start()


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _plain(value: Any, keep_secrets: bool) -> Any:
    """Turn ``Secret`` markers into the wire's secret wrapper, or drop them like the engine."""
    if isinstance(value, Secret):
        inner = _plain(value.value, keep_secrets)
        return {SIG_KEY: SECRET_SIG, "value": inner} if keep_secrets else inner
    if isinstance(value, Mapping):
        return {k: _plain(v, keep_secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, keep_secrets) for v in value]
    return value


def _to_struct(props: Mapping[str, Any], keep_secrets: bool) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(_plain(props, keep_secrets))
    return struct


def _unwrap(value: Any) -> tuple[Any, bool]:
    """Strip secret wrappers. Also report whether any were found."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return _unwrap(value.get("value"))[0], True
        pairs = {k: _unwrap(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        items = [_unwrap(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def _from_struct(struct: struct_pb2.Struct) -> tuple[dict[str, Any], set[str]]:
    out: dict[str, Any] = {}
    secret_keys = set()
    for key, value in json_format.MessageToDict(struct).items():
        out[key], is_secret = _unwrap(value)
        if is_secret:
            secret_keys.add(key)
    return out, secret_keys


def _has_secret(value: Any) -> bool:
    if isinstance(value, Secret):
        return True
    if isinstance(value, Mapping):
        return any(_has_secret(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_secret(v) for v in value)
    return False


def _result(
    id: str | None,
    struct: struct_pb2.Struct,
    inputs: Mapping[str, Any],
    failures: tuple[tuple[str, str], ...] = (),
) -> Result:
    """Build a Result, applying the engine's ``annotateSecrets`` rule to the top-level keys."""
    outputs, wire = _from_struct(struct)
    outputs.pop(PROVIDER_KEY, None)
    wire.discard(PROVIDER_KEY)
    annotated = {k for k in outputs if k in inputs and _has_secret(inputs[k])}
    return Result(
        id=id or None,
        outputs=outputs,
        secret_keys=frozenset(wire | annotated),
        wire_secret_keys=frozenset(wire),
        failures=failures,
    )
