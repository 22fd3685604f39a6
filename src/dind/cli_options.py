"""The command line's options, made from the config dataclasses: one option per field, its
help the field's docstring, a ``Literal`` field's values its choices. A field added to a config
is an option at once, or the build fails until it is skipped by name: none goes missing.

``options(name=Group(Config, ...), ...)`` decorates a typer command: the command gets one
option per field of each group's dataclass (nested dataclasses flattened, flat flag names:
``--lr``, ``--seq-len``, ``--clip-search``), and receives, per group:
  - ``Group(cls)``: ``cls`` built from the options (each defaults to the field's default);
  - ``Group(cls, overrides=True)``: the dict of the options given (nested dicts for nested
    dataclasses); every option defaults to "keep the base's value", and the command applies
    them to its base (a preset, a saved run) with ``apply``.
Types: int, float, str, Path, bool (``--x/--no-x`` where the base may hold True), ``Literal``
(choices), ``X | None``, and tuples of numbers or strings written comma-separated
(``--seeds 0,1,2``, ``--betas 0.9,0.999``), as dind always spelled lists.

Also here: what the options of ``train`` and ``sample`` start from (a preset, a saved run,
saved sampler settings) and the spellings no field has (block sizes relative to L, noise
intervals ``SIZE:BETA,OMEGA``). Nothing here imports torch.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from dind.config import RunConfig, SamplerConfig, preset
from dind.errors import DindError

_SCALARS = (int, float, str, Path, bool)
_KIND_NAMES = {int: "integers", float: "numbers"}


@dataclass
class Group:
    """One dataclass's options on a command."""

    cls: type
    skip: tuple[str, ...] = ()
    """Fields (dotted for nested ones: ``noise.intervals``) with no option here: what the
    command sets itself, or spells by hand."""
    rename: dict[str, str] = field(default_factory=dict)
    """Field -> option name where the CLI spelled it otherwise (``warmup_steps``: ``warmup``);
    the field's own spelling stays an alias."""
    overrides: bool = False
    """Options default to "keep the base's value"; the command gets the dict of those given."""
    panel: str | None = None
    """The help panel (default: the first line of the dataclass's docstring)."""
    helps: dict[str, str] = field(default_factory=dict)
    """Field -> help, where the CLI says more than the docstring."""
    show_defaults: bool = False
    """With ``overrides``: still show each field's own default in the help."""
    parsers: dict[str, Callable[[str, str], Any]] = field(default_factory=dict)
    """Field -> ``parse(text, flag)`` for a list field with checks of its own."""

    def without(self, *names: str) -> Group:
        """The same group with more fields left out (a command where they mean nothing)."""
        return dataclasses.replace(self, skip=(*self.skip, *names))


