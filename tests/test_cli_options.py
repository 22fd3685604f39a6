"""The options made from the config dataclasses (``dind.cli_options``): every field is an option
or skipped by name, help is the field's docstring, ``--config`` round-trips a saved run or
sampler settings with overrides on top, choices are checked on one line, and every command
README.md and runs/*.sh spell still parses.

Commands run in-process through ``dind.cli.main`` with the work itself replaced by a stub that
records what it was given; parsing alone goes through click's own ``make_context``."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import typer

from dind import cli_options
from dind.cli import MODEL, SAMPLER, TRAIN, app, main
from dind.cli_options import Group, field_docs, flags, options
from dind.cli_sweep import SWEEP
from dind.config import (
    ModelConfig,
    NoiseConfig,
    RunConfig,
    SamplerConfig,
    TrainConfig,
    preset,
)
from dind.grid import SweepOptions
from helpers import dind, one_error

REPO = Path(__file__).resolve().parents[1]
SWEEPS = ("gamma", "policy", "nfe", "topp", "mix")

pytestmark = pytest.mark.usefixtures("isolated_cache")


def command(*path: str):
    """The click command ``dind PATH...``."""
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def parse(argv: list[str]) -> tuple[list[str], dict]:
    """``dind ARGV`` parsed as the command line parses it, the command not run: its path and
    the arguments its body would get (generated groups built, lists converted)."""
    cmd, args, path = typer.main.get_command(app), list(argv), []
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        path.append(args.pop(0))
        cmd = cmd.commands[path[-1]]
    assert not hasattr(cmd, "commands"), f"no command in {argv}"
    ctx = cmd.make_context(" ".join(["dind", *path]), args)
    parse_options = getattr(cmd.callback, "parse_options", None)
    return path, parse_options(ctx.params) if parse_options else ctx.params


class Stop(Exception):
    """Raised by a stub in place of the work: what the command was about to run."""


@pytest.fixture
def trained(monkeypatch):
    """``dind.train.train`` replaced: returns what it was called with."""
    calls = []

    def record(run, out, resume=False, init_from=None, progress=True):
        calls.append({"run": run, "out": out, "resume": resume, "init_from": init_from})
        return {"step": 0}

    monkeypatch.setattr("dind.train.train", record)
    return calls


def saved_run() -> RunConfig:
    """A run as ``dind train`` saves it: a preset changed in several places and resolved."""
    run = preset("tiny")
    run.model = dataclasses.replace(run.model, vocab_size=301, mask_id=300, seq_len=64)
    noise = dataclasses.replace(run.train.noise, intervals={4: (0.2, 0.9)}, eps_min=0.01)
    run.train = dataclasses.replace(
        run.train,
        lr=7e-4,
        corpus="english",
        noise=noise,
        block_dist=run.train.block_dist.parse("4,64", "0.8,0.2"),
    )
    return run


def write_run(path: Path, run: RunConfig) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.to_dict(), indent=2))
    return path


# ----------------------------------------------------------------------------- completeness


def fields_of(cls: type, prefix: str = "") -> set[str]:
    """Every leaf field of ``cls``, dotted through nested dataclasses."""
    hints = typing.get_type_hints(cls)
    out = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= fields_of(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.add(f"{prefix}{f.name}")
    return out


EXPECTED_SKIPS = {
    # what the command sets itself or spells by hand; changing one is a decision
    "MODEL": {"vocab_size", "mask_id", "causal"},  # the tokenizer's; the objective's
    "TRAIN": {"block_dist", "noise.intervals"},  # --block-sizes/--block-probs, --noise-interval
    "SAMPLER": set(),
    "SWEEP": {"save_samples"},  # a sweep always keeps its samples
}


@pytest.mark.parametrize(
    "name,group,cls,commands",
    [
        ("MODEL", MODEL, ModelConfig, [("train",)]),
        ("TRAIN", TRAIN, TrainConfig, [("train",)]),
        ("SAMPLER", SAMPLER, SamplerConfig, [("sample",)]),
        ("SWEEP", SWEEP, SweepOptions, [("sweep", s) for s in SWEEPS]),
    ],
)
def test_every_field_is_an_option_or_skipped_by_name(name, group, cls, commands):
    """A field added to a config is an option of every command that takes the config, or
    the test names it: no field goes missing from the command line unnoticed."""
    fields = fields_of(cls)
    made = flags(group)
    assert set(group.skip) == EXPECTED_SKIPS[name]
    for f in fields:  # an option, or skipped (itself, or the nested dataclass holding it)
        skipped = any(f == s or f.startswith(f"{s}.") for s in group.skip)
        assert (f in made) != skipped, f
    assert set(made) <= fields
    per_command = {
        ("sweep", "topp"): {"top_p"},
        ("sweep", "mix"): {"window_stride", "samples_from"},
    }
    for path in commands:
        given = {o for p in command(*path).params for o in (*p.opts, *p.secondary_opts)}
        left_out = per_command.get(path, set()) if name == "SWEEP" else set()
        for field, flag in made.items():
            assert (flag in given) == (field not in left_out), (path, field, flag)


def test_a_field_with_no_command_line_spelling_fails_the_build():
    @dataclasses.dataclass
    class WithMap:
        n: int = 1
        table: dict[str, int] = dataclasses.field(default_factory=dict)

    def cmd(*, opts) -> None:
        pass

    with pytest.raises(TypeError, match="table"):
        options(opts=Group(WithMap))(cmd)
    options(opts=Group(WithMap, skip=("table",)))(cmd)  # skipped by name, it builds


def test_sweeps_share_one_options_definition():
    """Each sweep's generated options are SWEEP's (less those the completeness test above
    names): same flags, same help, same defaults."""
    reference = {
        p.opts[0]: (p.help, p.default)
        for p in command("sweep", "gamma").params
        if p.name.startswith("opts__")
    }
    for kind in SWEEPS:
        mine = {
            p.opts[0]: (p.help, p.default)
            for p in command("sweep", kind).params
            if p.name.startswith("opts__")
        }
        assert mine.items() <= reference.items(), kind


# ----------------------------------------------------------------------------- help texts


def source_docstring(cls: type, name: str) -> str:
    """The string literal after ``name: ...`` in the class's source, found by a regex (not
    the ast walk the CLI uses)."""
    import inspect

    src = textwrap.dedent(inspect.getsource(cls))
    m = re.search(rf"^    {name}: [^\n]*\n    \"\"\"(.*?)\"\"\"", src, re.S | re.M)
    assert m, name
    return " ".join(m.group(1).split())


@pytest.mark.parametrize(
    "path,flag,cls,name",
    [
        (("train",), "--batch-size", TrainConfig, "batch_size"),
        (("train",), "--warmup", TrainConfig, "warmup_steps"),
        (("train",), "--seq-len", ModelConfig, "seq_len"),
        (("train",), "--clip-search", NoiseConfig, "clip_search"),
        (("sample",), "--remask", SamplerConfig, "remask"),
        (("sweep", "nfe"), "--seeds", SweepOptions, "seeds"),
        (("sweep", "mix"), "--judge", SweepOptions, "judge"),
    ],
)
def test_help_is_the_field_docstring(path, flag, cls, name):
    (param,) = [p for p in command(*path).params if flag in p.opts]
    doc = source_docstring(cls, name).replace("``", "")
    assert param.help.replace("\\[", "[").startswith(doc)
    assert field_docs(cls)[name] == source_docstring(cls, name)


def test_the_drifted_batch_size_help_is_gone():
    """(Was "Sequences per device." against the field's "...per micro-step.")"""
    (param,) = [p for p in command("train").params if "--batch-size" in p.opts]
    assert param.help == source_docstring(TrainConfig, "batch_size")


# ----------------------------------------------------------------------------- train


def test_a_saved_run_round_trips_and_takes_overrides(tmp_path, monkeypatch, capsys, trained):
    run = saved_run()
    path = write_run(tmp_path / "old" / "run.json", run)
    code, _, err = dind(monkeypatch, capsys, "train", "--out", tmp_path / "a", "--config", path)
    assert code == 0, err
    assert trained[-1]["run"] == run

    args = shlex.split(
        "--lr 0.01 --max-steps 5 --warmup 7 --betas 0.8,0.95 --no-clip-search --eps-max 0.9 "
        "--hidden-dim 64 --n-heads 2 --objective ar --compile --clip-search-widths 0.5,0.6"
    )
    code, _, err = dind(
        monkeypatch, capsys, "train", "--out", tmp_path / "b", "--config", path, *args
    )
    assert code == 0, err
    noise = dataclasses.replace(
        run.train.noise, clip_search=False, eps_max=0.9, clip_search_widths=(0.5, 0.6)
    )
    expected = dataclasses.replace(
        run,
        model=dataclasses.replace(run.model, hidden_dim=64, n_heads=2),
        train=dataclasses.replace(
            run.train,
            lr=0.01,
            max_steps=5,
            warmup_steps=7,
            betas=(0.8, 0.95),
            objective="ar",
            compile=True,
            noise=noise,
        ),
    )
    assert trained[-1]["run"] == expected
    assert trained[-1]["run"].train.noise.intervals == {4: (0.2, 0.9)}  # kept from the file


@pytest.mark.parametrize("where", ["folder", "checkpoint", "checkpoint_json"])
def test_config_takes_a_run_folder_or_a_checkpoint(tmp_path, monkeypatch, capsys, trained, where):
    run = saved_run()
    folder = tmp_path / "old"
    if where == "folder":
        write_run(folder / "run.json", run)
        given = folder
    else:  # a checkpoint's config.json: BD3-LM's fields and dind's config under "dind"
        (folder / "checkpoint").mkdir(parents=True)
        body = {"model_length": 64, "block_size": 4, "dind": run.to_dict()}
        (folder / "checkpoint" / "config.json").write_text(json.dumps(body))
        given = folder / "checkpoint"
        if where == "checkpoint_json":
            given = given / "config.json"
    code, _, err = dind(
        monkeypatch, capsys, "train", "--out", tmp_path / "new", "--config", given, "--seed", "3"
    )
    assert code == 0, err
    assert trained[-1]["run"] == dataclasses.replace(
        run, train=dataclasses.replace(run.train, seed=3)
    )


@pytest.mark.parametrize(
    "body,parts",
    [
        ("{not json", ["--config", "not JSON"]),
        ('{"model": {}}', ["not a dind run"]),
        ('{"model": {"n_heads": 5, "hidden_dim": 128}, "train": {}}', ["--config", "5 heads"]),
        ('{"model": {"bogus": 1}, "train": {}}', ["--config", "bogus"]),
    ],
)
def test_a_bad_config_is_one_line(tmp_path, monkeypatch, capsys, trained, body, parts):
    path = tmp_path / "run.json"
    path.write_text(body)
    code, _, err = dind(monkeypatch, capsys, "train", "--out", tmp_path / "r", "--config", path)
    one_error(code, err, *parts)
    assert not trained


def test_config_and_preset_together_are_refused(tmp_path, monkeypatch, capsys, trained):
    path = write_run(tmp_path / "run.json", saved_run())
    code, _, err = dind(
        monkeypatch, capsys, "train", "--out", tmp_path / "r", "--config", path, "--preset", "base"
    )
    one_error(code, err, "--config or --preset, not both")


@pytest.mark.parametrize(
    "args,sizes",
    [
        (["--seq-len", "256", "--block-sizes", "4,L/2,L"], (4, 128, 256)),
        (["--block-sizes", "L,4", "--seq-len", "32"], (32, 4)),
        (["--block-sizes", "4,L"], (4, 64)),  # the file's L
        (["--block-probs", "0.5,0.5"], (4, 64)),  # the file's sizes, new probabilities
    ],
)
def test_block_sizes_in_L_resolve_against_the_final_length(
    tmp_path, monkeypatch, capsys, trained, args, sizes
):
    path = write_run(tmp_path / "run.json", saved_run())
    code, _, err = dind(
        monkeypatch, capsys, "train", "--out", tmp_path / "r", "--config", path, *args
    )
    assert code == 0, err
    run = trained[-1]["run"]
    assert run.train.block_dist.block_sizes == sizes
    assert run.model.seq_len == (
        int(args[args.index("--seq-len") + 1]) if "--seq-len" in args else 64
    )


def test_a_preset_with_options_is_what_it_was(tmp_path, monkeypatch, capsys, trained):
    """Without --config: the preset (tiny by default) with the options given, as before."""
    args = shlex.split(
        "--preset base --max-steps 9 --noise-interval 4:0.5,1 --block-sizes 4,L "
        "--block-probs 0.9,0.1"
    )
    code, _, err = dind(monkeypatch, capsys, "train", "--out", tmp_path / "r", *args)
    assert code == 0, err
    base = preset("base")
    noise = dataclasses.replace(base.train.noise, intervals={4: (0.5, 1.0)})
    dist = base.train.block_dist.parse("4,256", "0.9,0.1")
    assert trained[-1]["run"] == dataclasses.replace(
        base, train=dataclasses.replace(base.train, max_steps=9, noise=noise, block_dist=dist)
    )
    code, _, err = dind(monkeypatch, capsys, "train", "--out", tmp_path / "r")
    assert code == 0 and trained[-1]["run"] == preset("tiny")


def test_resume_starts_from_the_run_it_resumes(tmp_path, monkeypatch, capsys, trained):
    run = saved_run()
    out = tmp_path / "r"
    write_run(out / "run.json", run)
    code, _, err = dind(monkeypatch, capsys, "train", "--out", out, "--resume", "--max-steps", "99")
    assert code == 0, err
    assert trained[-1]["resume"] is True
    assert trained[-1]["run"] == dataclasses.replace(
        run, train=dataclasses.replace(run.train, max_steps=99)
    )
    # the original flags still work: --preset is then the start, as before
    code, _, err = dind(monkeypatch, capsys, "train", "--out", out, "--resume", "--preset", "tiny")
    assert code == 0 and trained[-1]["run"] == preset("tiny")
    # nothing saved yet: the tiny preset (dind.train then says there is no run to resume)
    code, _, err = dind(monkeypatch, capsys, "train", "--out", tmp_path / "empty", "--resume")
    assert code == 0 and trained[-1]["run"] == preset("tiny")


# ----------------------------------------------------------------------------- sample


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A random tiny checkpoint (L = 16)."""
    from dind import checkpoint as ckpt
    from dind.model import DiT
    from dind.tokenizer import train_bpe

    tokenizer = train_bpe(["the king and queen walk to the castle by night"] * 4, 300)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        mask_id=tokenizer.mask_id,
        seq_len=16,
        hidden_dim=32,
        cond_dim=16,
        n_blocks=1,
        n_heads=2,
        dropout=0.0,
    )
    folder = tmp_path_factory.mktemp("opts") / "run"
    run = RunConfig(model=cfg, train=TrainConfig())
    ckpt.save_checkpoint(folder / "checkpoint", DiT(cfg), run, tokenizer, {4: (1e-3, 1.0)})
    return folder


@pytest.fixture
def sampled(monkeypatch):
    """``dind.sampler.sample`` replaced: raises Stop with the SamplerConfig it was given."""

    def record(model, cfg, *args, **kwargs):
        raise Stop(cfg)

    monkeypatch.setattr("dind.sampler.sample", record)


def sample_config(monkeypatch, checkpoint_dir, tmp_path, *args) -> SamplerConfig:
    """The SamplerConfig ``dind sample ARGS`` draws with (``sampled`` stops it there)."""
    argv = ["sample", "--checkpoint", checkpoint_dir, "--out", tmp_path / "s.jsonl", *args]
    monkeypatch.setattr(sys, "argv", ["dind", *map(str, argv)])
    with pytest.raises(Stop) as stop:
        main()
    return stop.value.args[0]


def test_sample_defaults_are_the_model_length_and_the_fields_defaults(
    checkpoint_dir, tmp_path, monkeypatch, sampled
):
    cfg = sample_config(monkeypatch, checkpoint_dir, tmp_path)
    assert cfg == SamplerConfig(length=16)
    args = shlex.split("--stages 4,16 --remask 0.5 --no-kv-cache --remask-policy random")
    cfg = sample_config(monkeypatch, checkpoint_dir, tmp_path, *args)
    assert cfg == SamplerConfig(
        length=16, stages=(4, 16), remask=(0.5,), kv_cache=False, remask_policy="random"
    )


def test_sample_config_file_and_sweep_setting_with_overrides(
    checkpoint_dir, tmp_path, monkeypatch, sampled
):
    saved = SamplerConfig(
        stages=(4, 32), remask=(0.25,), length=32, top_p=0.8, nucleus="hf", seed=5, window_stride=8
    )
    plain = tmp_path / "sampler.json"
    plain.write_text(json.dumps(dataclasses.asdict(saved)))
    cfg = sample_config(monkeypatch, checkpoint_dir, tmp_path, "--config", plain)
    assert cfg == saved  # its own length, not the model's
    record = {
        "kind": "gamma",
        "settings": [
            {"name": "stage 1 (block 4)", "sampler": dataclasses.asdict(SamplerConfig(length=32))},
            {"name": "block 32, gamma 0.25", "sampler": dataclasses.asdict(saved)},
        ],
    }
    sweep_json = tmp_path / "gamma.json"
    sweep_json.write_text(json.dumps(record))
    setting = f"{sweep_json}:block 32, gamma 0.25"
    cfg = sample_config(
        monkeypatch,
        checkpoint_dir,
        tmp_path,
        "--config",
        setting,
        *shlex.split("--seed 9 --top-p 1.0"),
    )
    assert cfg == dataclasses.replace(saved, seed=9, top_p=1.0)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"stages": [4, 8], "remask": [0.5]}))
    cfg = sample_config(monkeypatch, checkpoint_dir, tmp_path, "--config", partial)
    assert cfg == SamplerConfig(stages=(4, 8), remask=(0.5,), length=16)  # the model's length


@pytest.mark.parametrize(
    "body,suffix,parts",
    [
        ('{"stages": [4], "top_k": 3}', "", ["not sampler settings", "top_k"]),
        ('{"settings": [{"name": "a", "sampler": {}}]}', "", ["sweep record", ":a"]),
        ('{"settings": [{"name": "a", "sampler": {}}]}', ":b", ["no setting named 'b'", "a"]),
        ('{"stages": [4]}', ":b", ["not a sweep record"]),
        ('{"stages": [4, 3], "remask": [0.5], "length": 32}', "", ["must not decrease"]),
    ],
)
def test_a_bad_sample_config_is_one_line_before_loading(
    tmp_path, monkeypatch, capsys, checkpoint_dir, body, suffix, parts
):
    def never(*a, **k):
        raise AssertionError("the checkpoint loaded")

    monkeypatch.setattr("dind.checkpoint.load_checkpoint", never)
    path = tmp_path / "c.json"
    path.write_text(body)
    code, _, err = dind(
        monkeypatch,
        capsys,
        "sample",
        "--checkpoint",
        checkpoint_dir,
        "--out",
        tmp_path / "s.jsonl",
        "--config",
        f"{path}{suffix}",
    )
    one_error(code, err, *parts)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,parts",
    [
        (["train", "--out", "r", "--objective", "xx"], ["--objective", "'xx'"]),
        (["train", "--out", "r", "--preset", "huge"], ["--preset", "'huge'"]),
        (["train", "--out", "r", "--attn-backend", "cuda"], ["--attn-backend"]),
        (
            ["sample", "--checkpoint", "c", "--out", "o", "--remask-policy", "x"],
            ["--remask-policy"],
        ),
        (["sample", "--checkpoint", "c", "--out", "o", "--dtype", "fp8"], ["--dtype"]),
        (["sweep", "gamma", "--checkpoint", "c", "--out", "o", "--nucleus", "topk"], ["--nucleus"]),
        (["sweep", "mix", "--out", "o", "--tokenizer", "char"], ["--tokenizer"]),
        (["bench", "train", "--attn-backend", "xformers"], ["--attn-backend"]),
        (["train", "--out", "r", "--lrr", "3"], ["No such option: --lrr"]),
        (["train", "--out", "r", "--max-steps", "1.5"], ["--max-steps"]),
        (["train", "--lr", "3"], ["Missing option '--out'"]),
        (["train", "--out", "r", "--betas", "0.9"], ["--betas takes 2 comma-separated values"]),
        (
            ["sweep", "nfe", "--checkpoint", "c", "--out", "o", "--seeds", "0,x"],
            ["--seeds must be a comma-separated list of integers: 'x' in '0,x'"],
        ),
    ],
)
def test_a_bad_option_or_choice_is_one_line_with_exit_2(tmp_path, monkeypatch, capsys, args, parts):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("dind.train.train", lambda *a, **k: pytest.fail("trained"))
    code, out, err = dind(monkeypatch, capsys, *args)
    one_error(code, err, *parts)
    assert out == "" and not any(tmp_path.iterdir())


def test_no_arguments_prints_the_help_and_exits_2(monkeypatch, capsys):
    code, out, err = dind(monkeypatch, capsys)
    assert code == 2 and "train" in out and "sweep" in out and err == ""
    code, out, err = dind(monkeypatch, capsys, "train", "--help")
    assert code == 0 and "--config" in out and err == ""


def test_building_the_command_line_imports_no_torch():
    code = "import sys, dind.cli; sys.exit('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


# ----------------------------------------------------------------------------- documented
# invocations


def doc_commands(doc: str) -> list[list[str]]:
    """Every ``dind`` command in a document's code blocks, as arguments; a ``...`` leaves out
    required options, which get placeholders; ``a|b`` gives a command per choice."""
    code, inside = [], False
    for line in (REPO / doc).read_text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif inside:
            code.append(line.strip())
    lines = "\n".join(code).replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        if not line.startswith(("dind ", "torchrun ")):  # other blocks: tables, Python
            continue
        words = shlex.split(line, comments=True)
        if "dind.cli" in words:
            words = ["dind", *words[words.index("dind.cli") + 1 :]]
        if not words or words[0] != "dind":
            continue
        elided = "..." in words
        words = [w for w in words if w != "..."]
        choices = [i for i, w in enumerate(words) if "|" in w]
        variants = [words]
        for i in choices:
            variants = [[*v[:i], c, *v[i + 1 :]] for v in variants for c in words[i].split("|")]
        for v in variants:
            out.append(fill_required(v[1:]) if elided else v[1:])
    return out


def fill_required(args: list[str]) -> list[str]:
    cmd, rest = typer.main.get_command(app), list(args)
    while hasattr(cmd, "commands"):
        cmd = cmd.commands[rest.pop(0)]
    for p in cmd.params:
        if p.required and p.opts[0].startswith("--") and p.opts[0] not in args:
            args = [*args, p.opts[0], "PLACEHOLDER"]
    return args


def dry_run_commands(script: str, *args: str, **env) -> list[list[str]]:
    """The ``dind`` commands a script's DRY_RUN prints."""
    res = subprocess.run(
        ["bash", str(REPO / "runs" / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1", **env},
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    out = []
    for line in res.stdout.splitlines():
        words = shlex.split(line[2:]) if line.startswith("+ ") else []
        if any(w.endswith("/dind") for w in words[:1]):
            out.append(words[1:])
        elif "dind.cli" in words:
            out.append(words[words.index("dind.cli") + 1 :])
    return out


def recorded_commands(tmp_path: Path, script: str, *args: str) -> list[list[str]]:
    """The ``dind`` commands a script without a dry run runs, with DIND a recorder."""
    tmp_path.mkdir(parents=True)
    log = tmp_path / "calls"
    recorder = tmp_path / "dind"
    recorder.write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a" >> {log}; done\n'
        f'echo "::end::" >> {log}\necho "mean gen ppl 1.0"\n'
    )
    recorder.chmod(0o755)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f"#!/bin/sh\necho {tmp_path}/synthetic\n")
    (venv / "python").chmod(0o755)
    res = subprocess.run(
        ["bash", str(REPO / "runs" / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "DIND": str(recorder)},
        cwd=tmp_path,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    calls = log.read_text().split("::end::\n")
    return [c.splitlines() for c in calls if c]


@pytest.mark.slow
def test_every_documented_invocation_parses(tmp_path):
    """The commands README.md and docs/results.md show and those runs/*.sh run parse: the
    flags exist, the values have their types and choices, the generated lists convert."""
    commands = {doc: doc_commands(doc) for doc in ("README.md", "docs/results.md")}
    commands["scale.sh"] = dry_run_commands(
        "scale.sh", "base", str(tmp_path / "s"), TRAIN_SEEDS="0"
    )
    commands["owt_reproduce.sh"] = dry_run_commands("owt_reproduce.sh", str(tmp_path / "o"))
    commands["results.sh"] = recorded_commands(tmp_path / "r", "results.sh")
    commands["remask_ablation.sh"] = recorded_commands(
        tmp_path / "a", "remask_ablation.sh", "ck", "smollm2", "out"
    )
    assert len(commands["README.md"]) >= 25 and len(commands["docs/results.md"]) >= 15
    assert len(commands["results.sh"]) >= 15
    assert all(commands.values())
    seen = set()
    for where, argvs in commands.items():
        for argv in argvs:
            try:
                path, _ = parse(argv)
            except Exception as e:  # noqa: BLE001 - the test names the command
                pytest.fail(f"{where}: dind {shlex.join(argv)}: {e}")
            seen.add(" ".join(path))
    assert {"train", "sample", "eval", "sweep gamma", "sweep mix", "sweep topp"} <= seen


def test_parse_checks_what_the_command_line_checks():
    """(The helper above can fail: a bad flag, a bad choice and a bad list are refused.)"""
    for bad in (
        ["train", "--out", "r", "--lrr", "1"],
        ["train", "--out", "r", "--tokenizer", "char"],
        ["sweep", "gamma", "--checkpoint", "c", "--out", "o", "--seeds", "x"],
    ):
        with pytest.raises(Exception):  # noqa: B017 - click's or dind's
            parse(bad)
    _, params = parse(["train", "--out", "r", "--lr", "0.5", "--betas", "0.1,0.2"])
    assert params["training"] == {"lr": 0.5, "betas": (0.1, 0.2)} and params["model"] == {}
    _, params = parse(["sweep", "topp", "--checkpoint", "c", "--out", "o", "--seeds", "4,5"])
    assert params["opts"] == SweepOptions(seeds=(4, 5))


def test_field_docs_cover_every_documented_field():
    assert set(field_docs(SweepOptions)) == {f.name for f in dataclasses.fields(SweepOptions)}
    assert cli_options.parse_list(" 1, 2,,3 ", int, "--x") == (1, 2, 3)
