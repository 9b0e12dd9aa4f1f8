"""The endpoint registry (dfs/core/endpoints.py) and everything that must agree with it.

- A daemon's handler tables (a primary's and a secondary's) serve exactly the declared
  endpoints, each in the place its declaration says (inline, in a task, in-process only).
- Each handler takes the declared arguments (names, and how many may be left out).
- No source names a method by a string: production code refers to declarations, and any
  string a test passes as a method is declared.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.admin.metrics import Metrics, instrument_handlers
from daemon.service import Service
from dfs.core import config as config_mod
from dfs.core import endpoints
from dfs.core.auth import Credential, new_cluster_secret
from dfs.core.changes import is_known
from dfs.core.endpoints import ALL, Endpoint, Site
from dfs.core.namespace import ROOT_INO
from dfs.net import credentials
from dfs.net.failover import READ_ONLY

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("dfs", "daemon", "mount")
REGISTRY_FILE = ROOT / "dfs" / "core" / "endpoints.py"
GROUPS = {name.split(".", 1)[0] for name in ALL}
METHOD_NAME = re.compile(r"^([a-z0-9]+)\.[a-z0-9_]+$")
# Functions whose positional arguments include a method name (transports and their wrappers).
CALLERS = {"call", "call_node", "_call", "rpc", "_try_rpc"}


def names(pred: Callable[[Endpoint[Any]], bool]) -> set[str]:
    return {name for name, ep in ALL.items() if pred(ep)}


SERVED_OVER_RPC = names(lambda ep: ep.site is not Site.LOCAL)


def make_service(tmp_path: Path, *, primary: bool) -> Service:
    text = f'[node]\ndata_dir = "{tmp_path / "var"}"\n'
    if not primary:
        text += '[cluster]\nmeta = "127.0.0.1:1"\n'  # never dialled: tables are built eagerly
        # A secondary must have been given the cluster secret (it refuses to start otherwise).
        (tmp_path / "var").mkdir()
        credentials.write(tmp_path / "var" / "node.credential", Credential.of_secret(new_cluster_secret()))
    return Service(config_mod.parse(text, env={}, origin="test"))


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[Service]:
    service = make_service(tmp_path, primary=True)
    yield service
    service.close()


@pytest.fixture
def secondary(tmp_path: Path) -> Iterator[Service]:
    service = make_service(tmp_path, primary=False)
    yield service
    service.close()


# -- the declarations themselves ------------------------------------------------------------------


def test_declarations_are_consistent() -> None:
    for name, ep in ALL.items():
        assert ep.name == name and METHOD_NAME.match(name), name
        if ep.inline:  # the RPC reader runs them: they must not wait or write
            assert ep.read_only and ep.site is not Site.NODE, name
        if ep.notices:  # a secondary's forwarder derives notices from the op name and args
            assert ep.site is Site.PRIMARY and not ep.inline and name.startswith("meta."), name
            assert is_known(name.removeprefix("meta.")), f"dfs/core/changes.py does not classify {name}"
        if ep.stamps:
            assert ep.notices, name
        assert not (ep.read_only and ep.stamps), name


def test_every_declaration_has_a_module_constant() -> None:
    """Callers refer to declarations by constant; one without a constant cannot be called."""
    constants = {v.name for v in vars(endpoints).values() if isinstance(v, Endpoint)}
    assert constants == set(ALL)


async def test_call_checks_arity_and_sends_the_name() -> None:
    sent: list[tuple[str, tuple[Any, ...]]] = []

    class Recorder:
        async def call(self, method: str, *args: Any) -> Any:
            sent.append((method, args))
            return None

    await endpoints.META_POLICY.call(Recorder(), 1)
    await endpoints.META_POLICY.call(Recorder(), 1, 2)
    with pytest.raises(AssertionError, match=r"meta\.policy\(ino, parent\) given 3 args"):
        await endpoints.META_POLICY.call(Recorder(), 1, 2, 3)
    with pytest.raises(AssertionError):
        await endpoints.META_MKDIR.call(Recorder(), 1, b"x")
    assert sent == [("meta.policy", (1,)), ("meta.policy", (1, 2))]


def test_declared_names_the_registry_when_it_misses() -> None:
    assert endpoints.declared("sys.ping") is endpoints.SYS_PING
    with pytest.raises(KeyError, match="not declared in dfs/core/endpoints.py"):
        endpoints.declared("sys.pong")


def test_failover_repeats_exactly_the_repeatable_calls() -> None:
    assert names(lambda ep: ep.repeatable) == READ_ONLY
    # What the failover module promised before the registry existed, still there.
    assert {"meta.lookup", "meta.getattr", "meta.session_heartbeat", "ns.changes", "sys.info"} <= READ_ONLY
    assert not {"meta.mkdir", "meta.rename", "meta.commit_write", "meta.sync", "chunk.put"} & READ_ONLY


# -- the daemon's tables ------------------------------------------------------------------------


def test_a_primary_serves_exactly_the_declared_endpoints(primary: Service) -> None:
    tasks, inline = set(primary.handlers), set(primary.inline_handlers())
    assert not tasks & inline
    assert sorted(tasks | inline) == sorted(SERVED_OVER_RPC)
    assert inline == names(lambda ep: ep.inline and ep.site is Site.PRIMARY)
    local = set(primary.local_inline_handlers()) - inline
    assert local == names(lambda ep: ep.site is Site.LOCAL)


def test_a_secondary_forwards_what_the_primary_answers(secondary: Service) -> None:
    assert sorted(secondary.handlers) == sorted(SERVED_OVER_RPC)
    assert secondary.inline_handlers() == {}
    assert set(secondary.local_inline_handlers()) == names(lambda ep: ep.site is Site.LOCAL)
    for name in names(lambda ep: ep.site is Site.PRIMARY):
        assert secondary.handlers[name].__name__ == name  # a forwarder (see HandlerTable._forwarder)
    for name in names(lambda ep: ep.site is Site.NODE):
        assert secondary.handlers[name].__name__ != name  # answered here


def _positional(fn: Callable[..., Any]) -> tuple[list[str], int]:
    params = inspect.signature(fn).parameters.values()
    assert all(p.kind is not p.VAR_POSITIONAL for p in params), f"{fn} hides its arguments"
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds]
    return [p.name for p in positional], sum(p.default is not p.empty for p in positional)


def test_handlers_take_the_declared_arguments(primary: Service) -> None:
    tables = [primary.handlers, primary.local_inline_handlers()]
    found = {name: fn for table in tables for name, fn in table.items()}
    assert set(found) == set(ALL)
    wrong = []
    for name, fn in sorted(found.items()):
        ep = ALL[name]
        params, optional = _positional(fn)
        if (tuple(params), optional) != (ep.params, ep.optional):
            wrong.append(f"{name}: handler takes {params} ({optional} optional), declared {ep}")
    assert wrong == []


async def test_stamped_calls_answer_with_dirstamps_of_the_declared_arguments(primary: Service) -> None:
    caller = primary.local_caller()
    a, stamps = await endpoints.META_MKDIR.call(caller, ROOT_INO, b"a", 0o755, 0, 0)
    assert [s[0] for s in stamps] == [ROOT_INO]
    b, _ = await endpoints.META_MKDIR.call(caller, ROOT_INO, b"b", 0o755, 0, 0)
    await endpoints.META_MKDIR.call(caller, a.ino, b"x", 0o755, 0, 0)
    _, stamps = await endpoints.META_RENAME.call(caller, a.ino, b"x", b.ino, b"y", 0)
    assert [s[0] for s in stamps] == [a.ino, b.ino]  # stamps=(0, 2): both directories
    for ino, before, after in stamps:
        assert before < after.ctime_ns and after.ino == ino


def test_metrics_label_only_declared_methods() -> None:
    metrics = Metrics(node_id="n", version="1", process_metrics=False)

    async def handler() -> None:
        return None

    assert set(instrument_handlers({"sys.ping": handler}, metrics)) == {"sys.ping"}
    with pytest.raises(KeyError, match="sys.pong"):
        instrument_handlers({"sys.pong": handler}, metrics)


# -- no method named by a string ------------------------------------------------------------------


def _sources(*packages: str) -> Iterator[Path]:
    for pkg in packages:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _callee(node: ast.Call) -> str:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return node.func.id if isinstance(node.func, ast.Name) else ""


def _method_strings(path: Path) -> Iterator[tuple[int, str]]:
    """String literals passed positionally to a transport that look like method names."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and _callee(node) in CALLERS:
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    m = METHOD_NAME.match(arg.value)
                    if m and m.group(1) in GROUPS:
                        yield node.lineno, arg.value