def parse_list(text: str, kind: type, flag: str) -> tuple:
    """``"0,1,2"`` -> ``(0, 1, 2)``; empty items are ignored, a bad one is a one-line error."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    for v in items:
        try:
            kind(v)
        except ValueError:
            what = _KIND_NAMES.get(kind, "values")
            raise DindError(
                f"{flag} must be a comma-separated list of {what}: {v!r} in {text!r} is not one"
            ) from None
    return tuple(kind(v) for v in items)


# ----------------------------------------------------------------------------- docstrings


@functools.cache
def _module_docs(module: str) -> dict[str, dict[str, str]]:
    """Class -> field -> attribute docstring (the string after the field), for every top-level
    class of a module, read from its source in one parse."""
    path = getattr(sys.modules[module], "__file__", None)
    if path is None or not path.endswith(".py"):
        return {}
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse(Path(path).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef):
            docs = out.setdefault(node.name, {})
            for a, b in zip(node.body, node.body[1:], strict=False):
                if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and _is_doc(b):
                    docs[a.target.id] = " ".join(b.value.value.split())
    return out


def _is_doc(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring, on one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_module_docs(klass.__module__).get(klass.__qualname__, {}))
    return docs


# ----------------------------------------------------------------------------- the options


def _strip_none(t: Any) -> Any:
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else t
    return t


def _list_spec(t: Any) -> tuple[type, int | None] | None:
    """(item type, count or None for any) of a tuple field written comma-separated."""
    if typing.get_origin(t) is not tuple:
        return None
    args = typing.get_args(t)
    kinds = {a for a in args if a is not Ellipsis}
    if len(kinds) != 1 or not kinds <= {int, float, str}:
        return None
    return kinds.pop(), None if args[-1] is Ellipsis else len(args)


def _convert_list(text: str, flag: str, kind: type, n: int | None) -> tuple:
    values = parse_list(text, kind, flag)
    if n is not None and len(values) != n:
        raise DindError(f"{flag} takes {n} comma-separated values, got {text!r}")
    return values


@dataclass
class _Option:
    param: inspect.Parameter
    path: tuple[str, ...]  # the field inside the group's dataclass
    flag: str
    convert: Callable[[str, str], Any] | None  # from the option's text, for list fields


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default: the CLI cannot make it optional")


def _help(text: str) -> str:
    return text.replace("``", "").replace("[", r"\[")  # rich markup would eat [0, 1]


def _make_option(name: str, g: Group, f: dataclasses.Field, t: Any, path, doc: str, panel):
    dotted = ".".join(path)
    t = _strip_none(t)
    spec = _list_spec(t)
    if spec is None and t not in _SCALARS and typing.get_origin(t) is not Literal:
        raise TypeError(
            f"{g.cls.__name__}.{dotted}: {t} has no command-line spelling; skip it and write "
            "its option by hand"
        )
    own = _field_default(f)
    flag = g.rename.get(dotted, f.name).replace("_", "-")
    names = [f"--{flag}"]
    if flag != f.name.replace("_", "-"):
        names.append(f"--{f.name.replace('_', '-')}")
    convert, metavar, cli_t = None, None, t
    if spec is not None:
        kind, n = spec
        convert = g.parsers.get(dotted) or functools.partial(_convert_list, kind=kind, n=n)
        metavar = ",".join([kind.__name__.upper()] * n) if n else f"{kind.__name__.upper()},..."
        cli_t = str
        own = ",".join(map(str, own))
    if t is bool and (g.overrides or own):  # the base may hold True: --no-x turns it off
        names = [f"--{flag}/--no-{flag}"]
    help_ = _help(g.helps.get(dotted, doc))
    if g.overrides and g.show_defaults and dotted not in g.helps and own not in (None, ""):
        help_ += f" \\[default: {own}]"
    default = None if g.overrides else own
    option = typer.Option(
        *names,
        help=help_,
        show_default=not g.overrides,
        metavar=metavar,
        rich_help_panel=panel,
    )
    annotation = Annotated[cli_t | None if default is None else cli_t, option]
    param = inspect.Parameter(
        f"{name}__{'__'.join(path)}",
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=annotation,
    )
    return _Option(param, path, names[0].split("/")[0], convert)


def _group_options(name: str, g: Group) -> list[_Option]:
    out: list[_Option] = []

    def walk(cls: type, path: tuple[str, ...], panel: str) -> None:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            here = (*path, f.name)
            if ".".join(here) in g.skip:
                continue
            t = hints[f.name]
            if dataclasses.is_dataclass(t):  # flattened; its panel: its docstring in cls
                walk(t, here, docs.get(f.name, t.__name__).rstrip("."))
            else:
                out.append(_make_option(name, g, f, t, here, docs.get(f.name, ""), panel))

    first_line = (g.cls.__doc__ or g.cls.__name__).strip().splitlines()[0].rstrip(".")
    walk(g.cls, (), g.panel or first_line)
    return out


def flags(g: Group) -> dict[str, str]:
    """Field (dotted) -> the option it has: what the group puts on a command."""
    return {".".join(o.path): o.flag for o in _group_options("g", g)}


def options(**groups: Group):
    """Add each group's options to a typer command (the module docstring says how)."""

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in groups]
        made = {name: _group_options(name, g) for name, g in groups.items()}
        taken = {p.name.replace("_", "-") for p in own}
        for o in (o for opts in made.values() for o in opts):
            if o.flag[2:] in taken:
                raise TypeError(f"{fn.__name__}: option {o.flag} made twice")
            taken.add(o.flag[2:])

        def parse(kwargs: dict[str, Any]) -> dict[str, Any]:
            """The command's arguments from the options' values: each group's dataclass or
            dict of overrides in place of its options."""
            kwargs = dict(kwargs)
            for name, g in groups.items():
                values: dict[str, Any] = {}
                for o in made[name]:
                    v = kwargs.pop(o.param.name)
                    if v is None and g.overrides:
                        continue
                    if o.convert is not None and v is not None:
                        v = o.convert(v, o.flag)
                    d = values
                    for key in o.path[:-1]:
                        d = d.setdefault(key, {})
                    d[o.path[-1]] = v
                kwargs[name] = values if g.overrides else build(g.cls, values)
            return kwargs

        @functools.wraps(fn)
        def wrapper(**kwargs):
            return fn(**parse(kwargs))

        params = own + [o.param for opts in made.values() for o in opts]
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.parse_options = parse
        return wrapper

    return deco


def build(cls: type, values: dict[str, Any]):
    """``cls`` from field values (nested dicts for nested dataclasses)."""
    hints = typing.get_type_hints(cls)
    kwargs = {
        k: build(hints[k], v) if isinstance(v, dict) and dataclasses.is_dataclass(hints[k]) else v
        for k, v in values.items()
    }
    return cls(**kwargs)


def apply(obj, updates: dict[str, Any]):
    """``obj`` with ``updates`` (nested dicts for nested dataclasses) in place of its values;
    the dataclass checks the result."""
    kwargs = {}
    for k, v in updates.items():
        cur = getattr(obj, k)
        kwargs[k] = apply(cur, v) if isinstance(v, dict) and dataclasses.is_dataclass(cur) else v
    return dataclasses.replace(obj, **kwargs)


