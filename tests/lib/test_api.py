"""The library front door: datakeg.generate() and friends, lazy imports, one home for defaults,
providers that carry their own metadata and register through an entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import datakeg
from datakeg.cli import cli
from datakeg.errors import ConfigError, OutputBusy, ProviderUnavailable
from datakeg.settings import config_example, defaults, option_fields
from datakeg.testing.fake_server import FakeLLMServer

from conftest import ROOT, TESTDOC

HEAVY = ("torch", "transformers", "sklearn", "mlx", "datasets", "scipy", "numpy")


def tree(out: Path) -> dict[str, bytes]:
    """Every dataset file in OUT (the manifest's timings and dates differ between runs)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.jsonl"))
            if ".datakeg" not in p.parts}


def test_api_generate_writes_the_same_out_as_the_cli_byte_for_byte(tmp_path):
    # a fresh server for each run: its faults depend on how often it saw a request before
    with FakeLLMServer(faults=["duplicates:3", "fewer:4"]) as srv:
        result = datakeg.generate(TESTDOC, tmp_path / "api", provider="openai", base_url=srv.url, model="fake-model",
                                  pairs_per_1k=4, format="chat", system_message="Be exact.")
    with FakeLLMServer(faults=["duplicates:3", "fewer:4"]) as srv:
        cli_result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "cli"), "-p", "openai",
                                              "--base-url", srv.url, "-m", "fake-model", "--pairs-per-1k", "4",
                                              "--format", "chat", "--system-message", "Be exact.", "-q"])
    assert cli_result.exit_code == 0, cli_result.output
    api_files, cli_files = tree(tmp_path / "api"), tree(tmp_path / "cli")
    assert set(api_files) >= {"train.jsonl", "valid.jsonl", "test.jsonl", "rejects.jsonl"}
    assert api_files == cli_files
    cli_manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    for key in ("settings", "files", "leakage_audit", "status"):
        assert result.manifest[key] == cli_manifest[key]
    # Result reports what the files hold
    for split in ("train", "valid", "test"):
        rows = (tmp_path / "api" / f"{split}.jsonl").read_text().count("\n")
        assert result.delivered[split] == rows
        assert result.target[split] - result.delivered[split] == result.shortfall[split]
    assert result.manifest == json.loads((tmp_path / "api" / "manifest.json").read_text())
    assert result.manifest["status"] == "complete" and result.mode == "new"


def test_api_raises_typed_errors_and_never_prints(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown setting"):
        datakeg.generate(TESTDOC, tmp_path / "o", provider="openai", base_url="http://127.0.0.1:9/v1",
                         pairs_per_thousand=3)
    with pytest.raises(ConfigError, match="sum to 1"):
        datakeg.plan(TESTDOC, train_pct=0.9)
    with pytest.raises(ProviderUnavailable) as info:
        datakeg.generate(TESTDOC, tmp_path / "o", provider="openai", base_url="http://127.0.0.1:9/v1")
    assert info.value.exit_code == 3 and "not reachable" in info.value.message and info.value.hint
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "o").exists()  # nothing was written before the provider check


def test_callbacks_receive_progress(tmp_path):
    events = []

    class Recorder(datakeg.Callbacks):
        def on_plan(self, plan):
            events.append(("plan", plan.pairs))

        def on_document_done(self, doc, delivered):
            events.append(("done", doc.doc.relpath, sum(delivered.values())))

        def on_pairs(self, accepted):
            events.append(("pairs", accepted))

    with FakeLLMServer() as srv:
        result = datakeg.generate(TESTDOC, tmp_path / "o", provider="openai", base_url=srv.url, callbacks=Recorder())
    planned = [e[1] for e in events if e[0] == "plan"]
    assert planned == [sum(result.target.values())]
    done = {e[1]: e[2] for e in events if e[0] == "done"}
    assert done == {f["path"]: sum(f["delivered"].values()) for f in result.manifest["files"]}
    assert sum(e[1] for e in events if e[0] == "pairs") >= sum(result.delivered.values())


def test_plan_is_the_dry_run(tmp_path):
    dry = datakeg.plan(TESTDOC, pairs_per_1k=3)
    assert dry.estimate["totals"]["requests"] >= len(dry.plan.docs)
    assert dry.estimate["totals"]["target"] == dry.plan.by_split
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "--dry-run",
                                      "--pairs-per-1k", "3"])
    assert result.exit_code == 0 and str(dry.estimate["totals"]["requests"]) in result.output


