"""The CLI as a user runs it: subprocesses of the installed `hgltr` script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import HGLTR


def run(*args, env=None, check=True):
    proc = subprocess.run([HGLTR, *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"hgltr {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_every_command_and_imports_no_torch():
    code = textwrap.dedent("""
        import sys
        from hgltr_cli.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-FREE")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    for command in ("build-hierarchy", "train", "eval", "predict", "export", "plugins", "list"):
        assert command in proc.stdout
    assert proc.stdout.strip().endswith("TORCH-FREE")


def test_command_help_teaches_with_rewrapped_paragraphs():
    """Each job command shows examples; docstring paragraphs are re-flowed to the terminal (markdown
    mode), so a line never ends mid-sentence just because the source wrapped there."""
    from typer.testing import CliRunner

    from hgltr_cli.cli import build_app

    for command in ("build-hierarchy", "train", "eval", "predict", "export"):
        res = CliRunner().invoke(build_app(), [command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert "Examples" in res.output, command
    res = CliRunner().invoke(build_app(), ["export", "--help"], env={"COLUMNS": "200"})
    # "LoRA merged into the weights" is split over two source lines; re-flowed it reads as one line
    assert "LoRA merged into the weights" in res.output


def test_version_and_module_entry_point():
    from hgltr_cli import __version__

    assert run("--version").stdout.strip() == f"hgltr {__version__}"
    proc = subprocess.run([sys.executable, "-m", "hgltr_cli", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"hgltr {__version__}"


def test_plugins_json_names_the_builtins():
    info = json.loads(run("plugins", "--json").stdout)
    by_name = {p["name"]: p for p in info}
    for builtin in ("peft-adapter", "loss-la", "hierarchy-wordnet", "dataset-imagefolder"):
        assert builtin in by_name
        assert by_name[builtin]["distribution"] == "hgltr"


def test_list_supports_globs_and_json():
    rows = json.loads(run("list", "losses", "*", "--json").stdout)
    names = [r["name"] for r in rows]
    assert names == sorted(names)
    only = json.loads(run("list", "losses", "c*", "--json").stdout)
    assert all(r["name"].startswith("c") for r in only)
    assert "description" in (rows[0] if rows else {"description": ""})


def test_broken_entry_point_is_reported_and_the_cli_keeps_working(tmp_path):
    dist = tmp_path / "hgltr_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hgltr-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hgltr]\nbroken = hgltr_no_such_module_xyz\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = run("plugins", "--json", env=env)
    assert "broken" in proc.stderr and "warning" in proc.stderr
    info = {p["name"]: p for p in json.loads(proc.stdout)}
    assert info["broken"]["status"] == "failed"
    assert info["broken"]["distribution"] == "hgltr-broken"
    assert "hgltr_no_such_module_xyz" in info["broken"]["errors"][0]
    assert info["peft-adapter"]["status"] == "ok"
    run("list", "peft", env=env)  # still works


def test_config_errors_exit_2_with_the_key_named():
    proc = run("train", "--set", "train.lrr=1", "--print-config", check=False)
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train", "--preset", "imagenet", "--print-config", check=False)  # a config error like the rest
    assert proc.returncode == 2 and "imagenet-lt" in proc.stderr


def test_print_config_round_trips_through_a_file(tmp_path):
    first = run("train", "--peft", "lora", "--set", "train.lr=0.01", "--print-config").stdout
    path = tmp_path / "cfg.yaml"
    path.write_text(first)
    assert run("train", "--config", str(path), "--print-config").stdout == first


def test_build_hierarchy_unwritable_outputs_are_clean_errors(tmp_path):
    """A folder given as --output/--plot, or a path that cannot be written, is an error naming it
    (no traceback, no stray .tmp file); a failed heatmap says the hierarchy itself was written."""
    from typer.testing import CliRunner

    from hgltr_cli.cli import build_app

    def build(*args):
        return CliRunner().invoke(build_app(), ["build-hierarchy", "--source", "cifar100", *map(str, args)],
                                  env={"COLUMNS": "300"})

    folder = tmp_path / "folder"
    folder.mkdir()
    res = build("--output", folder)
    assert res.exit_code == 1 and "is a directory" in res.output and "hierarchy.json" in res.output
    assert list(tmp_path.iterdir()) == [folder] and not any(folder.iterdir())
    res = build("--output", tmp_path / "h.json", "--plot", folder)
    assert res.exit_code == 1 and "--plot" in res.output and not (tmp_path / "h.json").exists()

    blocker = tmp_path / "file"
    blocker.write_text("")
    res = build("--output", blocker / "h.json")  # parent is a file: mkdir fails
    assert res.exit_code == 1 and "could not write the hierarchy" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    res = build("--output", tmp_path / "h.json", "--plot", blocker / "h.png")
    assert res.exit_code == 1 and "could not write the heatmap" in res.output and "was written" in res.output
    assert (tmp_path / "h.json").is_file()


def test_train_json_without_dry_run_is_refused():
    """`--json` only shapes --dry-run's output; a real run must not start with it silently ignored."""
    proc = run("train", "--json", "--output", "runs/never", check=False)
    assert proc.returncode == 1 and "--dry-run" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_with_other_settings_names_every_one_to_drop():
    proc = run("train", "--resume", "runs/none", "--batch-size", "8", "--set", "train.lr=1", "--preset", "places-lt",
               check=False)
    assert proc.returncode == 1
    assert "drop --batch-size, --set, --preset." in " ".join(proc.stderr.split())