# ----------------------------------------------------------------------------- starting points

RUN_JSON = "run.json"  # dind.train.RUN_CONFIG, which imports torch
CHECKPOINT_JSON = "config.json"  # dind.checkpoint.CONFIG


def _read_json(path: Path, flag: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DindError(f"{flag} {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DindError(f"{flag} {path}: not JSON ({e})") from None


def read_run(path: str | Path) -> RunConfig:
    """The run a saved ``run.json`` describes; also a run folder (its ``run.json``) or a
    checkpoint (its ``config.json``'s ``dind`` entry)."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (RUN_JSON, CHECKPOINT_JSON) if (path / n).is_file()]
        if not found:
            raise DindError(f"--config {path}: a folder with no {RUN_JSON} or {CHECKPOINT_JSON}")
        path = found[0]
    d = _read_json(path, "--config")
    if isinstance(d, dict) and isinstance(d.get("dind"), dict):  # a checkpoint's config.json
        d = d["dind"]
    if not isinstance(d, dict) or not {"model", "train"} <= set(d):
        raise DindError(f"--config {path}: not a dind run ({RUN_JSON} or a checkpoint's config)")
    try:
        return RunConfig.from_dict(d)
    except DindError as e:
        raise DindError(f"--config {path}: {e}") from None


def start_run(config: str | Path | None, preset_name: str | None, resume_in: Path | None = None):
    """The run ``train``'s options edit: ``--config``'s, ``--preset``'s, the saved run being
    resumed in ``resume_in`` when neither is given, else the tiny preset."""
    if config is not None and preset_name is not None:
        raise DindError("give --config or --preset, not both")
    if config is not None:
        return read_run(config)
    if preset_name is None and resume_in is not None and (resume_in / RUN_JSON).is_file():
        return read_run(resume_in / RUN_JSON)
    return preset(preset_name or "tiny")


def parse_intervals(specs: list[str]) -> dict[int, tuple[float, float]]:
    """``["4:0.5,1.0", "128:0.001,1"]`` -> {4: (0.5, 1.0), 128: (0.001, 1.0)}."""
    out = {}
    for spec in specs:
        size, _, bounds = spec.partition(":")
        try:
            lo, hi = (float(v) for v in bounds.split(","))
            out[int(size)] = (lo, hi)
        except ValueError:
            raise DindError(f"--noise-interval must read SIZE:BETA,OMEGA, got {spec!r}") from None
    return out


def apply_train_options(
    run: RunConfig,
    model: dict[str, Any],
    train: dict[str, Any],
    block_sizes: str | None = None,
    block_probs: str | None = None,
    noise_intervals: list[str] | None = None,
) -> RunConfig:
    """``run`` with ``train``'s options: the generated ones (``model``, ``train``), then block
    sizes (``L`` is the final sequence length) and noise intervals."""
    from dind.config import BlockSizeDistribution

    train = dict(train)
    if noise_intervals:
        train["noise"] = {**train.get("noise", {}), "intervals": parse_intervals(noise_intervals)}
    if block_sizes is not None or block_probs is not None:
        sizes = block_sizes or ",".join(map(str, run.train.block_dist.block_sizes))
        seq_len = model.get("seq_len", run.model.seq_len)
        train["block_dist"] = BlockSizeDistribution.parse(sizes, block_probs, seq_len)
    return dataclasses.replace(run, model=apply(run.model, model), train=apply(run.train, train))


def read_sampler_settings(text: str) -> dict[str, Any]:
    """``sample --config``: a JSON object of ``SamplerConfig`` fields, or ``FILE:NAME``, the
    setting of that name in a sweep's JSON record."""
    path, name = Path(text), None
    if not path.is_file() and ":" in text:
        file, _, name = text.rpartition(":")
        path = Path(file)
    d = _read_json(path, "--config")
    if isinstance(d, dict) and isinstance(d.get("settings"), list):  # a sweep record
        settings = {s.get("name"): s.get("sampler") for s in d["settings"] if isinstance(s, dict)}
        if name is None:
            example = next(iter(settings), "NAME")
            raise DindError(f"--config {path} is a sweep record: name a setting ({path}:{example})")
        if name not in settings:
            have = "; ".join(map(str, settings))
            raise DindError(f"--config {path}: no setting named {name!r} (it has: {have})")
        d = settings[name]
    elif name is not None:
        raise DindError(f"--config {path}: not a sweep record, so {name!r} names no setting")
    known = {f.name for f in dataclasses.fields(SamplerConfig)}
    if not isinstance(d, dict) or set(d) - known:
        unknown = sorted(set(d) - known) if isinstance(d, dict) else type(d).__name__
        raise DindError(f"--config {path}: not sampler settings (unknown: {unknown})")
    return d
