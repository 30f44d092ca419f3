"""Security defaults: a recipe names registered generators, never Python callables; `posttrain serve` refuses
to expose its unauthenticated weight-update endpoints beyond a private network unless confirmed."""

import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from posttrain.serve import host_warning, server_command
from pretrain.data import DataConfig, iter_documents, source_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def data_config(source: dict) -> DataConfig:
    return DataConfig(tokenizer="unused", sources=[source], stages=[{"tokens": 1000, "weights": {"s": 1.0}}])


def test_a_recipe_cannot_name_a_python_callable(tmp_path):
    """`callable: "os:system"` ran a shell command (here: one that would create a file)."""
    marker = tmp_path / "ran"
    source = {"name": "s", "type": "generator", "callable": "os:system", "kwargs": {"command": f"touch {marker}"}}
    with pytest.raises(UserError, match=r"recipe key 'sources\[0\]': unknown field 'callable' \(fields: .*generator"):
        data_config(source)
    source = {"name": "s", "type": "generator", "generator": "os:system", "kwargs": {"command": f"touch {marker}"}}
    with pytest.raises(UserError) as error:
        data_config(source)
    assert str(error.value).startswith(
        "recipe key 'sources[0]' (s) field 'generator': unknown generator 'os:system' (known: arithmetic, "
    )
    assert not marker.exists()


def test_builtin_generators_by_name():
    data = data_config({"name": "s", "type": "generator", "generator": "arithmetic", "kwargs": {"n": 3}})
    docs = list(iter_documents(data.source_list[0]))
    assert len(docs) == 3 and "\\boxed{" in docs[0]


def install_plugin(tmp_path, monkeypatch, entry_points: str, module: str = "my_generators",
                   code: str = "def shouting(n):\n    return [f'HELLO {i}!' for i in range(n)]\n") -> None:
    """What `pip install` of a plugin leaves on sys.path: a module and a dist-info with its entry points."""
    (tmp_path / f"{module}.py").write_text(code)
    info = tmp_path / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_an_installed_plugin_adds_a_generator(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "[posttrain.generators]\nshouting = my_generators:shouting\n")
    data = data_config({"name": "s", "type": "generator", "generator": "shouting", "kwargs": {"n": 2}})
    assert list(iter_documents(data.source_list[0])) == ["HELLO 0!", "HELLO 1!"]
    assert source_fingerprint(data.source_list[0])["code"]  # the plugin's code, as a resumed run compares it


def test_a_generators_list_is_made_once_per_process_and_a_lazy_one_each_read(tmp_path, monkeypatch):
    """A run reads each source three times (input check, tokenizer, token files)."""
    install_plugin(tmp_path, monkeypatch, "[posttrain.generators]\nlisted = counted:listed\nlazy = counted:lazy\n",
                   module="counted", code="calls = []\n"
                   "def listed(n):\n    calls.append('listed')\n    return [f'doc {i}' for i in range(n)]\n"
                   "def lazy(n):\n    calls.append('lazy')\n    yield from (f'doc {i}' for i in range(n))\n")
    import counted

    for name in ("listed", "lazy"):
        source = data_config({"name": "s", "type": "generator", "generator": name, "kwargs": {"n": 2}}).source_list[0]
        assert [list(iter_documents(source)) for _ in range(3)] == [["doc 0", "doc 1"]] * 3
    assert counted.calls == ["listed"] + ["lazy"] * 3


def test_a_plugin_cannot_replace_a_builtin_generator(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "[posttrain.generators]\narithmetic = my_generators:shouting\n")
    data = data_config({"name": "s", "type": "generator", "generator": "arithmetic", "kwargs": {"n": 1}})
    assert "\\boxed{" in next(iter_documents(data.source_list[0]))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_served_quietly(host):
    assert host_warning(host, allow_public_host=False) is None


@pytest.mark.parametrize("host", ["10.0.0.5", "192.168.1.20", "172.16.0.1", "fd00::1"])
def test_private_addresses_are_served_with_a_warning(host):
    warning = host_warning(host, allow_public_host=False)
    assert warning.startswith(f"warning: serving on private address {host}; ") and "no authentication" in warning


@pytest.mark.parametrize(
    "host, kind",
    [("0.0.0.0", "every interface"), ("::", "every interface"), ("8.8.8.8", "a public address"),
     ("gpu-node-1", "a host name")],
)
def test_wildcard_public_and_named_hosts_need_confirmation(host, kind):
    with pytest.raises(UserError) as error:
        host_warning(host, allow_public_host=False)
    assert str(error.value).startswith(f"recipe key 'host': {host} ({kind}) may be reachable from other networks; ")
    assert str(error.value).endswith("or pass --allow_public_host to confirm")
    assert host_warning(host, allow_public_host=True).startswith(f"WARNING: serving on {host} ({kind}), confirmed")


def test_serve_refuses_a_wildcard_host_before_starting_anything():
    """vLLM is not needed for the refusal: the command exits 2 with one line."""
    run = subprocess.run([sys.executable, "-m", "posttrain", "serve", "--model", "m", "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 2 and run.stderr.startswith("error: recipe key 'host': 0.0.0.0 (every interface)")
    assert len(run.stderr.splitlines()) == 1


def test_confirmed_public_host_reaches_the_vllm_command(capsys):
    command, _ = server_command(["--model", "m", "--host", "::", "--allow_public_host"])
    assert command[command.index("--host") + 1] == "::"  # read as text, not YAML
    assert "--allow_public_host" not in command and "WARNING: serving on ::" in capsys.readouterr().err