def test_import_and_help_load_no_heavy_library():
    code = ("import sys, datakeg; datakeg.Settings; datakeg.Callbacks; "
            "from datakeg.cli import cli\n"
            "try:\n    cli(['generate', '--help'])\nexcept SystemExit:\n    pass\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_click_options_init_config_and_readme_agree_with_settings(tmp_path):
    gen = cli.commands["generate"]
    by_name = {p.name: p for p in gen.params}
    for f in option_fields():
        assert f.name in by_name, f"--{f.name} is missing from `datakeg generate`"
        assert by_name[f.name].default == f.default, f.name
    # init-config writes the defaults (it once wrote batch_size = 10 while the default was 15)
    result = CliRunner().invoke(cli, ["init-config", str(tmp_path / "d.toml")])
    assert result.exit_code == 0
    from datakeg.cli import _toml_loads

    written = _toml_loads((tmp_path / "d.toml").read_text())
    d = defaults()
    for key, value in written.items():
        if key in d:
            assert value == d[key], key
    assert {f.name for f in option_fields() if f.metadata["config"] and f.default is not None} <= set(written)
    # the README's options table shows the same defaults
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### `datakeg generate SRC OUT`"):]
    table = table[:table.index("\n\n", table.index("| option |"))]
    rows = {}
    for line in [l for l in table.splitlines()[2:] if l.startswith("|") and l.count("|") >= 3]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        flags = [f.strip().strip("`").split(" ")[0] for f in cells[0].split(",")]
        flags = [f for f in flags if f.startswith("--")]
        values = [v.strip().strip("`") for v in cells[1].split(",")]
        for k, flag in enumerate(flags):  # "--a, --b | 1, 2": one value per flag
            rows[flag[2:].replace("-", "_")] = values[k] if len(values) == len(flags) else cells[1]
    for f in option_fields():
        assert f.name in rows, f"README options table lacks --{f.name.replace('_', '-')}"
        if f.default not in (None, False):
            expected = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
            assert rows[f.name] == expected, (f.name, rows[f.name], expected)


def test_config_example_round_trips_into_generate(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config_example())
    result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(tmp_path / "o"), "--config", str(path),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "TOTAL" in result.output  # every key of the example was accepted and the plan was shown


PLUGIN = '''
from datakeg.providers.base import Completion, Provider
from datakeg.testing.fake_server import answer_prompt


class EchoProvider(Provider):
    """A third-party provider: answers datakeg prompts in-process like the fake server."""
    name = "echo"
    description = "test plugin that answers from the excerpt"
    default_model = "echo-1"
    default_concurrency = 3

    def __init__(self, model=None, **_):
        super().__init__(model or self.default_model)

    def complete(self, request):
        prompt = "\\n".join(m["content"] for m in request.messages)
        return Completion(answer_prompt(prompt, False, set()), 10, 10)
'''


def test_third_party_provider_registers_through_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "datakeg_echo").mkdir(parents=True)
    (site / "datakeg_echo" / "__init__.py").write_text(PLUGIN)
    dist = site / "datakeg_echo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: datakeg-echo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[datakeg.providers]\necho = datakeg_echo:EchoProvider\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    listing = subprocess.run([sys.executable, "-m", "datakeg", "providers"], capture_output=True, text=True,
                             env=env, cwd=ROOT)
    assert "echo" in listing.stdout and "test plugin that answers from the excerpt" in listing.stdout
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "datakeg", "generate", str(TESTDOC), str(out), "-p", "echo", "-q"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provider"] == "echo" and manifest["model"] == "echo-1" and manifest["concurrency"] == 3
    assert manifest["totals"]["delivered"]["train"] > 0
    unknown = subprocess.run([sys.executable, "-m", "datakeg", "generate", str(TESTDOC), str(tmp_path / "x"),
                              "-p", "nope"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert unknown.returncode == 2 and "echo" in unknown.stderr  # the choices include the plugin


def test_register_provider_at_run_time(tmp_path):
    ns = {}
    exec(PLUGIN, ns)
    datakeg.register_provider(ns["EchoProvider"])
    result = datakeg.generate(TESTDOC, tmp_path / "o", provider="echo", pairs_per_1k=2)
    assert result.manifest["provider"] == "echo" and sum(result.delivered.values()) > 0


def test_second_writer_is_refused_while_the_first_holds_out(tmp_path):
    from datakeg.dataset.outdir import OutputLock

    out = tmp_path / "o"
    with FakeLLMServer() as srv:
        assert CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "-p", "openai", "--base-url", srv.url,
                                        "-q"]).exit_code == 0
        before = tree(out)
        with OutputLock(out, "test"):
            for args in (["generate", str(TESTDOC), str(out), "-p", "openai", "--base-url", srv.url, "-q"],
                         ["merge", str(out)], ["audit", str(out), "--remove"]):
                result = CliRunner().invoke(cli, args)
                assert result.exit_code == 2, (args, result.output)
                assert "is being written by datakeg test (pid" in result.output
        assert tree(out) == before
        with pytest.raises(OutputBusy):
            with OutputLock(out, "first"), OutputLock(out, "second"):
                pass


def test_min_per_section_reaches_every_section(tmp_path):
    """At a low --pairs-per-1k many sections get no pair; --min-per-section N gives each of them N."""
    src = tmp_path / "docs"
    src.mkdir()
    sections = [f"## Section {k}\n\n" + f"Setting number {k} controls the widget size of part {k}. " * 8
                for k in range(12)]
    (src / "a.md").write_text("# Manual\n\n" + "\n\n".join(sections), encoding="utf-8")

    def pairs_per_section(dry):
        out = {}
        for dp in dry.plan.docs:
            for chunk, t in zip(dp.chunks, dp.targets):
                out[chunk.breadcrumb] = out.get(chunk.breadcrumb, 0) + sum(t.values())
        return out

    plain = pairs_per_section(datakeg.plan(src, pairs_per_1k=0.5, chunk_size=500))
    assert min(plain.values()) == 0 and len(plain) >= 10  # the fault: sections left without a pair
    raised = pairs_per_section(datakeg.plan(src, pairs_per_1k=0.5, chunk_size=500, min_per_section=2))
    assert raised.keys() == plain.keys() and all(v >= 2 for v in raised.values())
    assert all(raised[k] == max(plain[k], 2) for k in plain)  # only what is missing is added


@pytest.mark.parametrize("kw", [{"max_attempts": 1.5}, {"max_requests": True}, {"seed": "x"},
                                {"max_requests": "10"}, {"no_audit": 1}, {"batch_size": 4.0}])
def test_wrongly_typed_settings_are_config_errors(kw, tmp_path):
    with pytest.raises(ConfigError, match="must be"):
        datakeg.generate(TESTDOC, tmp_path / "o", provider="openai", base_url="http://127.0.0.1:9/v1", **kw)
    assert not (tmp_path / "o").exists()
