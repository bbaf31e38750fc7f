"""`python -m framework ...`: turns a bare word into `mode=<word>`, checks what the user can get wrong
before Hydra starts, resumes train runs in place, and reports user errors as one line with exit code 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from framework import registry, runs
from framework.config import compose, config_roots, default_config, default_task, with_plugin_search_path
from framework.errors import UserError, user_error_in
from framework.runs import override_key

COMMANDS = ("info", "list")
# Hydra flags that take a value in the next argument.
VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
               "--package", "-p", "--experimental-rerun"}
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
log = logging.getLogger("framework")


def split_args(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Separate Hydra flags (with their values), key=value overrides, and bare words."""
    flags, overrides, words = [], [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            flags.append(arg)
            takes_value = arg in VALUE_FLAGS or (arg in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in INFO_CHOICES)
            if takes_value and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        elif "=" in arg:
            overrides.append(arg)
        else:
            words.append(arg)
        i += 1
    return flags, overrides, words


def override_dict(overrides: list[str]) -> dict[str, str]:
    return {override_key(o): o.split("=", 1)[1] if "=" in o else "" for o in overrides}


def outputs_root(overrides: dict[str, str]) -> str:
    return overrides.get("paths.outputs") or runs.default_outputs()


def plan_resume(task: str, overrides: list[str]) -> list[str]:
    """Rewrite a `train ckpt_path=...` command so it continues that run in its own directory.

    The run's saved overrides are replayed; a new override that would change the run is refused
    unless it is in `resume_safe_overrides` (conf/config.yaml)."""
    from framework import checkpoints

    given = override_dict(overrides)
    ckpt = given["ckpt_path"]
    if ckpt in ("null", "None", ""):
        return overrides
    if ckpt == "last":
        started = runs.latest_started(task, outputs_root(given))
        if not started:
            raise UserError(f"ckpt_path=last: no {task} train run under {outputs_root(given)}/{task} to resume")
        run_dir = Path(started["run_dir"])
        ckpt_file = runs.last_checkpoint(run_dir)
        if not ckpt_file.exists():
            raise UserError(f"ckpt_path=last: {run_dir} has no {ckpt_file.relative_to(run_dir)} yet; nothing to resume")
    else:
        ckpt_file = checkpoints.check_path(ckpt).resolve()
        run_dir = runs.run_dir_of(ckpt_file)
        if run_dir is None or ckpt_file.parent != run_dir / runs.CHECKPOINTS or runs.saved_overrides(run_dir) is None:
            # a checkpoint from elsewhere: Lightning resumes from it in a new run directory
            return [o for o in overrides if override_key(o) != "ckpt_path"] + [f"ckpt_path={ckpt_file}"]

    saved = runs.saved_overrides(run_dir) or []
    saved_dict = override_dict(saved)
    if saved_dict.get("task", task) != task:
        raise UserError(f"{ckpt_file} belongs to task {saved_dict['task']!r}, not {task!r}")
    secret = {key for key, value in saved_dict.items() if value == runs.REDACTED}  # not saved: given again
    missing = sorted(secret - set(given))
    if missing:
        raise UserError(f"resuming {run_dir}: it ran with secret overrides that were not saved; give them again: "
                        + " ".join(f"{key}=..." for key in missing))
    safe = set(default_config()["resume_safe_overrides"]) | {"mode", "task"} | secret
    for key, value in given.items():
        if key not in safe and saved_dict.get(key) != value:
            before = f"{key}={saved_dict[key]}" if key in saved_dict else f"no {key} override"
            raise UserError(
                f"resuming {run_dir}: '{key}={value}' would change the run (it ran with {before}); "
                f"only these may change on resume: {', '.join(sorted(safe - {'mode', 'task'}))}"
            )
    replaced = {k for k in given if k in safe}
    merged = [o for o in saved if override_key(o) not in replaced | {"ckpt_path"}]
    merged += [o for o in overrides if override_key(o) in replaced and override_key(o) != "ckpt_path"]
    print(f"resuming {run_dir} from {ckpt_file.name}", file=sys.stderr)
    return merged + [f"ckpt_path={ckpt_file}", f"hydra.run.dir={run_dir}"]


def ddp_child_args(argv: list[str]) -> list[str] | None:
    """Arguments for a DDP rank > 0: the parent job's exact overrides, in the parent's run directory."""
    from framework.runner import DDP_JOB_ENV

    job = os.environ.get(DDP_JOB_ENV)
    rank = os.environ.get("LOCAL_RANK", "0")
    if not job or rank == "0":
        return None
    job = json.loads(job)
    run_dir, mode = job["run_dir"], override_dict(job["overrides"]).get("mode", "train")
    return job["overrides"] + [
        f"hydra.run.dir={run_dir}",
        "hydra.output_subdir=null",
        f"hydra.job.name=ddp_rank{rank}",
        f"hydra.job_logging.handlers.file.filename={run_dir}/{mode}_rank{rank}.log",
    ]


def prepare(argv: list[str]) -> list[str] | None:
    """Check and rewrite the arguments for Hydra; None when a framework command (info, list) ran instead."""
    child = ddp_child_args(argv)
    if child is not None:
        argv = child
    flags, overrides, words = split_args(argv)
    given = override_dict(overrides)

    task = given.get("task", default_task())
    if "," in task:
        raise UserError("sweep one task at a time: give task=<name> once")
    commands = [w for w in words if w in COMMANDS]
    modes_given = [w for w in words if w not in COMMANDS]
    if commands and not modes_given:
        if task in registry.plugins() and commands[0] in registry.get(task).modes:
            modes_given = commands  # a plugin mode that happens to share the name
        else:
            run_command(commands[0], overrides)
            return None
    if len(modes_given) > 1:
        raise UserError(f"more than one mode given: {', '.join(modes_given)}")
    if modes_given and "mode" in given:
        raise UserError(f"mode given twice: '{modes_given[0]}' and 'mode={given['mode']}'")

    plugin = registry.get(task)
    mode = modes_given[0] if modes_given else given.get("mode", default_config()["mode"])
    for m in mode.split(","):
        registry.check_mode(task, m)
    if modes_given:
        overrides.append(f"mode={mode}")

    if mode == "train" and "ckpt_path" in given and "-m" not in flags and "--multirun" not in flags:
        overrides = plan_resume(task, overrides)
    for key in ("ckpt_path", "init_from"):
        value = override_dict(overrides).get(key)
        if value and value not in ("null", "last") and not (key == "ckpt_path" and mode != "train"):
            from framework import checkpoints

            if plugin.model_artifact == "directory" and Path(value).is_dir():
                continue  # a model directory (the plugin's own format): the plugin resolves it

            checkpoints.load(value, mmap=True)  # refused here, before a run directory exists
    if child is None:
        check_types(plugin, overrides)

    return flags + with_plugin_search_path(plugin, overrides)


def config_groups(plugin) -> set[str]:
    """The config groups (``model``, ``trainer``, ...): the folders of conf/ and of the plugin's conf package."""
    return {p.name for root in config_roots(plugin) for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}


def check_types(plugin, overrides: list[str]) -> None:
    """Refuse `key=value` where the value cannot be what the setting holds (trainer.max_epochs=abc), before
    any work starts: the type is the one the setting has in the composed defaults."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not override_key(o).startswith("hydra")])
    groups = config_groups(plugin)
    is_group = [o.key_or_group.split("/")[0] in groups for o in parsed]
    checked = {"task", "mode", "ckpt_path", "init_from"}  # checked above; no need to compose for them
    values = [o for o, group in zip(parsed, is_group)
              if not group and not o.is_delete() and not o.is_add() and o.key_or_group not in checked]
    if not values:
        return
    chosen = []  # the group options, a sweep's first one
    for o, group in zip(parsed, is_group):
        options = _values(o) if group and o.is_sweep_override() else None
        if group and (options or not o.is_sweep_override()):
            chosen.append(f"{o.key_or_group}={options[0] if options else o.get_value_element_as_str()}")
    defaults = compose(chosen)
    for o in values:
        default = OmegaConf.select(defaults, o.key_or_group, default=None, throw_on_resolution_failure=False)
        # A YAML default of 300 may well take 0.5: an integer default means a number, not an integer.
        kind = "true or false" if type(default) is bool else "a number" if type(default) in (int, float) else None
        if kind is None:
            continue  # strings, lists, null defaults: anything goes, the plugin checks
        for value in _values(o) or []:
            is_number = type(value) in (int, float)
            ok = value is None or (type(value) is bool if type(default) is bool else is_number) \
                or (isinstance(value, str) and value.startswith("${"))
            if not ok:
                shown = str(value).lower() if isinstance(value, bool) else value
                raise UserError(f"{o.key_or_group}={shown}: {o.key_or_group} takes {kind} (default {default})")


def _values(override) -> list | None:
    """An override's value, or each of a sweep's; None when Hydra cannot list them (an interval, a glob)."""
    from hydra.errors import HydraException

    if not override.is_sweep_override():
        return [override.value()]
    try:
        return list(override.sweep_iterator())
    except HydraException:
        return None


def run_command(command: str, overrides: list[str]) -> None:
    if command == "list":
        print("\n".join(task_lines()))
        return
    from omegaconf import OmegaConf

    from framework import devices

    cfg = compose(overrides)
    print("\n".join(devices.report(OmegaConf.to_container(cfg.trainer, resolve=False))))
    print("\n".join(task_lines()))


def task_lines() -> list[str]:
    lines = ["tasks:"]
    for name, plugin in registry.plugins().items():
        lines.append(f"  {name}: {plugin.description}")
        lines.append(f"    modes: {', '.join(plugin.modes)}")
        if plugin.requires:
            lines.append(f"    needs: {', '.join(plugin.requires)}")
    return lines


def one_line(exc: BaseException) -> str:
    """Hydra's message without its search-path listing, plus the options of a group and the first line of its cause."""
    inner = user_error_in(exc)
    if inner is not None:  # a plugin's own message, not Hydra's wrapping of it
        return str(inner)
    paragraphs = str(exc).split("\n\n")
    text = " ".join(paragraphs[0].split())
    for paragraph in paragraphs[1:]:
        head, *options = paragraph.split("\n")
        if head.startswith("Available options in"):
            options = [o.strip() for o in options if o.startswith("\t") and "=" not in o]
            text += f"; {head.rstrip(':').lower()}: {', '.join(options) or '(none)'}"
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).splitlines()[0] not in text:
        text += f" ({str(cause).splitlines()[0].strip()})"
    return text


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    secrets = runs.secret_values(argv)
    if secrets and not isinstance(sys.stdout, runs.RedactingStream):
        sys.stdout, sys.stderr = runs.RedactingStream(sys.stdout, secrets), runs.RedactingStream(sys.stderr, secrets)
    # Let Hydra raise instead of printing its own report, so user errors become one line here.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        try:
            hydra_argv = prepare(argv)
            if hydra_argv is None:
                return
            from framework.app import hydra_main

            sys.argv = [sys.argv[0]] + hydra_argv
            hydra_main()
        except (HydraException, OmegaConfBaseException) as e:
            raise UserError(one_line(e)) from e
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`list | head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush cannot fail again
        sys.exit(141)