def test_production_code_names_methods_only_through_the_registry() -> None:
    found = []
    for path in _sources(*PRODUCTION):
        if path == REGISTRY_FILE:
            continue
        rel = path.relative_to(ROOT)
        found += [f"{rel}:{line}: {value!r}" for line, value in _method_strings(path)]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and node.value in ALL:
                found.append(f"{rel}:{node.lineno}: {node.value!r} (use dfs.core.endpoints)")
    assert sorted(set(found)) == []


def test_methods_tests_call_by_name_are_declared() -> None:
    undeclared = [
        f"{path.relative_to(ROOT)}:{line}: {value!r}"
        for path in _sources("tests")
        for line, value in _method_strings(path)
        if value not in ALL
    ]
    assert undeclared == []


def test_the_scan_finds_raw_method_strings(tmp_path: Path) -> None:
    """The scanners above would see a raw name (guards against a scan that finds nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        'async def f(conn, io):\n    await conn.call("sys.pign")\n    io.call_node(n, "chunk.has")\n'
    )
    assert sorted(_method_strings(sample)) == [(2, "sys.pign"), (3, "chunk.has")]
    found = [value for path in _sources("tests") for _, value in _method_strings(path)]
    assert "sys.ping" in found  # tests do call methods by name, and the scan sees them
