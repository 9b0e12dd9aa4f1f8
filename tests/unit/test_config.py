"""Config parsing, env overrides, and dfs.conf.example kept in step with the code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dfs.core import config
from dfs.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "dfs.conf.example"


def test_defaults() -> None:
    cfg = config.parse("", env={})
    assert cfg.rpc.listen == "127.0.0.1:7400"
    assert cfg.storage.block_size == 4 * 1024 * 1024


def test_example_documents_every_option_with_its_default() -> None:
    cfg = config.parse(EXAMPLE.read_text(), env={})
    assert cfg == config.parse("", env={})
    text = EXAMPLE.read_text()
    for section in dataclasses.fields(config.Config):
        assert f"[{section.name}]" in text
        for field in dataclasses.fields(getattr(cfg, section.name)):
            assert f"\n{field.name} = " in text, f"{section.name}.{field.name} undocumented"


def test_unknown_keys_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        config.parse("[rpc]\nlisten = 'x:1'\nbogus = 1\n", env={})
    with pytest.raises(ConfigError, match="unknown section"):
        config.parse("[nope]\n", env={})


def test_types_checked() -> None:
    with pytest.raises(ConfigError, match="integer"):
        config.parse("[storage]\nblock_size = 'big'\n", env={})
    with pytest.raises(ConfigError, match="power of two"):
        config.parse("[storage]\nblock_size = 1000000\n", env={})
    with pytest.raises(ConfigError):
        config.parse("not toml [", env={})


def test_env_overrides() -> None:
    env = {
        "DFS_RPC_LISTEN": "0.0.0.0:9999",
        "STORAGE_ROOT": "/srv/dfs",
        "NODE_ID": "n7",
        "DFS_STORAGE_FSYNC": "no",
    }
    cfg = config.parse("[node]\ndata_dir = '/elsewhere'\n", env=env)
    assert cfg.rpc.listen == "0.0.0.0:9999"
    assert cfg.node.data_dir == "/srv/dfs"
    assert cfg.node_id == "n7"
    assert cfg.storage.fsync is False
    with pytest.raises(ConfigError, match="names no option"):
        config.parse("", env={"DFS_RPC_NOPE": "1"})


def test_render_roundtrip() -> None:
    cfg = config.replace(config.parse("", env={}), node={"data_dir": '/tmp/a "b"'})
    assert config.parse(config.render(cfg), env={}) == cfg
